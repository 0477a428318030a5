package precision

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Golden is a golden file as tools/export_esm2.py --golden-out writes it: PyTorch's float32
// embedding (the last layer's mean) of each of its sequences.
type Golden struct {
	Path      string         `json:"-"`
	Tokenizer string         `json:"tokenizer"`
	Records   []GoldenRecord `json:"records"`
}

// GoldenRecord is one sequence of a golden file. TokenIDs are the exporter's tokens (not used
// here: the candidate model tokenises the sequence itself).
type GoldenRecord struct {
	ID        string    `json:"id"`
	Sequence  string    `json:"sequence"`
	TokenIDs  []int64   `json:"token_ids"`
	Embedding []float32 `json:"embedding"`
}

// LoadGolden reads a golden file and checks that it can serve as a reference: at least one
// record, each with an id, a sequence and an embedding, all embeddings of one dimension.
func LoadGolden(path string) (*Golden, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGolden, err)
	}
	g := &Golden{Path: path}
	if err := json.Unmarshal(data, g); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrGolden, path, err)
	}
	if len(g.Records) == 0 {
		return nil, fmt.Errorf("%w: %s: no records", ErrGolden, path)
	}
	dim := len(g.Records[0].Embedding)
	for i, r := range g.Records {
		switch {
		case r.ID == "":
			return nil, fmt.Errorf("%w: %s: record %d has no id", ErrGolden, path, i+1)
		case r.Sequence == "":
			return nil, fmt.Errorf("%w: %s: record %d (%q) has no sequence", ErrGolden, path, i+1, r.ID)
		case len(r.Embedding) == 0 || len(r.Embedding) != dim:
			return nil, fmt.Errorf("%w: %s: record %d (%q) has an embedding of %d values, record 1 of %d",
				ErrGolden, path, i+1, r.ID, len(r.Embedding), dim)
		}
	}
	return g, nil
}

// Embeddings are the golden vectors as a reference set, in file order; its Model is the file's
// name.
func (g *Golden) Embeddings() *Embeddings {
	e := &Embeddings{Model: filepath.Base(g.Path), DType: "float32", IDs: make([]string, len(g.Records)),
		Vecs: make([][]float32, len(g.Records))}
	for i, r := range g.Records {
		e.IDs[i], e.Vecs[i] = r.ID, r.Embedding
	}
	return e
}
