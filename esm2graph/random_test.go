package esm2graph

import (
	"context"
	"errors"
	"testing"
)

// TestRandomCheckpoint: a random checkpoint of a width Load never sees here (320, ESM-2 8M's)
// builds a graph whose manifest has that width and the asked outputs; bad shapes are refused as
// Load refuses them.
func TestRandomCheckpoint(t *testing.T) {
	ck, err := RandomCheckpoint(Config{HiddenSize: 320, NumAttentionHeads: 20, NumHiddenLayers: 1, IntermediateSize: 64}, 1)
	if err != nil {
		t.Fatal(err)
	}
	outs, err := ParseOutputs("per-residue:-1")
	if err != nil {
		t.Fatal(err)
	}
	man, err := Build(context.Background(), ck, t.TempDir(), Options{Device: "cpu", Outputs: outs, ResiduesFP16: true})
	if err != nil {
		t.Fatal(err)
	}
	if man.EmbeddingDim != 320 || len(man.Outputs) != 1 || man.Outputs[0].Pooling != PoolPerResidue {
		t.Fatalf("manifest: dim %d, outputs %+v", man.EmbeddingDim, man.Outputs)
	}
	if _, err := RandomCheckpoint(Config{HiddenSize: 320, NumAttentionHeads: 3, NumHiddenLayers: 1, IntermediateSize: 64}, 1); !errors.Is(err, ErrUnsupported) {
		t.Errorf("320 dims in 3 heads: %v, want ErrUnsupported", err)
	}
}
