package batcher

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// TestTokenizerMatchesHF compares Encode with the token ids that HF EsmTokenizer produced for the
// 20 golden sequences (testdata/esm2-tiny/golden.json, written by tools/export_esm2.py).
func TestTokenizerMatchesHF(t *testing.T) {
	data, err := os.ReadFile("../testdata/esm2-tiny/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Tokenizer string
		Records   []struct {
			ID       string
			Sequence string
			TokenIDs []int64 `json:"token_ids"`
		}
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if g.Tokenizer != "transformers.EsmTokenizer" || len(g.Records) != 20 {
		t.Fatalf("golden file: tokenizer %q, %d records", g.Tokenizer, len(g.Records))
	}
	tok, err := NewTokenizer("")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range g.Records {
		if err := tok.Validate([]byte(r.Sequence)); err != nil {
			t.Fatalf("%s: %v", r.ID, err)
		}
		got := make([]int64, len(r.Sequence)+2)
		tok.Encode(got, []byte(r.Sequence))
		if !slices.Equal(got, r.TokenIDs) {
			t.Errorf("%s: ids differ from HF EsmTokenizer", r.ID)
		}
	}
}
