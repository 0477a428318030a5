package esm2graph

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/esm2graph/safetensors"
	"github.com/seqembed/seqembed/esm2graph/torchpt"
	"github.com/seqembed/seqembed/gpurun"
)

// tinyConfig is testdata/esm2-tiny's architecture (tools/export_esm2.py PRESETS["tiny"]).
var tinyConfig = Config{
	HiddenSize: 64, NumAttentionHeads: 4, NumHiddenLayers: 2, IntermediateSize: 256, LayerNormEps: 1e-5,
	MaxPositionEmbeddings: 1026, PositionEmbeddingType: "rotary", TokenDropout: true, MaskTokenID: 32,
	HiddenAct: "gelu", VocabSize: 33,
}

type weight struct {
	name  string
	shape []int64
	vals  []float32
}

// randomWeights are seeded random weights for cfg under Hugging Face EsmModel names, scaled so
// that attention is far from uniform (rotary and masking errors then show in the output) and
// every bias and LayerNorm parameter matters.
func randomWeights(cfg Config, seed uint64) []weight {
	r := rand.New(rand.NewPCG(seed, 7))
	var ws []weight
	for _, w := range expectedShapes(cfg) {
		n := numel(w.shape)
		v := make([]float32, n)
		std, mean := 0.1, 0.0
		switch {
		case w.name == nameEmbed:
			std = 1
		case strings.Contains(w.name, "query.weight"), strings.Contains(w.name, "key.weight"):
			std = 0.2
		case strings.HasSuffix(w.name, "LayerNorm.weight"), strings.HasSuffix(w.name, "emb_layer_norm_after.weight"):
			std, mean = 0.2, 1
		}
		for i := range v {
			v[i] = float32(mean + std*r.NormFloat64())
		}
		ws = append(ws, weight{w.name, w.shape, v})
	}
	return ws
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// hfConfigJSON is cfg as save_pretrained writes config.json (the fields read here, and a few others).
func hfConfigJSON(cfg Config) map[string]any {
	return map[string]any{
		"architectures": []string{"EsmModel"}, "model_type": "esm", "hidden_size": cfg.HiddenSize,
		"num_attention_heads": cfg.NumAttentionHeads, "num_hidden_layers": cfg.NumHiddenLayers,
		"intermediate_size": cfg.IntermediateSize, "layer_norm_eps": cfg.LayerNormEps,
		"max_position_embeddings": cfg.MaxPositionEmbeddings, "position_embedding_type": cfg.PositionEmbeddingType,
		"emb_layer_norm_before": cfg.EmbLayerNormBefore, "token_dropout": cfg.TokenDropout, "mask_token_id": cfg.MaskTokenID,
		"pad_token_id": padID, "hidden_act": cfg.HiddenAct, "vocab_size": cfg.VocabSize, "torch_dtype": "float32",
	}
}

// writeSafetensors writes ws (names prefixed by prefix, plus extra tensors) as path.
func writeSafetensors(t testing.TB, path, prefix string, ws []weight, extra ...weight) {
	t.Helper()
	var ts []safetensors.Tensor
	for _, w := range append(append([]weight{}, ws...), extra...) {
		name := w.name
		if !strings.HasPrefix(name, "lm_head.") {
			name = prefix + name
		}
		ts = append(ts, safetensors.F32(name, w.shape, w.vals))
	}
	var buf bytes.Buffer
	if err := safetensors.Write(&buf, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeHFDir writes a Hugging Face checkpoint directory (config.json + model.safetensors).
func writeHFDir(t testing.TB, cfg Config, ws []weight) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "esm2-synthetic")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "config.json"), hfConfigJSON(cfg))
	writeSafetensors(t, filepath.Join(dir, "model.safetensors"), "", ws)
	return dir
}

// fairESMName is a Hugging Face name as fair-esm checkpoints spell it.
func fairESMName(name string) string {
	switch {
	case name == nameEmbed:
		return "encoder.sentence_encoder.embed_tokens.weight"
	case strings.HasPrefix(name, nameFinalLN):
		return "encoder.sentence_encoder." + strings.TrimPrefix(name, "encoder.")
	}
	rest := strings.TrimPrefix(name, "encoder.layer.")
	idx, rest, _ := strings.Cut(rest, ".")
	dot := strings.LastIndexByte(rest, '.')
	for _, m := range fairESMLayer {
		if rest[:dot] == m[0] {
			return "encoder.sentence_encoder.layers." + idx + "." + m[1] + rest[dot:]
		}
	}
	panic("no fair-esm name for " + name)
}

// writeFairESM writes ws as a fair-esm checkpoint (tools/export_esm2.py save_fairesm: float32
// state dict with rot_emb.inv_freq buffers, and cfg), cfg being whatever the test wants there.
func writeFairESM(t testing.TB, path string, c Config, ws []weight, cfg any, invFreq bool) {
	t.Helper()
	sd := &torchpt.Dict{}
	add := func(name string, shape []int64, v []float32) {
		x, err := torchpt.NewTensor("float32", shape, v)
		if err != nil {
			t.Fatal(err)
		}
		sd.Keys, sd.Values = append(sd.Keys, name), append(sd.Values, x)
	}
	for _, w := range ws {
		add(fairESMName(w.name), w.shape, w.vals)
	}
	if invFreq {
		hd := c.HiddenSize / c.NumAttentionHeads
		inv := make([]float32, hd/2)
		for j := range inv {
			inv[j] = float32(1 / math.Pow(10000, float64(2*j)/float64(hd)))
		}
		for i := range c.NumHiddenLayers {
			add("encoder.sentence_encoder.layers."+strconv.Itoa(i)+".self_attn.rot_emb.inv_freq", []int64{int64(len(inv))}, inv)
		}
	}
	root := &torchpt.Dict{Keys: []any{"model"}, Values: []any{sd}}
	if cfg != nil {
		root.Keys, root.Values = append(root.Keys, "cfg"), append(root.Values, cfg)
	}
	var buf bytes.Buffer
	if err := torchpt.Save(&buf, root); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fairESMCfg is save_fairesm's {"model": {...}} cfg as a dict.
func fairESMCfg(c Config) *torchpt.Dict {
	m := &torchpt.Dict{
		Keys: []any{"encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "token_dropout"},
		Values: []any{int64(c.NumHiddenLayers), int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.NumAttentionHeads),
			c.TokenDropout},
	}
	return &torchpt.Dict{Keys: []any{"model"}, Values: []any{m}}
}

func load(t testing.TB, path string) *Checkpoint {
	t.Helper()
	ck, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	return ck
}

func build(t testing.TB, ck *Checkpoint, opts Options) (string, Manifest) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "model")
	man, err := Build(context.Background(), ck, out, opts)
	if err != nil {
		t.Fatal(err)
	}
	return out, man
}

// reference is a float64 ESM-2 forward pass of one unpadded sequence (HF EsmModel: token
// dropout scaling, pre-LN blocks, rotate-half rotary after ESM's q scaling, softmax attention,
// erf GELU, final LayerNorm) and the graph's pooling (mean over tokens that are not <cls>/<eos>).
// noRotary leaves the rotary step out (to show the comparison would catch a rotary error).
func reference(t testing.TB, ck *Checkpoint, ids []int64, noRotary bool) []float64 {
	t.Helper()
	return referenceWith(t, ck, ids, noRotary, false)
}

// referenceWith is reference, with the FFN's GELU as the tanh approximation when tanhGELU (what
// Options.FusedGELU's graph computes: cuBLASLt's, and Fp16LinearF32's on the CPU).
func referenceWith(t testing.TB, ck *Checkpoint, ids []int64, noRotary, tanhGELU bool) []float64 {
	t.Helper()
	cfg := ck.Config
	D, H, F := cfg.HiddenSize, cfg.NumAttentionHeads, cfg.IntermediateSize
	hd, S := D/H, len(ids)
	get := func(name string) []float64 {
		v, _, err := ck.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]float64, len(v))
		for i, x := range v {
			out[i] = float64(x)
		}
		return out
	}
	emb := get(nameEmbed)
	x := make([][]float64, S)
	nMask := 0
	for i, id := range ids {
		x[i] = append([]float64(nil), emb[int(id)*D:(int(id)+1)*D]...)
		if cfg.TokenDropout && id == int64(cfg.MaskTokenID) {
			clear(x[i])
			nMask++
		}
	}
	if cfg.TokenDropout {
		scale := (1 - 0.15*0.8) / (1 - float64(nMask)/float64(S))
		for i := range x {
			for j := range x[i] {
				x[i][j] *= scale
			}
		}
	}
	layerNorm := func(in []float64, g, b []float64) []float64 {
		var mean, v float64
		for _, a := range in {
			mean += a
		}
		mean /= float64(len(in))
		for _, a := range in {
			v += (a - mean) * (a - mean)
		}
		v /= float64(len(in))
		out := make([]float64, len(in))
		for i, a := range in {
			out[i] = (a-mean)/math.Sqrt(v+cfg.LayerNormEps)*g[i] + b[i]
		}
		return out
	}
	linear := func(in, w, b []float64, nOut int) []float64 {
		out := make([]float64, nOut)
		for j := range nOut {
			s := b[j]
			for i, a := range in {
				s += w[j*len(in)+i] * a
			}
			out[j] = s
		}
		return out
	}
	rotary := func(v []float64, pos int) {
		if noRotary {
			return
		}
		half := hd / 2
		for h := range H {
			for p := range half {
				theta := float64(pos) / math.Pow(10000, float64(2*p)/float64(hd))
				c, s := math.Cos(theta), math.Sin(theta)
				a, b := v[h*hd+p], v[h*hd+p+half]
				v[h*hd+p], v[h*hd+p+half] = a*c-b*s, b*c+a*s
			}
		}
	}
	for l := range cfg.NumHiddenLayers {
		m := "encoder.layer." + strconv.Itoa(l) + "."
		p := func(s string) []float64 { return get(m + s) }
		wq, bq, wk, bk := p("attention.self.query.weight"), p("attention.self.query.bias"), p("attention.self.key.weight"), p("attention.self.key.bias")
		wv, bv, wo, bo := p("attention.self.value.weight"), p("attention.self.value.bias"), p("attention.output.dense.weight"), p("attention.output.dense.bias")
		ln1g, ln1b, ln2g, ln2b := p("attention.LayerNorm.weight"), p("attention.LayerNorm.bias"), p("LayerNorm.weight"), p("LayerNorm.bias")
		q, k, v := make([][]float64, S), make([][]float64, S), make([][]float64, S)
		for i := range S {
			h := layerNorm(x[i], ln1g, ln1b)
			q[i], k[i], v[i] = linear(h, wq, bq, D), linear(h, wk, bk, D), linear(h, wv, bv, D)
			for j := range q[i] {
				q[i][j] /= math.Sqrt(float64(hd))
			}
			rotary(q[i], i)
			rotary(k[i], i)
		}
		for i := range S {
			ctx := make([]float64, D)
			for h := range H {
				scores := make([]float64, S)
				top := math.Inf(-1)
				for j := range S {
					for c := h * hd; c < (h+1)*hd; c++ {
						scores[j] += q[i][c] * k[j][c]
					}
					top = math.Max(top, scores[j])
				}
				var z float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - top)
					z += scores[j]
				}
				for j := range S {
					for c := h * hd; c < (h+1)*hd; c++ {
						ctx[c] += scores[j] / z * v[j][c]
					}
				}
			}
			o := linear(ctx, wo, bo, D)
			for j := range o {
				x[i][j] += o[j]
			}
		}
		w1, b1, w2, b2 := p("intermediate.dense.weight"), p("intermediate.dense.bias"), p("output.dense.weight"), p("output.dense.bias")
		for i := range S {
			h := linear(layerNorm(x[i], ln2g, ln2b), w1, b1, F)
			for j, a := range h {
				if tanhGELU {
					h[j] = 0.5 * a * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(a+0.044715*a*a*a)))
				} else {
					h[j] = 0.5 * a * (1 + math.Erf(a/math.Sqrt2))
				}
			}
			y := linear(h, w2, b2, D)
			for j := range y {
				x[i][j] += y[j]
			}
		}
	}
	g, b := get(nameFinalLN+".weight"), get(nameFinalLN+".bias")
	out := make([]float64, D)
	n := 0
	for i, id := range ids {
		if id == clsID || id == eosID {
			continue
		}
		n++
		for j, a := range layerNorm(x[i], g, b) {
			out[j] += a
		}
	}
	for j := range out {
		out[j] /= float64(max(n, 1))
	}
	return out
}

// requireORT skips where the ONNX Runtime library is absent, except in CI.
func requireORT(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(gpurun.LibraryPath()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("ONNX Runtime library missing in CI: %v", err)
		}
		t.Skipf("ONNX Runtime library not found (%v): run scripts/fetch-ort.sh", err)
	}
}

// runner loads a built model directory on the CPU through gpurun, as the worker does.
func runner(t testing.TB, dir string) *gpurun.Runner {
	t.Helper()
	requireORT(t)
	r, err := gpurun.New(dir, gpurun.WithThreads(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// padded is token sequences as one batch padded with <pad> to cols (0: the longest).
func padded(seqs [][]int64, cols int) gpurun.Input {
	for _, s := range seqs {
		cols = max(cols, len(s))
	}
	ids, mask := make([]int64, len(seqs)*cols), make([]int64, len(seqs)*cols)
	for i, s := range seqs {
		for j := range cols {
			ids[i*cols+j] = padID
			if j < len(s) {
				ids[i*cols+j], mask[i*cols+j] = s[j], 1
			}
		}
	}
	return gpurun.Input{IDs: ids, Mask: mask, Rows: len(seqs), Cols: cols}
}

// embed runs token sequences as one batch padded to cols (0: the longest) and returns one
// embedding per sequence.
func embed(t testing.TB, r *gpurun.Runner, seqs [][]int64, cols int) [][]float32 {
	t.Helper()
	out, err := r.Embed(context.Background(), padded(seqs, cols), nil)
	if err != nil {
		t.Fatal(err)
	}
	dim := r.Dim()
	if len(out) != len(seqs)*dim {
		t.Fatalf("%d outputs for %d rows of dim %d", len(out), len(seqs), dim)
	}
	embs := make([][]float32, len(seqs))
	for i := range seqs {
		embs[i] = out[i*dim : (i+1)*dim]
	}
	return embs
}

// testSeqs are token sequences (<cls> residues <eos>) of several lengths, some with <mask>
// tokens (token dropout).
func testSeqs() [][]int64 {
	r := rand.New(rand.NewPCG(3, 4))
	var seqs [][]int64
	for i, n := range []int{1, 5, 23, 40, 61, 120} {
		s := []int64{clsID}
		for j := range n {
			tok := int64(4 + r.IntN(20))
			if i%2 == 1 && j%7 == 3 {
				tok = maskID
			}
			s = append(s, tok)
		}
		seqs = append(seqs, append(s, eosID))
	}
	return seqs
}

func maxAbs[A, B float32 | float64](a []A, b []B) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}
