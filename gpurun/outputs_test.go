package gpurun

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestManifestOutputs: an outputs list is validated (names, poolings, dtypes, layers, the
// embedding output among them), an older manifest gets its one output as the list, and CUDA
// graphs refuse a model of several outputs (auto leaves them off).
func TestManifestOutputs(t *testing.T) {
	dir := t.TempDir()
	const base = `"name":"x","embedding_dim":8,"max_length":10,"alphabet":"esm","num_layers":2,"inputs":["input_ids","attention_mask"]`
	write := func(rest string) (*Manifest, error) {
		if err := os.WriteFile(filepath.Join(dir, "model.json"), []byte("{"+base+","+rest+"}"), 0o644); err != nil {
			t.Fatal(err)
		}
		return LoadManifest(dir)
	}
	m, err := write(`"output":"embedding","pooling":"mean"`)
	if err != nil || len(m.Outputs) != 1 || m.Outputs[0].Name != "embedding" || m.Outputs[0].Layer != 2 || m.Outputs[0].Pooling != PoolMean || m.Outputs[0].DType != "float32" || !m.SingleOutput() {
		t.Fatalf("legacy manifest: %+v, %v", m, err)
	}
	const multi = `"outputs":[{"name":"embedding","layer":2,"pooling":"mean","dtype":"float32"},{"name":"residues_l1","layer":1,"pooling":"per-residue","dtype":"float16"}]`
	m, err = write(`"output":"embedding","pooling":"mean",` + multi)
	if err != nil || len(m.Outputs) != 2 || m.SingleOutput() || m.OutputIndex("residues_l1") != 1 {
		t.Fatalf("multi-output manifest: %+v, %v", m, err)
	}
	o := options{device: Device{Kind: "cuda"}, graphs: GraphsOn}
	if _, err := o.useGraphs(m); !errors.Is(err, ErrOption) {
		t.Errorf("CUDA graphs on, 2 outputs: %v", err)
	}
	o.graphs = GraphsAuto
	m.Attention = "mha"
	if on, err := o.useGraphs(m); on || err != nil {
		t.Errorf("CUDA graphs auto, 2 outputs: %v %v", on, err)
	}
	if m, err := write(`"output":"","pooling":"","outputs":[{"name":"bos_l0","layer":0,"pooling":"bos","dtype":"float32"}]`); err != nil || m.SingleOutput() {
		t.Errorf("bos-only manifest: %+v, %v", m, err)
	}
	for _, bad := range []string{
		`"output":"","pooling":""`,
		`"output":"embedding","pooling":"mean","outputs":[{"name":"bos_l0","layer":0,"pooling":"bos","dtype":"float32"}]`,
		`"outputs":[{"name":"a","layer":0,"pooling":"max","dtype":"float32"}]`,
		`"outputs":[{"name":"a","layer":0,"pooling":"bos","dtype":"float16"}]`,
		`"outputs":[{"name":"a","layer":3,"pooling":"bos","dtype":"float32"}]`,
		`"outputs":[{"name":"a","layer":0,"pooling":"bos","dtype":"float32"},{"name":"a","layer":1,"pooling":"bos","dtype":"float32"}]`,
	} {
		if _, err := write(bad); !errors.Is(err, ErrManifest) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
