package esm2graph

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// RandomCheckpoint is a checkpoint of cfg's shapes with seeded random weights (normal, std 0.02;
// LayerNorm weights around 1), read from nothing on disk: for benchmarks and tests that need a
// real model's width (the host path of ESM-2 650M's 1280 dims) where the values do not matter.
// Zero fields of cfg take ESM-2's values (rotary, erf GELU, 33 tokens, 1026 positions, eps 1e-5,
// token dropout); the result is checked as Load checks a file's.
func RandomCheckpoint(cfg Config, seed uint64) (*Checkpoint, error) {
	if cfg.PositionEmbeddingType == "" {
		cfg.PositionEmbeddingType = "rotary"
	}
	if cfg.HiddenAct == "" {
		cfg.HiddenAct = "gelu"
	}
	if cfg.VocabSize == 0 {
		cfg.VocabSize = alphabetSize
	}
	if cfg.MaxPositionEmbeddings == 0 {
		cfg.MaxPositionEmbeddings = defaultMaxPositions
	}
	if cfg.LayerNormEps == 0 {
		cfg.LayerNormEps = defaultLayerNormEps
	}
	if cfg.MaskTokenID == 0 {
		cfg.MaskTokenID, cfg.TokenDropout = maskID, true
	}
	c := &Checkpoint{Path: fmt.Sprintf("random:seed%d", seed), Format: "random", Config: cfg, ConfigFrom: "RandomCheckpoint",
		tensors: map[string]*source{}}
	for i, w := range expectedShapes(cfg) {
		n, s := numel(w.shape), seed*1_000_003+uint64(i)
		ln := strings.HasSuffix(w.name, ".weight") && len(w.shape) == 1 // a LayerNorm scale
		c.tensors[w.name] = &source{file: c.Path, key: w.name, shape: w.shape, read: func() ([]float32, error) {
			r := rand.New(rand.NewPCG(s, 7))
			v := make([]float32, n)
			for j := range v {
				v[j] = float32(0.02 * r.NormFloat64())
				if ln {
					v[j]++
				}
			}
			return v, nil
		}}
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}
