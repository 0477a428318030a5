package esm2graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/seqembed/seqembed/esm2graph/safetensors"
	"github.com/seqembed/seqembed/esm2graph/torchpt"
)

// Config is an ESM-2 architecture: the fields of Hugging Face's EsmConfig the graph depends on.
type Config struct {
	HiddenSize            int     `json:"hidden_size"`
	NumAttentionHeads     int     `json:"num_attention_heads"`
	NumHiddenLayers       int     `json:"num_hidden_layers"`
	IntermediateSize      int     `json:"intermediate_size"`
	LayerNormEps          float64 `json:"layer_norm_eps"`
	MaxPositionEmbeddings int     `json:"max_position_embeddings"`
	PositionEmbeddingType string  `json:"position_embedding_type"`
	EmbLayerNormBefore    bool    `json:"emb_layer_norm_before"`
	TokenDropout          bool    `json:"token_dropout"`
	MaskTokenID           int     `json:"mask_token_id"`
	HiddenAct             string  `json:"hidden_act"`
	VocabSize             int     `json:"vocab_size"`
}

// ESM-2's fixed parts: the alphabet (tools/export_esm2.py VOCAB) and fair-esm's defaults.
const (
	clsID, padID, eosID, unkID, maskID = 0, 1, 2, 3, 32
	alphabetSize                       = 33
	residues                           = "LAGVSERTIDPKQNFYMHWCXBUZO"
	defaultMaxPositions                = 1026
	defaultLayerNormEps                = 1e-5
)

// esm2Heads is the attention head count of the published ESM-2 sizes, by hidden size (fair-esm
// checkpoints whose cfg cannot be read, and a bare .safetensors file without config.json).
var esm2Heads = map[int]int{320: 20, 480: 20, 640: 20, 1280: 20, 2560: 40, 5120: 40}

// Checkpoint formats.
const (
	FormatSafetensors = "safetensors"       // Hugging Face model.safetensors (one file or shards)
	FormatPyTorchBin  = "pytorch_model.bin" // Hugging Face torch.save state dict
	FormatFairESM     = "fair-esm"          // fair-esm .pt: {"model": state dict, "cfg": ...}
)

// Checkpoint is an opened ESM-2 checkpoint: its configuration and its weights by Hugging Face
// EsmModel name ("embeddings.word_embeddings.weight", "encoder.layer.3.attention.self.query.weight",
// "encoder.emb_layer_norm_after.bias", ...), whatever names the file used. Weights are read on
// demand by Tensor; Close releases the files.
type Checkpoint struct {
	Path   string
	Format string
	Config Config
	// ConfigFrom says where Config came from: "config.json", "checkpoint cfg" or
	// "tensor shapes" (fields the file did not say are inferred; Notes tells which).
	ConfigFrom string
	// Notes are things a caller may want to log (inferred fields, ignored tensors).
	Notes []string

	tensors map[string]*source
	closers []io.Closer
}

// source is where one weight lives.
type source struct {
	file, key string // file path and name in that file, for messages
	shape     []int64
	read      func() ([]float32, error)
}

// Tensor reads the weight of that (Hugging Face EsmModel) name as float32 values in row-major
// order, with its shape.
func (c *Checkpoint) Tensor(name string) ([]float32, []int64, error) {
	s := c.tensors[name]
	if s == nil {
		return nil, nil, fmt.Errorf("%w: %s: no tensor %s", ErrCheckpoint, c.Path, name)
	}
	v, err := s.read()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: tensor %s: %w", ErrCheckpoint, s.file, s.key, err)
	}
	if n := numel(s.shape); int64(len(v)) != n {
		return nil, nil, fmt.Errorf("%w: %s: tensor %s: %d values for shape %v", ErrCheckpoint, s.file, s.key, len(v), s.shape)
	}
	return v, s.shape, nil
}

// Close closes the checkpoint's files.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, cl := range c.closers {
		errs = append(errs, cl.Close())
	}
	c.closers = nil
	return errors.Join(errs...)
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Load opens an ESM-2 checkpoint: a Hugging Face directory (config.json with model.safetensors,
// sharded model.safetensors.index.json, or pytorch_model.bin), a .safetensors file (config.json
// beside it is used when present), a fair-esm .pt file, or a torch.save state dict (.bin, .pt,
// .pth). Hugging Face names may carry EsmForMaskedLM's "esm." prefix; lm_head, contact_head and
// pooler weights are ignored. It checks that every weight the graph needs is there with the shape
// the configuration implies, so a Checkpoint that loads builds.
func Load(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	c := &Checkpoint{Path: path, tensors: map[string]*source{}}
	if err := c.open(path, st.IsDir()); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Checkpoint) open(path string, dir bool) error {
	if dir {
		return c.openDir(path)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".safetensors":
		return c.openSafetensors([]string{path}, filepath.Join(filepath.Dir(path), "config.json"), false)
	case ".json":
		return fmt.Errorf("%w: %s: give the checkpoint's directory or weights file, not a JSON file", ErrCheckpoint, path)
	}
	var magic [2]byte
	if f, err := os.Open(path); err == nil {
		_, _ = io.ReadFull(f, magic[:])
		f.Close()
	}
	if string(magic[:]) == "PK" || magic[0] == 0x80 {
		return c.openTorch([]string{path}, filepath.Join(filepath.Dir(path), "config.json"), false)
	}
	return c.openSafetensors([]string{path}, filepath.Join(filepath.Dir(path), "config.json"), false)
}

func (c *Checkpoint) openDir(dir string) error {
	cfg := filepath.Join(dir, "config.json")
	if _, err := os.Stat(cfg); err != nil {
		return fmt.Errorf("%w: %s: no config.json (a Hugging Face checkpoint directory has config.json and "+
			"model.safetensors or pytorch_model.bin; give a .pt or .safetensors file directly otherwise)", ErrCheckpoint, dir)
	}
	try := []struct {
		file  string
		index bool
		open  func([]string, string, bool) error
	}{
		{"model.safetensors", false, c.openSafetensors},
		{"model.safetensors.index.json", true, c.openSafetensors},
		{"pytorch_model.bin", false, c.openTorch},
		{"pytorch_model.bin.index.json", true, c.openTorch},
	}
	for _, t := range try {
		p := filepath.Join(dir, t.file)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		files := []string{p}
		if t.index {
			var err error
			if files, err = shards(p); err != nil {
				return err
			}
		}
		return t.open(files, cfg, true)
	}
	return fmt.Errorf("%w: %s: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "+
		"pytorch_model.bin.index.json", ErrCheckpoint, dir)
}

// shards lists the files of a sharded checkpoint's index (weight_map values), in first-use order.
func shards(index string) ([]string, error) {
	data, err := os.ReadFile(index)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCheckpoint, index, err)
	}
	var files []string
	for _, f := range idx.WeightMap {
		if f == "" || filepath.IsAbs(f) || strings.Contains(f, "..") {
			return nil, fmt.Errorf("%w: %s: shard name %q", ErrCheckpoint, index, f)
		}
		p := filepath.Join(filepath.Dir(index), f)
		if !slices.Contains(files, p) {
			files = append(files, p)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: %s: empty weight_map", ErrCheckpoint, index)
	}
	slices.Sort(files)
	return files, nil
}

func (c *Checkpoint) openSafetensors(files []string, configPath string, needConfig bool) error {
	c.Format = FormatSafetensors
	for _, p := range files {
		f, err := safetensors.Open(p)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCheckpoint, err)
		}
		c.closers = append(c.closers, f)
		for _, t := range f.Tensors() {
			name := t.Name
			if err := c.add(p, name, t.Shape, func() ([]float32, error) { return f.Float32(name) }); err != nil {
				return err
			}
		}
	}
	return c.configure(configPath, needConfig, nil)
}

func (c *Checkpoint) openTorch(files []string, configPath string, needConfig bool) error {
	c.Format = FormatPyTorchBin
	var root any
	for _, p := range files {
		f, err := torchpt.Open(p)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCheckpoint, err)
		}
		c.closers = append(c.closers, f)
		sd, err := f.StateDict()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCheckpoint, err)
		}
		if _, ok := torchpt.Lookup(f.Root, "cfg"); ok {
			c.Format, root = FormatFairESM, f.Root
		}
		keys := make([]string, 0, len(sd))
		for k := range sd {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			t := sd[k]
			if err := c.add(p, k, t.Shape, t.Float32); err != nil {
				return err
			}
		}
	}
	if c.Format == FormatFairESM || c.fairESMNames() {
		c.Format = FormatFairESM
		return c.configure("", false, root)
	}
	return c.configure(configPath, needConfig, nil)
}

// fairESMNames says whether the weights were named fair-esm style (set by add).
func (c *Checkpoint) fairESMNames() bool { return slices.Contains(c.Notes, noteFairESMNames) }

const noteFairESMNames = "weights named fair-esm style (layers.N.self_attn.*)"

// add records one tensor of a file under its canonical name (or ignores it).
func (c *Checkpoint) add(file, key string, shape []int64, read func() ([]float32, error)) error {
	name, fair, err := canonical(key)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnsupported, file, err)
	}
	if name == "" {
		return nil
	}
	if fair && !c.fairESMNames() {
		c.Notes = append(c.Notes, noteFairESMNames)
	}
	if old := c.tensors[name]; old != nil {
		switch {
		case strings.HasSuffix(key, "lm_head.decoder.weight"):
			return nil // the real embedding wins over the tied decoder copy
		case !strings.HasSuffix(old.key, "lm_head.decoder.weight"):
			return fmt.Errorf("%w: %s: tensors %s and %s are both %s", ErrCheckpoint, file, old.key, key, name)
		}
	}
	c.tensors[name] = &source{file: file, key: key, shape: shape, read: read}
	return nil
}

// Canonical (Hugging Face EsmModel) weight names.
const (
	nameEmbed   = "embeddings.word_embeddings.weight"
	nameFinalLN = "encoder.emb_layer_norm_after"
)

// Layer modules, Hugging Face name → fair-esm name (tools/export_esm2.py FAIRESM_LAYER).
var fairESMLayer = [][2]string{
	{"attention.self.query", "self_attn.q_proj"},
	{"attention.self.key", "self_attn.k_proj"},
	{"attention.self.value", "self_attn.v_proj"},
	{"attention.output.dense", "self_attn.out_proj"},
	{"attention.LayerNorm", "self_attn_layer_norm"},
	{"intermediate.dense", "fc1"},
	{"output.dense", "fc2"},
	{"LayerNorm", "final_layer_norm"},
}

// invFreqName is layer i's rotary buffer (Hugging Face's name; fair-esm's rot_emb.inv_freq).
func invFreqName(i int) string { return layerName(i, "attention.self.rotary_embeddings", "inv_freq") }

func layerName(i int, module, param string) string {
	return "encoder.layer." + strconv.Itoa(i) + "." + module + "." + param
}

// canonical maps a checkpoint key to its Hugging Face EsmModel name: "" for weights the graph
// does not use (heads, buffers); fair is set for fair-esm names; an error for weights that mark
// a model this package does not build (ESM-1b's learned positions, an embedding LayerNorm).
func canonical(key string) (name string, fair bool, err error) {
	k := strings.TrimPrefix(key, "esm.")
	switch {
	case k == nameEmbed, strings.HasPrefix(k, "encoder.layer."), strings.HasPrefix(k, nameFinalLN+"."):
		// LayerNorm parameters under their old names, gamma and beta: transformers 5's
		// save_pretrained writes EsmModel's that way (seen with 5.17.0), and loads either.
		if m, ok := strings.CutSuffix(k, ".gamma"); ok && strings.HasSuffix(m, "LayerNorm") || ok && m == nameFinalLN {
			return m + ".weight", false, nil
		}
		if m, ok := strings.CutSuffix(k, ".beta"); ok && strings.HasSuffix(m, "LayerNorm") || ok && m == nameFinalLN {
			return m + ".bias", false, nil
		}
		return k, false, nil
	case k == "lm_head.decoder.weight": // tied to the embedding; used only where that is missing
		return nameEmbed, false, nil
	case strings.HasPrefix(k, "embeddings.position_embeddings."):
		return "", false, fmt.Errorf("%s: learned position embeddings (ESM-1b style); only rotary ESM-2 is supported", key)
	case strings.HasPrefix(k, "embeddings."), strings.HasPrefix(k, "lm_head."), strings.HasPrefix(k, "contact_head."),
		strings.HasPrefix(k, "pooler."):
		return "", false, nil
	}
	// fair-esm, whose loader strips "encoder.sentence_encoder." or "encoder.".
	if s, ok := strings.CutPrefix(k, "encoder.sentence_encoder."); ok {
		k = s
	} else {
		k = strings.TrimPrefix(k, "encoder.")
	}
	switch {
	case k == "embed_tokens.weight":
		return nameEmbed, true, nil
	case k == "emb_layer_norm_after.weight" || k == "emb_layer_norm_after.bias":
		return "encoder." + k, true, nil
	case strings.HasPrefix(k, "embed_positions."):
		return "", true, fmt.Errorf("%s: learned position embeddings (ESM-1b style); only rotary ESM-2 is supported", key)
	case strings.HasPrefix(k, "emb_layer_norm_before."):
		return "", true, fmt.Errorf("%s: an embedding LayerNorm (ESM-1b style); only ESM-2 is supported", key)
	case strings.HasPrefix(k, "layers."):
		idx, rest, ok := strings.Cut(strings.TrimPrefix(k, "layers."), ".")
		i, err := strconv.Atoi(idx)
		if !ok || err != nil || i < 0 {
			return "", true, nil
		}
		if rest == "self_attn.rot_emb.inv_freq" {
			return invFreqName(i), true, nil
		}
		dot := strings.LastIndexByte(rest, '.')
		if dot < 0 {
			return "", true, nil
		}
		for _, m := range fairESMLayer {
			if rest[:dot] == m[1] {
				return layerName(i, m[0], rest[dot+1:]), true, nil
			}
		}
	}
	return "", false, nil
}

// hfConfig is config.json with presence: nil fields take EsmConfig's defaults.
type hfConfig struct {
	ModelType             *string  `json:"model_type"`
	HiddenSize            *int     `json:"hidden_size"`
	NumAttentionHeads     *int     `json:"num_attention_heads"`
	NumHiddenLayers       *int     `json:"num_hidden_layers"`
	IntermediateSize      *int     `json:"intermediate_size"`
	LayerNormEps          *float64 `json:"layer_norm_eps"`
	MaxPositionEmbeddings *int     `json:"max_position_embeddings"`
	PositionEmbeddingType *string  `json:"position_embedding_type"`
	EmbLayerNormBefore    *bool    `json:"emb_layer_norm_before"`
	TokenDropout          *bool    `json:"token_dropout"`
	MaskTokenID           *int     `json:"mask_token_id"`
	HiddenAct             *string  `json:"hidden_act"`
	VocabSize             *int     `json:"vocab_size"`
}

func setIf[T any](dst, src *T) {
	if src != nil {
		*dst = *src
	}
}

func readHFConfig(path string) (Config, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, nil, fmt.Errorf("%w: %v", ErrCheckpoint, err)
	}
	var h hfConfig
	if err := json.Unmarshal(data, &h); err != nil {
		return Config{}, nil, fmt.Errorf("%w: %s: %v", ErrCheckpoint, path, err)
	}
	if h.ModelType != nil && *h.ModelType != "esm" {
		return Config{}, nil, fmt.Errorf("%w: %s: model_type %q (want esm)", ErrUnsupported, path, *h.ModelType)
	}
	var missing []string
	req := func(p *int, name string) int {
		if p == nil {
			missing = append(missing, name)
			return 0
		}
		return *p
	}
	// EsmConfig's defaults for the rest (transformers' configuration_esm.py).
	c := Config{
		HiddenSize: req(h.HiddenSize, "hidden_size"), NumAttentionHeads: req(h.NumAttentionHeads, "num_attention_heads"),
		NumHiddenLayers: req(h.NumHiddenLayers, "num_hidden_layers"), IntermediateSize: req(h.IntermediateSize, "intermediate_size"),
		LayerNormEps: 1e-12, MaxPositionEmbeddings: 1026, PositionEmbeddingType: "absolute", HiddenAct: "gelu", MaskTokenID: maskID,
	}
	if len(missing) > 0 {
		return Config{}, nil, fmt.Errorf("%w: %s: no %s", ErrCheckpoint, path, strings.Join(missing, ", "))
	}
	var notes []string
	setIf(&c.LayerNormEps, h.LayerNormEps)
	setIf(&c.MaxPositionEmbeddings, h.MaxPositionEmbeddings)
	setIf(&c.PositionEmbeddingType, h.PositionEmbeddingType)
	setIf(&c.EmbLayerNormBefore, h.EmbLayerNormBefore)
	setIf(&c.TokenDropout, h.TokenDropout)
	setIf(&c.HiddenAct, h.HiddenAct)
	setIf(&c.VocabSize, h.VocabSize)
	if h.MaskTokenID != nil {
		c.MaskTokenID = *h.MaskTokenID
	} else if c.TokenDropout {
		notes = append(notes, fmt.Sprintf("config.json has no mask_token_id: using the ESM alphabet's <mask> (%d)", maskID))
	}
	return c, notes, nil
}

// configure sets Config from config.json (configPath, when it exists or needConfig), else from a
// fair-esm root's cfg, else from the tensor shapes, and checks the weights against it.
func (c *Checkpoint) configure(configPath string, needConfig bool, root any) error {
	if configPath != "" {
		if _, err := os.Stat(configPath); err == nil || needConfig {
			cfg, notes, err := readHFConfig(configPath)
			if err != nil {
				return err
			}
			c.Config, c.ConfigFrom = cfg, "config.json"
			c.Notes = append(c.Notes, notes...)
			if c.Config.VocabSize == 0 {
				if s := c.tensors[nameEmbed]; s != nil && len(s.shape) == 2 {
					c.Config.VocabSize = int(s.shape[0])
				}
			}
			return c.check()
		}
	}
	inferred, notes, err := c.infer()
	if err != nil {
		return err
	}
	c.Config, c.ConfigFrom = inferred, "tensor shapes"
	if root != nil {
		var got []string
		c.Config, got = fairESMConfig(root, inferred)
		if len(got) > 0 {
			c.ConfigFrom = "checkpoint cfg"
			c.Notes = append(c.Notes, "from the checkpoint's cfg.model: "+strings.Join(got, ", "))
		} else {
			c.Notes = append(c.Notes, "the checkpoint's cfg could not be read: sizes inferred from the tensors")
		}
		if slices.Contains(got, "encoder_attention_heads") {
			notes = slices.DeleteFunc(notes, func(s string) bool { return strings.HasPrefix(s, "attention heads") })
		}
	}
	c.Notes = append(c.Notes, notes...)
	return c.check()
}

// infer reads the architecture off the tensor shapes, with fair-esm's ESM-2 defaults for the
// rest (rotary, LayerNorm eps 1e-5, 1026 positions, token dropout, <mask> 32). The head count
// comes from a rotary inv_freq buffer (head size / 2 values) where there is one, else from the
// published sizes' table.
func (c *Checkpoint) infer() (Config, []string, error) {
	cfg := Config{LayerNormEps: defaultLayerNormEps, MaxPositionEmbeddings: defaultMaxPositions, PositionEmbeddingType: "rotary",
		TokenDropout: true, MaskTokenID: maskID, HiddenAct: "gelu"}
	emb := c.tensors[nameEmbed]
	if emb == nil || len(emb.shape) != 2 {
		return cfg, nil, fmt.Errorf("%w: %s: no 2-D token embedding (%s, or fair-esm's embed_tokens.weight): not an ESM-2 checkpoint?",
			ErrCheckpoint, c.Path, nameEmbed)
	}
	cfg.VocabSize, cfg.HiddenSize = int(emb.shape[0]), int(emb.shape[1])
	for name := range c.tensors {
		if rest, ok := strings.CutPrefix(name, "encoder.layer."); ok {
			idx, _, _ := strings.Cut(rest, ".")
			if i, err := strconv.Atoi(idx); err == nil && i < 1<<16 {
				cfg.NumHiddenLayers = max(cfg.NumHiddenLayers, i+1)
			}
		}
	}
	if cfg.NumHiddenLayers == 0 {
		return cfg, nil, fmt.Errorf("%w: %s: no transformer layers", ErrCheckpoint, c.Path)
	}
	if fc1 := c.tensors[layerName(0, "intermediate.dense", "weight")]; fc1 != nil && len(fc1.shape) == 2 {
		cfg.IntermediateSize = int(fc1.shape[0])
	}
	var notes []string
	if inv := c.tensors[invFreqName(0)]; inv != nil && len(inv.shape) == 1 && inv.shape[0] > 0 &&
		cfg.HiddenSize%int(2*inv.shape[0]) == 0 {
		cfg.NumAttentionHeads = cfg.HiddenSize / int(2*inv.shape[0])
		notes = append(notes, fmt.Sprintf("attention heads %d from the rotary inv_freq buffer (head size %d)", cfg.NumAttentionHeads, 2*inv.shape[0]))
	} else if h, ok := esm2Heads[cfg.HiddenSize]; ok {
		cfg.NumAttentionHeads = h
		notes = append(notes, fmt.Sprintf("attention heads %d from the ESM-2 table for hidden size %d", h, cfg.HiddenSize))
	}
	return cfg, notes, nil
}

// fairESMConfig overrides cfg with what root's cfg.model says (a dict, argparse.Namespace or
// omegaconf config); it returns the fields it read.
func fairESMConfig(root any, cfg Config) (Config, []string) {
	var got []string
	num := func(field string, dst *int) {
		v, ok := torchpt.Lookup(root, "cfg", "model", field)
		if n, isInt := v.(int64); ok && isInt && n > 0 && n < 1<<30 {
			*dst = int(n)
			got = append(got, field)
		}
	}
	num("encoder_layers", &cfg.NumHiddenLayers)
	num("encoder_embed_dim", &cfg.HiddenSize)
	num("encoder_ffn_embed_dim", &cfg.IntermediateSize)
	num("encoder_attention_heads", &cfg.NumAttentionHeads)
	if v, ok := torchpt.Lookup(root, "cfg", "model", "token_dropout"); ok {
		if b, isBool := v.(bool); isBool {
			cfg.TokenDropout = b
			got = append(got, "token_dropout")
		}
	}
	return cfg, got
}

// check validates the configuration (ESM-2 as the fused graph implements it: tools/esm2_graph.py
// check_supported) and every weight's presence and shape.
func (c *Checkpoint) check() error {
	cfg := c.Config
	var bad []string
	if cfg.PositionEmbeddingType != "rotary" {
		bad = append(bad, fmt.Sprintf("position_embedding_type=%q (want rotary)", cfg.PositionEmbeddingType))
	}
	if cfg.EmbLayerNormBefore {
		bad = append(bad, "emb_layer_norm_before=true")
	}
	if cfg.HiddenAct != "gelu" {
		bad = append(bad, fmt.Sprintf("hidden_act=%q (want gelu)", cfg.HiddenAct))
	}
	if cfg.VocabSize < alphabetSize {
		bad = append(bad, fmt.Sprintf("vocab_size=%d (the ESM alphabet has %d tokens)", cfg.VocabSize, alphabetSize))
	}
	if cfg.TokenDropout && (cfg.MaskTokenID < 0 || cfg.MaskTokenID >= cfg.VocabSize) {
		bad = append(bad, fmt.Sprintf("mask_token_id=%d outside the vocabulary", cfg.MaskTokenID))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s: the fused graph supports ESM-2 (rotary, no embedding LayerNorm, erf GELU) only: %s",
			ErrUnsupported, c.Path, strings.Join(bad, ", "))
	}
	switch {
	case cfg.HiddenSize <= 0 || cfg.NumHiddenLayers <= 0 || cfg.IntermediateSize <= 0:
		return fmt.Errorf("%w: %s: hidden_size %d, num_hidden_layers %d, intermediate_size %d", ErrCheckpoint, c.Path,
			cfg.HiddenSize, cfg.NumHiddenLayers, cfg.IntermediateSize)
	case cfg.NumAttentionHeads <= 0:
		return fmt.Errorf("%w: %s: the number of attention heads is unknown (hidden size %d is not a published ESM-2 size "+
			"and the checkpoint has no readable cfg or rotary inv_freq); use a Hugging Face directory with config.json",
			ErrCheckpoint, c.Path, cfg.HiddenSize)
	case cfg.HiddenSize%cfg.NumAttentionHeads != 0 || (cfg.HiddenSize/cfg.NumAttentionHeads)%2 != 0:
		return fmt.Errorf("%w: %s: hidden_size %d is not an even head size times num_attention_heads %d", ErrUnsupported, c.Path,
			cfg.HiddenSize, cfg.NumAttentionHeads)
	case !(cfg.LayerNormEps > 0 && cfg.LayerNormEps < 1):
		return fmt.Errorf("%w: %s: layer_norm_eps %g", ErrCheckpoint, c.Path, cfg.LayerNormEps)
	case cfg.MaxPositionEmbeddings < 3:
		return fmt.Errorf("%w: %s: max_position_embeddings %d", ErrCheckpoint, c.Path, cfg.MaxPositionEmbeddings)
	}
	for _, w := range expectedShapes(cfg) {
		s := c.tensors[w.name]
		if s == nil {
			return fmt.Errorf("%w: %s: missing tensor %s of shape %v%s", ErrCheckpoint, c.Path, w.name, w.shape, c.styleName(w.name))
		}
		if !slices.Equal(s.shape, w.shape) {
			return fmt.Errorf("%w: %s: tensor %s has shape %v, want %v (config from %s: hidden %d, ffn %d, vocab %d)",
				ErrCheckpoint, s.file, s.key, s.shape, w.shape, c.ConfigFrom, cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize)
		}
	}
	hd := int64(cfg.HiddenSize / cfg.NumAttentionHeads)
	for i := range cfg.NumHiddenLayers {
		if s := c.tensors[invFreqName(i)]; s != nil && !slices.Equal(s.shape, []int64{hd / 2}) {
			return fmt.Errorf("%w: %s: tensor %s has shape %v, want [%d] (head size %d: %d heads of hidden size %d)", ErrCheckpoint,
				s.file, s.key, s.shape, hd/2, hd, cfg.NumAttentionHeads, cfg.HiddenSize)
		}
	}
	if s := c.tensors[layerName(cfg.NumHiddenLayers, "attention.self.query", "weight")]; s != nil {
		return fmt.Errorf("%w: %s: tensor %s beyond num_hidden_layers %d", ErrCheckpoint, s.file, s.key, cfg.NumHiddenLayers)
	}
	return nil
}

// styleName is how a fair-esm file spells a canonical name, for messages ("" for other files).
func (c *Checkpoint) styleName(name string) string {
	if c.Format != FormatFairESM {
		return ""
	}
	fe := ""
	switch {
	case name == nameEmbed:
		fe = "embed_tokens.weight"
	case strings.HasPrefix(name, nameFinalLN):
		fe = strings.TrimPrefix(name, "encoder.")
	default:
		idx, rest, _ := strings.Cut(strings.TrimPrefix(name, "encoder.layer."), ".")
		if dot := strings.LastIndexByte(rest, '.'); dot >= 0 {
			for _, m := range fairESMLayer {
				if rest[:dot] == m[0] {
					fe = "layers." + idx + "." + m[1] + rest[dot:]
				}
			}
		}
	}
	if fe == "" {
		return ""
	}
	return " (fair-esm: encoder.sentence_encoder." + fe + ")"
}

type wantShape struct {
	name  string
	shape []int64
}

// expectedShapes lists every weight the graph reads, with its shape ([out, in] for linear layers).
func expectedShapes(cfg Config) []wantShape {
	d, f := int64(cfg.HiddenSize), int64(cfg.IntermediateSize)
	out := []wantShape{{nameEmbed, []int64{int64(cfg.VocabSize), d}}}
	for i := range cfg.NumHiddenLayers {
		for _, m := range []struct {
			module  string
			in, out int64
		}{
			{"attention.self.query", d, d}, {"attention.self.key", d, d}, {"attention.self.value", d, d},
			{"attention.output.dense", d, d}, {"intermediate.dense", d, f}, {"output.dense", f, d},
		} {
			out = append(out, wantShape{layerName(i, m.module, "weight"), []int64{m.out, m.in}},
				wantShape{layerName(i, m.module, "bias"), []int64{m.out}})
		}
		for _, ln := range []string{"attention.LayerNorm", "LayerNorm"} {
			out = append(out, wantShape{layerName(i, ln, "weight"), []int64{d}}, wantShape{layerName(i, ln, "bias"), []int64{d}})
		}
	}
	return append(out, wantShape{nameFinalLN + ".weight", []int64{d}}, wantShape{nameFinalLN + ".bias", []int64{d}})
}
