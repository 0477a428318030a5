package esm2graph

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkBuild35M builds an ESM-2 35M-sized graph (12 layers, hidden 480; random weights) as
// fp16 packed from model.safetensors: the weights-to-disk rate Build reaches.
func BenchmarkBuild35M(b *testing.B) {
	cfg := tinyConfig
	cfg.NumHiddenLayers, cfg.HiddenSize, cfg.NumAttentionHeads, cfg.IntermediateSize = 12, 480, 20, 1920
	ck := load(b, writeHFDir(b, cfg, randomWeights(cfg, 10)))
	out := filepath.Join(b.TempDir(), "out")
	var params int64
	for _, w := range expectedShapes(cfg) {
		params += numel(w.shape)
	}
	b.SetBytes(params * 4)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Build(context.Background(), ck, out, Options{Attention: AttentionPacked, FP16: true}); err != nil {
			b.Fatal(err)
		}
	}
}
