// Package refout reads the reference outputs tools/reference_outputs.py writes on a PyTorch machine
// (testdata/esm2-tiny/reference-outputs.json.gz): every representation layer's mean and <cls> row
// of each golden record, per-residue states of the first few, and the chunked long records, with
// fair-esm semantics. The tests of esm2graph, batcher and pipeline check against it.
package refout

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
)

// Outputs is one reference file.
type Outputs struct {
	NumLayers int `json:"num_layers"`
	Dim       int `json:"dim"`
	Window    int `json:"window"`
	Stride    int `json:"stride"`
	Records   []struct {
		ID       string      `json:"id"`
		Sequence string      `json:"sequence"`
		Mean     [][]float64 `json:"mean"`    // [layer][dim]
		BOS      [][]float64 `json:"bos"`     // [layer][dim]
		PerTok   [][]float64 `json:"per_tok"` // [layer][L*dim], the first records only
	} `json:"records"`
	Long []struct {
		ID       string               `json:"id"`
		Sequence string               `json:"sequence"`
		Windows  int                  `json:"windows"`
		Mean     [][]float64          `json:"mean"`
		BOS      [][]float64          `json:"bos"`
		LastRows map[string][]float64 `json:"per_tok_last_rows"` // last layer's merged state at some positions
	} `json:"long"`
}

// Load reads a gzip JSON reference file.
func Load(path string) (*Outputs, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("refout: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("refout: %s: %w", path, err)
	}
	var ref Outputs
	if err := json.NewDecoder(zr).Decode(&ref); err != nil {
		return nil, fmt.Errorf("refout: %s: %w", path, err)
	}
	return &ref, nil
}
