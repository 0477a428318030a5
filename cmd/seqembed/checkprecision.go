package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/precision"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/pipeline"
)

// `seqembed check-precision`: flags and printing; the embedding and comparing is internal/precision.

// precisionFlags are the worker flags check-precision takes: how the two models run (--model is
// its own: required, no default).
var precisionFlags = []string{"device", "threads", "max-batch-tokens", "max-batch-rows", "bucket-step",
	"cuda-options", "cuda-graphs", "graph-copy-overlap", "graph-sessions", "inflight"}

const checkPrecisionSynopsis = `usage: seqembed check-precision --model DIR --against DIR|GOLDEN.json [--fasta F] [flags]

Compares the embeddings of --model (the candidate: a float16 or FP8 export, say) with those of
--against (the reference: the float32 model, or a golden file of PyTorch vectors that
tools/export_esm2.py --golden-out writes) on the same sequences: the cosine of each sequence's two
vectors, and how many of its 10 nearest neighbours by cosine the two sets share. The models run
one after the other on --device, without NATS. Against a model, --fasta gives the sequences;
against a golden file, its own sequences are embedded (no --fasta).
Exit codes: 0 pass, 1 a threshold missed (FAIL) or the check could not run, 2 usage error.`

// precisionJSON is the --json file.
type precisionJSON struct {
	Model      precisionSide    `json:"model"`
	Against    precisionSide    `json:"against"`
	FASTA      string           `json:"fasta,omitempty"`
	Device     string           `json:"device"`
	MinCosine  float64          `json:"min_cosine"`
	MinOverlap float64          `json:"min_overlap"`
	Pass       bool             `json:"pass"`
	Failure    string           `json:"failure,omitempty"`
	Report     precision.Report `json:"report"`
}

// precisionSide is one set's origin.
type precisionSide struct {
	Path  string `json:"path"`
	Name  string `json:"name"`
	DType string `json:"dtype"`
}

func runCheckPrecisionCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("check-precision", flag.ContinueOnError)
	var cfg pipeline.Config
	registerWorkerFlags(fs, &cfg, precisionFlags...)
	fs.StringVar(&cfg.ModelDir, "model", "", "the candidate: a model directory (model.onnx, model.json) or hf:ORG/NAME[@REV] (required)")
	against := fs.String("against", "", "the reference: a model directory, hf:ORG/NAME[@REV], or a golden .json file of PyTorch embeddings (tools/export_esm2.py --golden-out) (required)")
	fastaPath := fs.String("fasta", "", "FASTA file to embed with both models (plain, .gz, .xz, .zst or .bz2); required against a model, not allowed against a golden file")
	minCosine := fs.Float64("min-cosine", 0.999, "pass only if every sequence's cosine between the two models is at least this")
	minOverlap := fs.Float64("min-overlap", 0.95, "pass only if the mean overlap of the sequences' top-10 neighbours (by cosine) is at least this")
	jsonOut := fs.String("json", "", "also write the report as JSON to this `FILE`")
	setUsage(fs, checkPrecisionSynopsis)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	golden := isGoldenFile(*against)
	switch {
	case cfg.ModelDir == "":
		return cli.Usagef("--model DIR is required (the model to check)")
	case *against == "":
		return cli.Usagef("--against DIR|GOLDEN.json is required (the reference)")
	case golden && *fastaPath != "":
		return cli.Usagef("--fasta with a golden --against: the golden file's own sequences are embedded; leave --fasta out")
	case !golden && *fastaPath == "":
		return cli.Usagef("--fasta FILE is required against a model (only a golden .json --against brings its own sequences)")
	case math.IsNaN(*minCosine) || math.IsNaN(*minOverlap):
		return cli.Usagef("--min-cosine and --min-overlap must be numbers")
	}
	if err := cfg.Validate(); err != nil {
		return &cli.UsageError{Err: err}
	}
	if *jsonOut != "" {
		if fi, err := os.Stat(filepath.Dir(*jsonOut)); err != nil || !fi.IsDir() {
			return fmt.Errorf("--json %s: its directory %s does not exist", *jsonOut, filepath.Dir(*jsonOut))
		}
	}
	refCfg := cfg
	refCfg.ModelDir = *against

	// The reference's input first when it is a file: a bad golden file fails before any model runs.
	var g *precision.Golden
	if golden {
		var err error
		if g, err = precision.LoadGolden(*against); err != nil {
			return err
		}
	}
	if err := resolveHFModel(ctx, &cfg, os.Stderr); err != nil {
		return err
	}
	embed := func(c pipeline.Config) (*precision.Embeddings, error) {
		if g != nil {
			fmt.Fprintf(os.Stderr, "check-precision: embedding the %d sequences of %s with %s on %s\n", len(g.Records), *against, c.ModelDir, c.Device)
			return precision.EmbedGolden(ctx, c, g)
		}
		fmt.Fprintf(os.Stderr, "check-precision: embedding %s with %s on %s\n", *fastaPath, c.ModelDir, c.Device)
		return precision.Embed(ctx, c, *fastaPath)
	}
	cand, err := embed(cfg)
	if err != nil {
		return err
	}
	var ref *precision.Embeddings
	if golden {
		ref = g.Embeddings()
	} else {
		if err := resolveHFModel(ctx, &refCfg, os.Stderr); err != nil {
			return err
		}
		if ref, err = embed(refCfg); err != nil {
			return err
		}
	}
	rep, err := precision.Compare(cand, ref)
	if err != nil {
		return err
	}
	verdict := rep.Check(*minCosine, *minOverlap)
	printPrecision(os.Stdout, rep, cand, ref, *minCosine, *minOverlap, verdict)
	if *jsonOut != "" {
		out := precisionJSON{Model: precisionSide{Path: cfg.ModelDir, Name: cand.Model, DType: cand.DType},
			Against: precisionSide{Path: refCfg.ModelDir, Name: ref.Model, DType: ref.DType},
			FASTA:   *fastaPath, Device: cfg.Device, MinCosine: *minCosine, MinOverlap: *minOverlap, Pass: verdict == nil, Report: rep}
		if verdict != nil {
			out.Failure = verdict.Error()
		}
		data, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return fmt.Errorf("--json %s: %w", *jsonOut, err)
		}
		if err := os.WriteFile(*jsonOut, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	return verdict
}

// isGoldenFile says whether --against names a golden file (a .json path that is no directory)
// rather than a model.
func isGoldenFile(against string) bool {
	if strings.HasPrefix(against, modelhub.Scheme) {
		return false
	}
	if fi, err := os.Stat(against); err == nil && fi.IsDir() {
		return false
	}
	return strings.EqualFold(filepath.Ext(against), ".json")
}

// printPrecision is the human report: the sets, the cosines, the neighbour overlap, the worst
// sequences and the verdict (nil: PASS).
func printPrecision(w io.Writer, rep precision.Report, cand, ref *precision.Embeddings, minCosine, minOverlap float64, verdict error) {
	fmt.Fprintf(w, "check-precision: %d sequences, model %s (%s) against %s (%s)\n", rep.N, cand.Model, cand.DType, ref.Model, ref.DType)
	fmt.Fprintf(w, "cosine   min %s  p1 %s  median %s  mean %s\n", precision.FormatCosine(rep.MinCosine), precision.FormatCosine(rep.P1Cosine),
		precision.FormatCosine(rep.MedianCosine), precision.FormatCosine(rep.MeanCosine))
	if rep.K > 0 {
		fmt.Fprintf(w, "top-%d neighbour overlap  mean %.3f  min %.3f (%s)\n", rep.K, rep.MeanOverlap, rep.MinOverlap, rep.MinOverlapID)
	} else {
		fmt.Fprintf(w, "top-%d neighbour overlap  n/a (one sequence)\n", precision.Neighbours)
	}
	worst := make([]string, len(rep.Worst))
	for i, s := range rep.Worst {
		worst[i] = s.ID + " " + precision.FormatCosine(s.Cosine)
	}
	fmt.Fprintf(w, "worst: %s\n", strings.Join(worst, ", "))
	if n := len(rep.Degenerate); n > 0 {
		fmt.Fprintf(w, "all-zero or non-finite vectors (cosine counted 0): %d: %s\n", n, strings.Join(rep.Degenerate[:min(n, 5)], ", "))
	}
	if verdict != nil {
		fmt.Fprintf(w, "FAIL: %s\n", strings.TrimPrefix(verdict.Error(), precision.ErrThreshold.Error()+": "))
		return
	}
	fmt.Fprintf(w, "PASS (min cosine >= %g, mean overlap >= %g)\n", minCosine, minOverlap)
}
