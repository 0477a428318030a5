package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/e2etest"
)

var goldenJSON = filepath.Join(e2etest.TinyModel, "golden.json")

// checkPrecision runs `seqembed check-precision ARGS --threads 2` as a child.
func checkPrecision(t *testing.T, args string) child {
	t.Helper()
	return runChild(t, "check-precision "+args+" --threads 2", nil)
}

// TestCheckPrecisionSelf: the tiny model against itself on the golden FASTA: cosine 1, overlap 1,
// PASS, exit 0, and the --json report says the same.
func TestCheckPrecisionSelf(t *testing.T) {
	e2etest.RequireORT(t)
	out := filepath.Join(t.TempDir(), "report.json")
	c := checkPrecision(t, "--model "+e2etest.TinyModel+" --against "+e2etest.TinyModel+" --fasta "+benchFASTA+" --json "+out)
	if c.code != cli.ExitOK {
		t.Fatalf("exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}
	for _, want := range []string{
		"check-precision: 20 sequences, model esm2-tiny (float32) against esm2-tiny (float32)\n",
		"cosine   min 1.000000  p1 1.000000  median 1.000000  mean 1.000000\n",
		"top-10 neighbour overlap  mean 1.000  min 1.000",
		"\nworst: ", "PASS (min cosine >= 0.999, mean overlap >= 0.95)\n",
	} {
		if !strings.Contains(c.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, c.stdout)
		}
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep precisionJSON
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Pass || rep.Report.N != 20 || rep.Report.MinCosine < 0.999999 || rep.Report.MinOverlap != 1 || rep.Report.K != 10 ||
		len(rep.Report.Worst) != 5 || rep.Model.Name != "esm2-tiny" || rep.FASTA != benchFASTA || rep.MinCosine != 0.999 {
		t.Errorf("--json report: %s", data)
	}
}

// TestCheckPrecisionGolden: the tiny model against its golden PyTorch file (its own sequences,
// no --fasta) passes at the golden tests' cosine, 0.99999 (gpurun TestGoldenParity).
func TestCheckPrecisionGolden(t *testing.T) {
	e2etest.RequireORT(t)
	c := checkPrecision(t, "--model "+e2etest.TinyModel+" --against "+goldenJSON+" --min-cosine 0.99999")
	if c.code != cli.ExitOK || !strings.Contains(c.stdout, "20 sequences, model esm2-tiny (float32) against golden.json (float32)") ||
		!strings.Contains(c.stdout, "PASS (min cosine >= 0.99999, mean overlap >= 0.95)") {
		t.Fatalf("exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}
}

// TestCheckPrecisionFails: a threshold no model meets, and a model of other weights, FAIL with
// exit 1 (the --json file still written, pass false); a float16 copy of the weights passes the
// defaults; an id twice in the FASTA is an error naming it.
func TestCheckPrecisionFails(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "r.json")
	c := checkPrecision(t, "--model "+e2etest.TinyModel+" --against "+goldenJSON+" --min-cosine 1.1 --json "+out)
	if c.code != cli.ExitFailed || !strings.Contains(c.stdout, "\nFAIL: min cosine") || !strings.Contains(c.stdout, "< 1.1") ||
		!strings.Contains(c.stderr, "below threshold") {
		t.Errorf("--min-cosine 1.1: exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}
	if data, err := os.ReadFile(out); err != nil || !strings.Contains(string(data), `"pass": false`) {
		t.Errorf("--json after a FAIL: %s, %v", data, err)
	}

	other := e2etest.RandomTinyModel(t, 1)
	c = checkPrecision(t, "--model "+other+" --against "+e2etest.TinyModel+" --fasta "+benchFASTA)
	if c.code != cli.ExitFailed || !strings.Contains(c.stdout, "model esm2-tiny-seed1 (float32) against esm2-tiny") ||
		!strings.Contains(c.stdout, "\nFAIL: min cosine") || strings.Contains(c.stdout, "PASS") {
		t.Errorf("another model: exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}

	fp16 := e2etest.FP16TinyModel(t)
	if c = checkPrecision(t, "--model "+fp16+" --against "+e2etest.TinyModel+" --fasta "+benchFASTA); c.code != cli.ExitOK ||
		!strings.Contains(c.stdout, "model esm2-tiny-fp16 (float16) against esm2-tiny (float32)") {
		t.Errorf("float16 copy: exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}

	dup := filepath.Join(dir, "dup.fa")
	if err := os.WriteFile(dup, []byte(">x\nMKTAYIAK\n>y\nMLLAVLY\n>x\nMKTAYIAK\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c = checkPrecision(t, "--model "+e2etest.TinyModel+" --against "+e2etest.TinyModel+" --fasta "+dup)
	if c.code != cli.ExitFailed || !strings.Contains(c.stderr, `id "x" is twice in the candidate`) {
		t.Errorf("an id twice: exit %d\n%s", c.code, c.stderr)
	}
}

// TestCheckPrecisionUsage: missing or conflicting flags exit 2 before any model loads; -h lists
// the command's flags and none of the worker's NATS ones.
func TestCheckPrecisionUsage(t *testing.T) {
	tiny, fa := e2etest.TinyModel, benchFASTA
	for _, tc := range []struct{ args, want string }{
		{"--against " + tiny + " --fasta " + fa, "--model DIR is required"},
		{"--model " + tiny + " --fasta " + fa, "--against DIR|GOLDEN.json is required"},
		{"--model " + tiny + " --against " + tiny, "--fasta FILE is required against a model"},
		{"--model " + tiny + " --against " + goldenJSON + " --fasta " + fa, "leave --fasta out"},
		{"--model " + tiny + " --against " + tiny + " --fasta " + fa + " --min-cosine high", `invalid value "high" for flag -min-cosine`},
		{"--model " + tiny + " --against " + tiny + " --fasta " + fa + " --device gpu", "--device"},
		{"--model " + tiny + " --against " + tiny + " --fasta " + fa + " --ack-wait 1s", "flag provided but not defined: -ack-wait"},
	} {
		c := runChild(t, "check-precision "+tc.args, nil)
		if c.code != cli.ExitUsage || !strings.Contains(c.stderr, tc.want) || !strings.Contains(c.stderr, "seqembed check-precision -h") {
			t.Errorf("check-precision %s: exit %d, want 2 and %q in\n%s", tc.args, c.code, tc.want, c.stderr)
		}
	}
	c := runChild(t, "check-precision -h", nil)
	for _, s := range []string{"-model", "-against", "-fasta", "-device", "-max-batch-tokens", "-min-cosine", "-min-overlap", "-json FILE"} {
		if !strings.Contains(c.stderr, "  "+s) {
			t.Errorf("-h lacks %q:\n%s", s, c.stderr)
		}
	}
	for _, s := range []string{"-ack-wait", "-nats", "-max-wait", "-overlength"} {
		if strings.Contains(c.stderr, "  "+s) {
			t.Errorf("-h lists %q:\n%s", s, c.stderr)
		}
	}
	if c := runChild(t, "-h", nil); !strings.Contains(c.stderr, "check-precision") {
		t.Errorf("seqembed -h does not list check-precision:\n%s", c.stderr)
	}
}
