package esm2graph

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Manifest is the model.json Build writes: the keys, in the order, of tools/export_esm2.py's
// manifest for --fused exports (gpurun.LoadManifest reads it).
type Manifest struct {
	Name         string   `json:"name"`
	Architecture string   `json:"architecture"`
	Source       string   `json:"source"`
	ModelFile    string   `json:"model_file"`
	SHA256       string   `json:"sha256"`
	EmbeddingDim int      `json:"embedding_dim"`
	NumLayers    int      `json:"num_layers"`
	NumHeads     int      `json:"num_heads"`
	Alphabet     string   `json:"alphabet"`
	Residues     string   `json:"residues"`
	Tokens       Tokens   `json:"tokens"`
	MaxLength    int      `json:"max_length"`
	Inputs       []string `json:"inputs"`
	Output       string   `json:"output"`
	Pooling      string   `json:"pooling"`
	// Outputs are the graph's outputs in order, for graphs built with Options.Outputs (absent for
	// the default graph, whose one output is Output). Output and Pooling name the "embedding"
	// output ("mean") when there is one, else they are "".
	Outputs []OutputInfo `json:"outputs,omitempty"`
	DType   string       `json:"dtype"`
	// Precision is the projections' arithmetic: "fp8" (Options.Precision), else the dtype's
	// ("fp16", "fp32"), as the Python export writes it; FP8Projections which ran as FP8 ("all",
	// "ffn"; fp8 only).
	Precision      string `json:"precision"`
	FP8Projections string `json:"fp8_projections,omitempty"`
	// FFNGelu is "tanh" for graphs whose FFN GELU is the tanh approximation (Options.FusedGELU),
	// absent for ESM-2's erf GELU (the Python export's "ffn_gelu").
	FFNGelu string `json:"ffn_gelu,omitempty"`
	Opset   int    `json:"opset"`
	// Parity is the export's own check against a reference; Build runs none (null).
	Parity *Parity `json:"parity"`
	// Optimized counts the graph's fused and matrix ops, as the Python export does.
	Optimized OpCounts `json:"optimized"`
	Attention string   `json:"attention"`
	Requires  []string `json:"requires"`
	CustomOps string   `json:"custom_ops"`
	Exported  Exported `json:"exported"`
}

// OutputInfo is one graph output in the manifest: its name, representation layer (0 to
// num_layers), pooling (PoolMean, PoolBOS, PoolPerResidue), element type ("float32", "float16")
// and shape (strings for the symbolic batch and length, numbers for dim).
type OutputInfo struct {
	Name    string `json:"name"`
	Layer   int    `json:"layer"`
	Pooling string `json:"pooling"`
	DType   string `json:"dtype"`
	Shape   []any  `json:"shape"`
}

// Tokens are the special token ids.
type Tokens struct {
	CLS  int `json:"cls"`
	Pad  int `json:"pad"`
	EOS  int `json:"eos"`
	Mask int `json:"mask"`
	Unk  int `json:"unk"`
}

// Parity is a parity check's worst case.
type Parity struct {
	MaxAbs    float64 `json:"max_abs"`
	MinCosine float64 `json:"min_cosine"`
}

// Exported says what wrote the model and from what.
type Exported struct {
	By           string `json:"by"`
	Go           string `json:"go"`
	Format       string `json:"checkpoint_format"`
	ConfigFrom   string `json:"config_from"`
	MaskForm     string `json:"mask_form,omitempty"`
	PackedLayout string `json:"packed_layout,omitempty"`
}

// OpCount is one op type's node count.
type OpCount struct {
	Op string
	N  int
}

// OpCounts is an op → count JSON object kept in first-seen order (like the Python dict).
type OpCounts []OpCount

// Get is op's count (0 when absent).
func (c OpCounts) Get(op string) int {
	for _, x := range c {
		if x.Op == op {
			return x.N
		}
	}
	return 0
}

// MarshalJSON writes the counts as an object in order.
func (c OpCounts) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, x := range c {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(x.Op)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%s:%d", k, x.N)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads an object of counts, in order.
func (c *OpCounts) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("op counts: want an object, got %s", data)
	}
	*c = nil
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		var n int
		if err := dec.Decode(&n); err != nil {
			return err
		}
		*c = append(*c, OpCount{Op: t.(string), N: n})
	}
	return nil
}
