package gpurun

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Manifest is model.json, written by tools/export_esm2.py beside model.onnx.
type Manifest struct {
	Name         string           `json:"name"`
	Architecture string           `json:"architecture"`
	Source       string           `json:"source"`
	ModelFile    string           `json:"model_file"`
	SHA256       string           `json:"sha256"`
	EmbeddingDim int              `json:"embedding_dim"`
	NumLayers    int              `json:"num_layers"`
	Alphabet     string           `json:"alphabet"`
	Residues     string           `json:"residues"`
	Tokens       map[string]int64 `json:"tokens"`
	MaxLength    int              `json:"max_length"`
	Inputs       []string         `json:"inputs"`
	Output       string           `json:"output"`
	Pooling      string           `json:"pooling"`
	// Outputs are the graph's outputs, in order (esm2graph / tools/esm2_graph.py with outputs).
	// Older manifests have none: LoadManifest then makes it the one Output, the last layer's mean.
	Outputs []OutputSpec `json:"outputs,omitempty"`
	DType   string       `json:"dtype"`
	// Precision is the projections' arithmetic: "fp8" (FP8 GEMMs, tools/export_esm2.py
	// --precision fp8: needs a GPU with FP8 tensor cores), else the dtype's ("fp16", "fp32"; empty
	// in older manifests).
	Precision string `json:"precision,omitempty"`
	// Attention is how the export wrote attention: "traced" (TorchScript export), "mha" or
	// "packed" (tools/esm2_graph.py fused graphs). Informational; empty in older manifests.
	Attention string `json:"attention,omitempty"`
	// Requires lists execution providers the graph cannot run without ("cuda" for packed
	// graphs, whose RemovePadding/PackedMultiHeadAttention ops have no CPU kernels).
	Requires []string `json:"requires,omitempty"`
	// CustomOps names the custom-operator library the graph needs (gpurun/ortops, built by
	// scripts/build-ops.sh), relative to the model directory unless absolute; empty: none. Where
	// that file does not exist, $SEQEMBED_CUSTOM_OPS names the library (the GPU image sets it).
	CustomOps string `json:"custom_ops,omitempty"`

	// Dir is the directory the manifest was read from (not in the JSON).
	Dir string `json:"-"`
}

// PrecisionFP8 is Manifest.Precision of models whose projections are FP8 GEMMs.
const PrecisionFP8 = "fp8"

// FP8MinCapability is the lowest CUDA compute capability (major*10 + minor) with FP8 tensor
// cores: Ada (8.9), Hopper (9.0) and later.
const FP8MinCapability = 89

// Output poolings (OutputSpec.Pooling).
const (
	PoolMean       = "mean"        // [batch, dim]: mean over the residues
	PoolBOS        = "bos"         // [batch, dim]: the <cls> row
	PoolPerResidue = "per-residue" // [batch, length, dim] aligned with the input; Embed keeps each row's residues
)

// OutputSpec is one model output: its graph name, representation layer (fair-esm repr_layers:
// 0 the embeddings, num_layers the last layer after the final LayerNorm), pooling and element
// type ("float32"; per-residue outputs also "float16").
type OutputSpec struct {
	Name    string `json:"name"`
	Layer   int    `json:"layer"`
	Pooling string `json:"pooling"`
	DType   string `json:"dtype"`
	Shape   []any  `json:"shape,omitempty"`
}

// PerResidue says whether the output has a row per residue.
func (o OutputSpec) PerResidue() bool { return o.Pooling == PoolPerResidue }

// checkOutputs validates m.Outputs (filling them in from Output for older manifests).
func (m *Manifest) checkOutputs(path string) error {
	if len(m.Outputs) == 0 {
		if m.Output == "" {
			return fmt.Errorf("%w: %s: want inputs [input_ids, attention_mask] and one output, got %v -> %q",
				ErrManifest, path, m.Inputs, m.Output)
		}
		if m.Pooling != PoolMean {
			return fmt.Errorf("%w: %s: pooling %q (only mean is supported)", ErrManifest, path, m.Pooling)
		}
		m.Outputs = []OutputSpec{{Name: m.Output, Layer: m.NumLayers, Pooling: PoolMean, DType: "float32"}}
		return nil
	}
	seen := map[string]bool{}
	for _, o := range m.Outputs {
		switch {
		case o.Name == "" || seen[o.Name]:
			return fmt.Errorf("%w: %s: output name %q empty or given twice", ErrManifest, path, o.Name)
		case o.Pooling != PoolMean && o.Pooling != PoolBOS && o.Pooling != PoolPerResidue:
			return fmt.Errorf("%w: %s: output %s: pooling %q (want mean, bos or per-residue)", ErrManifest, path, o.Name, o.Pooling)
		case o.DType != "float32" && !(o.PerResidue() && o.DType == "float16"):
			return fmt.Errorf("%w: %s: output %s: dtype %q (float32; per-residue outputs also float16)", ErrManifest, path, o.Name, o.DType)
		case o.Layer < 0 || m.NumLayers > 0 && o.Layer > m.NumLayers:
			return fmt.Errorf("%w: %s: output %s: layer %d outside 0..%d", ErrManifest, path, o.Name, o.Layer, m.NumLayers)
		}
		seen[o.Name] = true
	}
	if m.Output != "" {
		i := m.OutputIndex(m.Output)
		if i < 0 || m.Outputs[i].Pooling != PoolMean || m.Pooling != PoolMean {
			return fmt.Errorf("%w: %s: output %q with pooling %q is not a mean output of outputs", ErrManifest, path, m.Output, m.Pooling)
		}
	}
	return nil
}

// OutputIndex is the index of the output named name in Outputs, or -1.
func (m *Manifest) OutputIndex(name string) int {
	for i, o := range m.Outputs {
		if o.Name == name {
			return i
		}
	}
	return -1
}

// SingleOutput says whether the model's one output is its pooled Output ("embedding"): Embed's
// fast path (and CUDA graphs) serve it.
func (m *Manifest) SingleOutput() bool {
	return len(m.Outputs) == 1 && m.Outputs[0].Name == m.Output && !m.Outputs[0].PerResidue()
}

// LoadManifest reads DIR/model.json and checks that it describes a model seqembed can run:
// the ESM alphabet, two int64 inputs, its outputs (one pooled output in manifests without
// "outputs"), a positive dimension and max length.
func LoadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, "model.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, path, err)
	}
	m.Dir = dir
	if m.ModelFile == "" {
		m.ModelFile = "model.onnx"
	}
	switch {
	case m.Name == "":
		return nil, fmt.Errorf("%w: %s: name is empty", ErrManifest, path)
	case m.EmbeddingDim <= 0:
		return nil, fmt.Errorf("%w: %s: embedding_dim %d", ErrManifest, path, m.EmbeddingDim)
	case m.MaxLength <= 0:
		return nil, fmt.Errorf("%w: %s: max_length %d", ErrManifest, path, m.MaxLength)
	case m.Alphabet != "esm":
		return nil, fmt.Errorf("%w: %s: alphabet %q (only \"esm\" is supported)", ErrManifest, path, m.Alphabet)
	case len(m.Inputs) != 2:
		return nil, fmt.Errorf("%w: %s: want inputs [input_ids, attention_mask], got %v", ErrManifest, path, m.Inputs)
	}
	if err := m.checkOutputs(path); err != nil {
		return nil, err
	}
	if m.CustomOps != "" {
		if _, err := os.Stat(m.CustomOpsPath()); err != nil {
			return nil, fmt.Errorf("%w: %s: custom_ops library: %v (build it with scripts/build-ops.sh %s, "+
				"or point SEQEMBED_CUSTOM_OPS at one)", ErrManifest, path, err, m.CustomOpsPath())
		}
	}
	switch m.Precision {
	case "", "fp32", "fp16", PrecisionFP8:
	default:
		return nil, fmt.Errorf("%w: %s: precision %q (want fp32, fp16 or fp8)", ErrManifest, path, m.Precision)
	}
	for _, req := range m.Requires {
		if req != "cuda" {
			return nil, fmt.Errorf("%w: %s: requires %q (only \"cuda\" is known)", ErrManifest, path, req)
		}
	}
	return &m, nil
}

// CustomOpsPath is the custom-operator library's path ("" when the model needs none): the
// manifest's file if it exists, else $SEQEMBED_CUSTOM_OPS if set, else the manifest's file.
func (m *Manifest) CustomOpsPath() string {
	p := m.CustomOps
	if p == "" {
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(m.Dir, p)
	}
	if _, err := os.Stat(p); err != nil {
		if env := os.Getenv("SEQEMBED_CUSTOM_OPS"); env != "" {
			return env
		}
	}
	return p
}

// ModelPath is the ONNX file's path.
func (m *Manifest) ModelPath() string { return filepath.Join(m.Dir, m.ModelFile) }

// VerifySHA256 hashes the model file (and its external data file, if any) and compares the digest
// with the manifest's. It reads the whole model: call it once at start-up.
func (m *Manifest) VerifySHA256() error {
	if m.SHA256 == "" {
		return nil
	}
	h := sha256.New()
	for _, p := range []string{m.ModelPath(), m.ModelPath() + ".data"} {
		f, err := os.Open(p)
		if os.IsNotExist(err) && p != m.ModelPath() {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrManifest, err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%w: hashing %s: %v", ErrManifest, p, err)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s, manifest says %s", ErrManifest, m.ModelPath(), got, m.SHA256)
	}
	return nil
}
