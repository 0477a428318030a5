package esm2graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/esm2graph/safetensors"
	"github.com/seqembed/seqembed/esm2graph/torchpt"
	"github.com/seqembed/seqembed/gpurun"
)

// TestFormatsBuildTheSameGraph: one set of weights saved every way Load reads it (Hugging Face
// directory with model.safetensors, with EsmForMaskedLM's "esm." prefix and lm_head/contact_head
// extras, sharded safetensors, pytorch_model.bin; a .safetensors file with config.json beside
// it; fair-esm .pt with cfg as a dict, an argparse.Namespace, an omegaconf DictConfig, and an
// unreadable cfg or none, sizes then inferred from the tensors and heads from rot_emb.inv_freq)
// builds byte-identical model.onnx files: same sha256 in every manifest.
func TestFormatsBuildTheSameGraph(t *testing.T) {
	cfg := tinyConfig
	ws := randomWeights(cfg, 5)
	root := t.TempDir()
	mkdir := func(name string) string {
		d := filepath.Join(root, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	paths := map[string]string{}
	paths["hf"] = writeHFDir(t, cfg, ws)

	d := mkdir("masked-lm")
	writeJSON(t, filepath.Join(d, "config.json"), hfConfigJSON(cfg))
	writeSafetensors(t, filepath.Join(d, "model.safetensors"), "esm.", ws,
		weight{"lm_head.dense.weight", []int64{64, 64}, make([]float32, 64*64)},
		weight{"lm_head.decoder.weight", []int64{33, 64}, make([]float32, 33*64)},
		weight{"contact_head.regression.weight", []int64{1, 8}, make([]float32, 8)},
		weight{"embeddings.position_ids", []int64{1, 4}, make([]float32, 4)})
	paths["masked-lm"] = d

	d = mkdir("sharded")
	writeJSON(t, filepath.Join(d, "config.json"), hfConfigJSON(cfg))
	weightMap := map[string]string{}
	half := len(ws) / 2
	for i, w := range ws {
		weightMap[w.name] = []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}[min(i/half, 1)]
	}
	writeSafetensors(t, filepath.Join(d, "model-00001-of-00002.safetensors"), "", ws[:half])
	writeSafetensors(t, filepath.Join(d, "model-00002-of-00002.safetensors"), "", ws[half:])
	writeJSON(t, filepath.Join(d, "model.safetensors.index.json"), map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
	paths["sharded"] = d

	d = mkdir("bin")
	writeJSON(t, filepath.Join(d, "config.json"), hfConfigJSON(cfg))
	sd := &torchpt.Dict{}
	for _, w := range ws {
		x, err := torchpt.NewTensor("float32", w.shape, w.vals)
		if err != nil {
			t.Fatal(err)
		}
		sd.Keys, sd.Values = append(sd.Keys, "esm."+w.name), append(sd.Values, x)
	}
	var buf bytes.Buffer
	if err := torchpt.Save(&buf, sd); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "pytorch_model.bin"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	paths["bin"] = d
	paths["safetensors file"] = filepath.Join(paths["hf"], "model.safetensors")

	fe := mkdir("fair-esm")
	ns := &torchpt.Object{Class: torchpt.Global{Module: "argparse", Name: "Namespace"}, State: fairESMCfg(cfg).Values[0]}
	node := func(v any) any {
		return &torchpt.Object{Class: torchpt.Global{Module: "omegaconf.nodes", Name: "AnyNode"}, State: &torchpt.Dict{Keys: []any{"_val"}, Values: []any{v}}}
	}
	inner := fairESMCfg(cfg).Values[0].(*torchpt.Dict)
	content := &torchpt.Dict{}
	for i, k := range inner.Keys {
		content.Keys, content.Values = append(content.Keys, k), append(content.Values, node(inner.Values[i]))
	}
	dictConfig := func(c *torchpt.Dict) any {
		return &torchpt.Object{Class: torchpt.Global{Module: "omegaconf.dictconfig", Name: "DictConfig"},
			State: &torchpt.Dict{Keys: []any{"_metadata", "_content"}, Values: []any{nil, c}}}
	}
	omega := dictConfig(&torchpt.Dict{Keys: []any{"model"}, Values: []any{dictConfig(content)}})
	for name, c := range map[string]any{
		"dict cfg":      fairESMCfg(cfg),
		"namespace cfg": &torchpt.Dict{Keys: []any{"model"}, Values: []any{ns}},
		"omegaconf cfg": omega,
		"opaque cfg":    &torchpt.Object{Class: torchpt.Global{Module: "fairseq", Name: "Config"}},
		"no cfg":        nil,
	} {
		p := filepath.Join(fe, strings.ReplaceAll(name, " ", "_")+".pt")
		writeFairESM(t, p, cfg, ws, c, true)
		paths["fair-esm "+name] = p
	}

	var wantSum string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range paths {
			if !yield(k) {
				return
			}
		}
	}) {
		ck := load(t, paths[name])
		if ck.Config != cfg {
			t.Errorf("%s: config %+v, want %+v (from %s; notes %q)", name, ck.Config, cfg, ck.ConfigFrom, ck.Notes)
		}
		wantFormat := map[bool]string{true: FormatFairESM, false: FormatSafetensors}[strings.HasPrefix(name, "fair-esm")]
		if name == "bin" {
			wantFormat = FormatPyTorchBin
		}
		if ck.Format != wantFormat {
			t.Errorf("%s: format %s, want %s", name, ck.Format, wantFormat)
		}
		wantFrom := map[string]string{"fair-esm dict cfg": "checkpoint cfg", "fair-esm namespace cfg": "checkpoint cfg",
			"fair-esm omegaconf cfg": "checkpoint cfg", "fair-esm opaque cfg": "tensor shapes", "fair-esm no cfg": "tensor shapes"}[name]
		if wantFrom == "" {
			wantFrom = "config.json"
		}
		if ck.ConfigFrom != wantFrom {
			t.Errorf("%s: config from %s, want %s (notes %q)", name, ck.ConfigFrom, wantFrom, ck.Notes)
		}
		wantNote := map[string]string{"fair-esm no cfg": "attention heads 4 from the rotary inv_freq buffer",
			"fair-esm opaque cfg": "cfg could not be read", "fair-esm dict cfg": "from the checkpoint's cfg.model: encoder_layers"}[name]
		if wantNote != "" && !slices.ContainsFunc(ck.Notes, func(n string) bool { return strings.Contains(n, wantNote) }) {
			t.Errorf("%s: notes %q lack %q", name, ck.Notes, wantNote)
		}
		_, man := build(t, ck, Options{Attention: AttentionMHA, Name: "same", Source: "same"})
		if wantSum == "" {
			wantSum = man.SHA256
		} else if man.SHA256 != wantSum {
			t.Errorf("%s: model.onnx sha256 %s, want %s (the same graph as the others)", name, man.SHA256, wantSum)
		}
	}
}

// TestLoadErrors: bad checkpoints fail Load with the sentinel and a message that names the file,
// the tensor and the expected vs actual shape; nothing panics.
func TestLoadErrors(t *testing.T) {
	cfg := tinyConfig
	ws := randomWeights(cfg, 6)
	without := func(name string) []weight {
		return slices.DeleteFunc(slices.Clone(ws), func(w weight) bool { return w.name == name })
	}
	reshaped := func(name string, shape []int64) []weight {
		out := slices.Clone(ws)
		for i, w := range out {
			if w.name == name {
				out[i] = weight{name, shape, make([]float32, numel(shape))}
			}
		}
		return out
	}
	hfDir := func(cfgJSON map[string]any, ws []weight) string {
		d := t.TempDir()
		if cfgJSON != nil {
			writeJSON(t, filepath.Join(d, "config.json"), cfgJSON)
		}
		if ws != nil {
			writeSafetensors(t, filepath.Join(d, "model.safetensors"), "", ws)
		}
		return d
	}
	with := func(k string, v any) map[string]any {
		m := hfConfigJSON(cfg)
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	truncated := hfDir(hfConfigJSON(cfg), ws)
	st := filepath.Join(truncated, "model.safetensors")
	data, _ := os.ReadFile(st)
	os.WriteFile(st, data[:len(data)-100], 0o644)
	fe := filepath.Join(t.TempDir(), "esm1b.pt")
	writeFairESM(t, fe, cfg, ws, nil, false)
	// An ESM-1b-style key in an otherwise ESM-2 fair-esm file.
	f, _ := torchpt.Open(fe)
	rootDict := f.Root.(*torchpt.Dict)
	sdAny, _ := rootDict.Get("model")
	sd := sdAny.(*torchpt.Dict)
	pos, _ := torchpt.NewTensor("float32", []int64{2, 64}, make([]float32, 128))
	sd.Keys, sd.Values = append(sd.Keys, "encoder.sentence_encoder.embed_positions.weight"), append(sd.Values, pos)
	var buf bytes.Buffer
	if err := torchpt.Save(&buf, rootDict); err != nil {
		t.Fatal(err)
	}
	f.Close()
	esm1b := filepath.Join(t.TempDir(), "esm1b.pt")
	os.WriteFile(esm1b, buf.Bytes(), 0o644)
	noHeads := filepath.Join(t.TempDir(), "no-heads.pt")
	writeFairESM(t, noHeads, cfg, ws, nil, false) // hidden 64 is no published size, no inv_freq
	badInv := filepath.Join(t.TempDir(), "bad-inv.pt")
	c3 := cfg
	c3.NumAttentionHeads = 2 // inv_freq for head size 32, cfg says 4 heads (16)
	writeFairESM(t, badInv, c3, ws, fairESMCfg(cfg), true)
	bareST := filepath.Join(t.TempDir(), "weights.safetensors")
	writeSafetensors(t, bareST, "", ws)
	moreLayers := hfDir(with("num_hidden_layers", 1), ws)
	missingFE := filepath.Join(t.TempDir(), "missing.pt")
	writeFairESM(t, missingFE, cfg, without("encoder.layer.0.attention.LayerNorm.bias"), fairESMCfg(cfg), true)

	cases := []struct {
		name string
		path string
		want error
		msg  []string
	}{
		{"no such path", filepath.Join(t.TempDir(), "nope"), ErrCheckpoint, []string{"nope"}},
		{"dir without config", hfDir(nil, ws), ErrCheckpoint, []string{"no config.json"}},
		{"dir without weights", hfDir(hfConfigJSON(cfg), nil), ErrCheckpoint, []string{"no model.safetensors"}},
		{"missing tensor", hfDir(hfConfigJSON(cfg), without("encoder.layer.1.output.dense.weight")), ErrCheckpoint,
			[]string{"missing tensor encoder.layer.1.output.dense.weight", "[64 256]"}},
		{"wrong shape", hfDir(hfConfigJSON(cfg), reshaped("encoder.layer.0.attention.self.query.weight", []int64{64, 32})), ErrCheckpoint,
			[]string{"model.safetensors", "encoder.layer.0.attention.self.query.weight", "shape [64 32], want [64 64]"}},
		{"truncated safetensors", truncated, safetensors.ErrFormat, []string{"model.safetensors", "truncated"}},
		{"absolute positions", hfDir(with("position_embedding_type", "absolute"), ws), ErrUnsupported, []string{"rotary"}},
		{"default positions", hfDir(with("position_embedding_type", nil), ws), ErrUnsupported, []string{"absolute"}},
		{"embedding layer norm", hfDir(with("emb_layer_norm_before", true), ws), ErrUnsupported, []string{"emb_layer_norm_before"}},
		{"activation", hfDir(with("hidden_act", "gelu_new"), ws), ErrUnsupported, []string{"gelu_new"}},
		{"model type", hfDir(with("model_type", "bert"), ws), ErrUnsupported, []string{"bert"}},
		{"vocab", hfDir(with("vocab_size", 20), ws), ErrUnsupported, []string{"vocab_size=20"}},
		{"no hidden size", hfDir(with("hidden_size", nil), ws), ErrCheckpoint, []string{"no hidden_size"}},
		{"bad config json", hfDir(map[string]any{"hidden_size": "big"}, ws), ErrCheckpoint, []string{"config.json"}},
		{"odd heads", hfDir(with("num_attention_heads", 5), ws), ErrUnsupported, []string{"num_attention_heads 5"}},
		{"more layers than config", moreLayers, ErrCheckpoint, []string{"encoder.layer.1.", "beyond num_hidden_layers 1"}},
		{"fair-esm missing tensor", missingFE, ErrCheckpoint, []string{"encoder.layer.0.attention.LayerNorm.bias",
			"fair-esm: encoder.sentence_encoder.layers.0.self_attn_layer_norm.bias"}},
		{"ESM-1b key", esm1b, ErrUnsupported, []string{"embed_positions", "ESM-2"}},
		{"unknown heads", noHeads, ErrCheckpoint, []string{"attention heads is unknown"}},
		{"bare safetensors", bareST, ErrCheckpoint, []string{"attention heads is unknown"}},
		{"inv_freq vs heads", badInv, ErrCheckpoint, []string{"rot_emb.inv_freq", "want [8]"}},
		{"json file", filepath.Join(hfDir(hfConfigJSON(cfg), ws), "config.json"), ErrCheckpoint, []string{"not a JSON file"}},
	}
	for _, c := range cases {
		ck, err := Load(c.path)
		if err == nil {
			ck.Close()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
			continue
		}
		t.Logf("%s: %v", c.name, err)
		for _, m := range c.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: %q does not mention %q", c.name, err, m)
			}
		}
	}
}

// TestOptions: defaults, auto's choice (tools/export_esm2.py AUTO_MHA_MAX_HIDDEN on CUDA, mha
// on the CPU) and every contradiction rejected with ErrOption.
func TestOptions(t *testing.T) {
	ck := &Checkpoint{Path: "/models/esm2_t6_8M_UR50D.pt", Config: tinyConfig}
	o, err := Options{}.resolve(ck)
	if err != nil {
		t.Fatal(err)
	}
	if o.Attention != AttentionMHA || o.Device != DeviceCUDA || o.MaskForm != MaskLengths || o.PackedLayout != LayoutRows ||
		o.MaxLength != 1022 || o.Name != "esm2_t6_8M_UR50D" || o.Source != ck.Path {
		t.Errorf("defaults %+v", o)
	}
	for _, c := range []struct {
		hidden int
		device string
		want   string
	}{{320, DeviceCUDA, "mha"}, {480, DeviceCUDA, "mha"}, {640, DeviceCUDA, "packed"}, {2560, DeviceCUDA, "packed"}, {1280, DeviceCPU, "mha"}} {
		if got := AutoAttention(c.hidden, c.device); got != c.want {
			t.Errorf("AutoAttention(%d, %s) = %s, want %s", c.hidden, c.device, got, c.want)
		}
	}
	big := &Checkpoint{Path: "x", Config: tinyConfig}
	big.Config.HiddenSize = 1280
	if o, _ := (Options{Attention: AttentionAuto}).resolve(big); o.Attention != AttentionPacked {
		t.Errorf("auto for 1280 on CUDA: %s", o.Attention)
	}
	for _, bad := range []Options{
		{Attention: "flash"}, {Device: "tpu"}, {MaskForm: "3d"}, {PackedLayout: "cols"},
		{Attention: AttentionPacked, MaskForm: Mask2D}, {Attention: AttentionMHA, PackedLayout: LayoutSequence},
		{CustomOps: true}, {Device: DeviceCPU, Attention: AttentionPacked}, {Device: DeviceCPU, FP16: true, CustomOps: true},
		{MaxLength: 1025}, {MaxLength: -1},
	} {
		if _, err := bad.resolve(ck); !errors.Is(err, ErrOption) {
			t.Errorf("%+v: %v, want ErrOption", bad, err)
		}
	}
	if _, err := Build(context.Background(), ck, t.TempDir(), Options{Attention: "x"}); !errors.Is(err, ErrOption) {
		t.Errorf("Build with a bad option: %v", err)
	}
	for path, want := range map[string]string{
		"/m/esm2_t33_650M_UR50D":                   "esm2_t33_650M_UR50D",
		"/m/esm2_t33_650M_UR50D/":                  "esm2_t33_650M_UR50D",
		"/m/esm2_t33_650M_UR50D/model.safetensors": "esm2_t33_650M_UR50D",
		"/m/esm2-tiny.pt":                          "esm2-tiny",
		"/m/hf/pytorch_model.bin":                  "hf",
		"/m/weights.v2.safetensors":                "weights.v2",
		"esm2.d":                                   "esm2.d",
	} {
		if got := defaultName(path); got != want {
			t.Errorf("defaultName(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestManifest: model.json has tools/export_esm2.py's keys in its order (tokens, optimized
// counts in first-seen order, parity null, requires [] not null), gpurun reads it, and its
// sha256 is the files'.
func TestManifest(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 7)))
	dir, man := build(t, ck, Options{Attention: AttentionMHA, Name: "tiny", MaxLength: 500})
	data, err := os.ReadFile(filepath.Join(dir, "model.json"))
	if err != nil {
		t.Fatal(err)
	}
	keys := func(js []byte) []string {
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.Token()
		var out []string
		for dec.More() {
			k, _ := dec.Token()
			out = append(out, k.(string))
			var skip json.RawMessage
			dec.Decode(&skip)
		}
		return out
	}
	want := []string{"name", "architecture", "source", "model_file", "sha256", "embedding_dim", "num_layers", "num_heads",
		"alphabet", "residues", "tokens", "max_length", "inputs", "output", "pooling", "dtype", "precision", "opset", "parity", "optimized",
		"attention", "requires", "custom_ops", "exported"}
	if got := keys(data); !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v", got, want)
	}
	var raw map[string]json.RawMessage
	json.Unmarshal(data, &raw)
	for k, v := range map[string]string{"parity": "null", "requires": "[]", "custom_ops": `""`, "attention": `"mha"`, "precision": `"fp32"`} {
		if string(raw[k]) != v {
			t.Errorf("%s = %s, want %s", k, raw[k], v)
		}
	}
	if got := keys(raw["tokens"]); !slices.Equal(got, []string{"cls", "pad", "eos", "mask", "unk"}) {
		t.Errorf("tokens keys %v", got)
	}
	if got := keys(raw["optimized"]); !slices.Equal(got, []string{"LayerNormalization", "MatMul", "Add", "RotaryEmbedding",
		"MultiHeadAttention", "SkipLayerNormalization", "BiasGelu"}) {
		t.Errorf("optimized keys %v", got)
	}
	var back Manifest
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Optimized, man.Optimized) || back.Exported.By != "seqembed esm2graph" || back.MaxLength != 500 {
		t.Errorf("read back %+v", back)
	}
	gm, err := gpurun.LoadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := gm.VerifySHA256(); err != nil {
		t.Error(err)
	}
	if gm.Name != "tiny" || gm.EmbeddingDim != 64 || gm.Attention != "mha" || gm.DType != "float32" {
		t.Errorf("gpurun manifest %+v", gm)
	}
	var oc OpCounts
	if err := json.Unmarshal([]byte(`[1]`), &oc); err == nil {
		t.Error("OpCounts from an array")
	}
}

// TestCancel: a cancelled build fails with ctx's error and leaves no file behind.
func TestCancel(t *testing.T) {
	ck := load(t, writeHFDir(t, tinyConfig, randomWeights(tinyConfig, 8)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	if _, err := Build(ctx, ck, dir, Options{}); !errors.Is(err, context.Canceled) || !errors.Is(err, ErrWrite) {
		t.Fatalf("cancelled Build: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestCustomOpsHelpers: LocateCustomOps looks beside the model, then at $SEQEMBED_CUSTOM_OPS;
// CustomOpsFallback's line says what falling back costs.
func TestCustomOpsHelpers(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SEQEMBED_CUSTOM_OPS", "")
	if p, ok := LocateCustomOps(dir); ok || p != filepath.Join(dir, CustomOpsLibrary) {
		t.Errorf("absent: %s %v", p, ok)
	}
	env := filepath.Join(t.TempDir(), "ops.so")
	os.WriteFile(env, nil, 0o644)
	t.Setenv("SEQEMBED_CUSTOM_OPS", env)
	if p, ok := LocateCustomOps(dir); !ok || p != env {
		t.Errorf("from the environment: %s %v", p, ok)
	}
	os.WriteFile(filepath.Join(dir, CustomOpsLibrary), nil, 0o644)
	if p, ok := LocateCustomOps(dir); !ok || p != filepath.Join(dir, CustomOpsLibrary) {
		t.Errorf("beside the model: %s %v", p, ok)
	}
	line := CustomOpsFallback("libseqembed_ops.so not found in /m")
	for _, s := range []string{"not found in /m", "13%", "270,630", "309,720", "docs/perf.md", "scripts/build-ops.sh"} {
		if !strings.Contains(line, s) {
			t.Errorf("fallback line %q lacks %q", line, s)
		}
	}
	if strings.Contains(line, "\n") {
		t.Error("fallback line has a newline")
	}
}
