package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/pipeline"
)

const modelBuildSynopsis = `usage: seqembed model build --from CHECKPOINT --out DIR [flags]

Writes the fused ESM-2 ONNX graph (model.onnx, model.json) that the worker runs, from a checkpoint,
in Go: no Python. CHECKPOINT is a Hugging Face directory (config.json + model.safetensors or
pytorch_model.bin), a .safetensors, .bin or fair-esm .pt file, or hf:ORG/NAME[@REVISION], pulled
first (seqembed model pull). The worker, run and bench take --model hf:ORG/NAME themselves: they
pull and build into the cache on first use.`

// modelBuild is `seqembed model build`.
func modelBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model build", flag.ContinueOnError)
	from := fs.String("from", "", "checkpoint: a Hugging Face directory, a .safetensors/.bin/.pt file, or hf:ORG/NAME[@REV] (required)")
	out := fs.String("out", "", "model directory to write (required)")
	fused := fs.String("fused", esm2graph.AttentionAuto, "attention form: auto (mha up to hidden size 480 on CUDA, packed above; mha on the CPU), mha or packed (CUDA only)")
	device := fs.String("device", esm2graph.DeviceCUDA, "what the graph is for: cuda or cpu")
	fp16 := fs.Bool("fp16", false, "float16 weights and activations (the pooled output stays float32); for CUDA")
	customOps := fs.Bool("custom-ops", false, "use seqembed's BiasRotary CUDA op (needs --fp16 and libseqembed_ops.so in --out or $SEQEMBED_CUSTOM_OPS; without it the graph uses ONNX Runtime's ops and says what that costs)")
	fusedGELU := fs.Bool("fused-gelu", false, "with --custom-ops: each FFN's first projection as seqembed's Fp16Linear, bias and GELU in cuBLASLt's epilogue; its GELU is the tanh approximation, not ESM-2's erf (README: Models)")
	fp16Linear := fs.Bool("fp16-linear", false, "with --custom-ops: every other projection (q, k, v, attention output, fc2) as seqembed's Fp16Linear (cuBLASLt) instead of ONNX Runtime's MatMul")
	precision := fs.String("precision", esm2graph.PrecisionFP16, "projections: fp16, or fp8 (with --fp16 --custom-ops: FP8 GEMMs on E4M3 weights quantised here, per-output-channel scales; needs a GPU with FP8 tensor cores; less accurate: check it with seqembed check-precision)")
	fp8Projections := fs.String("fp8-projections", "", "with --precision fp8: all (default: the six of every block) or ffn (only fc1 and fc2)")
	fusedLNQuant := fs.Bool("fused-ln-quant", false, "with --precision fp8: each residual add + LayerNorm and the next FP8 GEMM's activation quantisation as one op (SkipLayerNormE4M3)")
	cudnnAttention := fs.Bool("cudnn-attention", false, "with --custom-ops and --fused packed: attention as seqembed's RaggedAttention (cuDNN's SDPA); needs the ops library built with cuDNN (scripts/build-ops.sh)")
	name := fs.String("name", "", "model name in model.json, the one publish --model and the subjects use (default: the checkpoint's name)")
	maxLen := fs.Int("max-length", esm2graph.DefaultMaxLength, "longest sequence in residues")
	outputs := fs.String("outputs", "", "extra outputs, POOLING:LAYER,... with poolings mean, bos, per-residue and fair-esm layers (0 = embeddings, -1 = last), e.g. mean:-1,bos:-1,per-residue:-1; the last layer's mean (column embedding) is always there (default: only it)")
	residuesFP16 := fs.Bool("residues-fp16", false, "per-residue outputs in float16 (half the bytes; default float32)")
	force := fs.Bool("force", false, "replace a model already in --out")
	cache := fs.String("cache", "", "hub cache for hf: checkpoints (default: $SEQEMBED_CACHE, else seqembed/hub in the user cache directory)")
	setUsage(fs, modelBuildSynopsis)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *from == "":
		return cli.Usagef("--from CHECKPOINT is required")
	case *out == "":
		return cli.Usagef("--out DIR is required")
	}
	if _, err := os.Stat(filepath.Join(*out, "model.json")); err == nil && !*force {
		return fmt.Errorf("%s already holds a model (model.json): --force replaces it", *out)
	}
	src := *from
	if strings.HasPrefix(src, modelhub.Scheme) {
		c, err := modelClient(*cache, stderr, false)
		if err != nil {
			return err
		}
		s, err := c.Resolve(ctx, src)
		if err != nil {
			return err
		}
		src = s.Dir
		if *name == "" {
			*name = filepath.Base(s.Repo)
		}
	}
	opts := esm2graph.Options{Attention: *fused, Device: *device, FP16: *fp16, CustomOps: *customOps, Name: *name, MaxLength: *maxLen, Source: *from,
		ResiduesFP16: *residuesFP16, FusedGELU: *fusedGELU, FP16Linear: *fp16Linear, CudnnAttention: *cudnnAttention,
		Precision: *precision, FP8Projections: *fp8Projections, FusedLNQuant: *fusedLNQuant}
	if *outputs != "" {
		outs, err := esm2graph.ParseOutputs(*outputs)
		if err != nil {
			return cli.Usagef("--outputs: %w", err)
		}
		opts.Outputs = outs
	}
	m, err := buildGraph(ctx, src, *out, opts, stderr)
	if errors.Is(err, esm2graph.ErrOption) {
		return &cli.UsageError{Err: err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "model: %s (%s, %s, dim %d, %d layers) -> %s\n", m.Name, m.Attention, m.DType, m.EmbeddingDim, m.NumLayers, *out)
	_, err = fmt.Fprintln(stdout, *out)
	return err
}

// buildGraph loads the checkpoint src and writes its fused graph into out with opts, logging on w
// what the checkpoint did not say and, when --custom-ops was asked for without its library, the
// fallback to ONNX Runtime's ops and what it costs; options that only the library runs
// (fastPathFlags) are refused without it (errNoCustomOps).
func buildGraph(ctx context.Context, src, out string, opts esm2graph.Options, w io.Writer) (esm2graph.Manifest, error) {
	ck, err := esm2graph.Load(src)
	if err != nil {
		return esm2graph.Manifest{}, err
	}
	defer ck.Close()
	for _, n := range ck.Notes {
		fmt.Fprintf(w, "model: %s: %s\n", src, n)
	}
	if n := ck.Config.NumHiddenLayers; len(opts.Outputs) > 0 && !slices.ContainsFunc(opts.Outputs, func(o esm2graph.Output) bool {
		return o.Pooling == esm2graph.PoolMean && (o.Layer == -1 || o.Layer == n)
	}) {
		// The last layer's mean is the embedding column every worker publishes.
		opts.Outputs = append([]esm2graph.Output{{Layer: -1, Pooling: esm2graph.PoolMean}}, opts.Outputs...)
	}
	if opts.CustomOps {
		if _, ok := esm2graph.LocateCustomOps(out); !ok {
			missing := esm2graph.CustomOpsLibrary + " is neither in " + out + " nor at $SEQEMBED_CUSTOM_OPS"
			// Flags that choose a graph only the library runs are refused rather than dropped: a
			// build that exits 0 with another graph is benchmarked as if it were the asked-for one
			// (0.79x of the fast graph at 650M, docs/perf.md 2026-12-04, thirteenth session).
			if f := fastPathFlags(opts); len(f) > 0 {
				return esm2graph.Manifest{}, fmt.Errorf("%w: %s; %s run only on it: build it first with "+
					"scripts/build-ops.sh %s (with cuDNN for --cudnn-attention), or leave them off for "+
					"ONNX Runtime's ops", errNoCustomOps, missing, strings.Join(f, ", "), filepath.Join(out, esm2graph.CustomOpsLibrary))
			}
			fmt.Fprintln(w, "model: "+esm2graph.CustomOpsFallback(missing))
			opts.CustomOps = false
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return esm2graph.Manifest{}, fmt.Errorf("model: %w", err)
	}
	return esm2graph.Build(ctx, ck, out, opts)
}

// fastPathFlags names the options set in o whose graph needs seqembed's custom-op library.
func fastPathFlags(o esm2graph.Options) []string {
	var f []string
	for _, c := range []struct {
		on   bool
		name string
	}{
		{o.FusedGELU, "--fused-gelu"}, {o.FP16Linear, "--fp16-linear"}, {o.CudnnAttention, "--cudnn-attention"},
		{o.Precision == esm2graph.PrecisionFP8, "--precision fp8"},
	} {
		if c.on {
			f = append(f, c.name)
		}
	}
	return f
}

// resolveHFModel turns --model hf:ORG/NAME[@REV] into a model directory: the checkpoint is pulled
// into the hub cache (once) and its graph built next to it (once per variant), for cfg.Device: on
// the CPU the mha graph in float32, on CUDA the --fused auto choice in float16 with seqembed's custom
// ops where their library is at $SEQEMBED_CUSTOM_OPS. Any other --model is left alone.
func resolveHFModel(ctx context.Context, cfg *pipeline.Config, w io.Writer) error {
	if !strings.HasPrefix(cfg.ModelDir, modelhub.Scheme) {
		return nil
	}
	c, err := modelClient("", w, false)
	if err != nil {
		return err
	}
	s, err := c.Resolve(ctx, cfg.ModelDir)
	if err != nil {
		return fmt.Errorf("--model %s: %w", cfg.ModelDir, err)
	}
	opts := esm2graph.Options{Attention: esm2graph.AttentionAuto, Device: esm2graph.DeviceCPU, Name: filepath.Base(s.Repo),
		Source: modelhub.Scheme + s.Repo + "@" + s.Commit}
	variant := "cpu-fp32"
	if cfg.Device != "cpu" {
		opts.Device, opts.FP16 = esm2graph.DeviceCUDA, true
		_, opts.CustomOps = esm2graph.LocateCustomOps("")
		variant = "cuda-fp16"
		if opts.CustomOps {
			variant += "-ops"
		}
	}
	dir := filepath.Join(filepath.Dir(c.CacheDir()), "graphs", strings.ReplaceAll(s.Repo, "/", "--"), s.Commit, variant)
	if _, err := os.Stat(filepath.Join(dir, "model.json")); err == nil {
		cfg.ModelDir = dir
		return nil
	}
	fmt.Fprintf(w, "model: building the %s graph of %s (commit %s) into %s\n", variant, s.Repo, s.Commit, dir)
	if _, err := buildGraph(ctx, s.Dir, dir, opts, w); err != nil {
		return fmt.Errorf("--model %s: %w", cfg.ModelDir, err)
	}
	cfg.ModelDir = dir
	return nil
}
