package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/modelhub/hubtest"
)

// modelTestHub is a fake hub with a public and a private tiny repository, and the environment
// pointing at it (no token, online).
func modelTestHub(t *testing.T) *hubtest.Hub {
	t.Helper()
	files := []hubtest.File{
		{Name: "config.json", Data: []byte(`{"architectures":["EsmForMaskedLM"],"hidden_size":32}`)},
		{Name: "model.safetensors", Data: bytes.Repeat([]byte("esm2"), 50_000), LFS: true},
	}
	hub := hubtest.New(t,
		hubtest.Repo{ID: "facebook/esm2-tiny-test", Files: files},
		hubtest.Repo{ID: "facebook/esm2-private-test", Files: files, Token: "hf_cli_secret_token"})
	t.Setenv(modelhub.EnvEndpoint, hub.URL)
	t.Setenv(modelhub.EnvToken, "")
	t.Setenv(modelhub.EnvOffline, "")
	t.Setenv(modelhub.EnvCache, t.TempDir())
	return hub
}

// TestModelPullPrintsSnapshotDir: `model pull NAME` prints the snapshot directory as its one line
// of stdout (the summary goes to stderr); a second pull of the same revision by --revision
// downloads nothing; `model list` shows the repository, its ref and commit.
func TestModelPullPrintsSnapshotDir(t *testing.T) {
	hub := modelTestHub(t)
	cache := t.TempDir()
	var out, errOut bytes.Buffer
	if err := modelCmd(context.Background(), []string{"pull", "--cache", cache, "facebook/esm2-tiny-test"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	commit := hub.Commit("facebook/esm2-tiny-test")
	dir := filepath.Join(cache, "models--facebook--esm2-tiny-test", "snapshots", commit)
	if out.String() != dir+"\n" {
		t.Fatalf("stdout %q, want the snapshot directory %s and a newline", out.String(), dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "model: hf:facebook/esm2-tiny-test@main is commit "+commit) {
		t.Errorf("stderr lacks the summary:\n%s", errOut.String())
	}

	hub.Reset()
	out.Reset()
	if err := modelCmd(context.Background(), []string{"pull", "--quiet", "--revision", commit, "--cache", cache, "hf:facebook/esm2-tiny-test"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if out.String() != dir+"\n" || hub.Count("", "GET") != 0 {
		t.Fatalf("second pull: stdout %q, %d GETs; want %s and none", out.String(), hub.Count("", "GET"), dir)
	}

	out.Reset()
	if err := modelCmd(context.Background(), []string{"list", "--cache", cache}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REPO") || strings.Join(strings.Fields(lines[1])[:3], " ") != "facebook/esm2-tiny-test main "+commit {
		t.Fatalf("list:\n%s", out.String())
	}
}

// TestModelExitCodes: a missing or bad NAME, subcommand or flag exits 2, -h 0, a private
// repository without HF_TOKEN 1 (with the error naming HF_TOKEN), a bad HF_ENDPOINT 2.
func TestModelExitCodes(t *testing.T) {
	modelTestHub(t)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, cli.ExitUsage},
		{[]string{"fetch"}, cli.ExitUsage},
		{[]string{"pull"}, cli.ExitUsage},
		{[]string{"pull", "a/b", "c/d"}, cli.ExitUsage},
		{[]string{"pull", "facebook"}, cli.ExitUsage},
		{[]string{"pull", "--revision", "v2", "org/name@v1"}, cli.ExitUsage},
		{[]string{"pull", "--revision", "../x", "org/name"}, cli.ExitUsage},
		{[]string{"pull", "--bogus", "org/name"}, cli.ExitUsage},
		{[]string{"list", "extra"}, cli.ExitUsage},
		{[]string{"-h"}, cli.ExitOK},
		{[]string{"pull", "-h"}, cli.ExitOK},
		{[]string{"list"}, cli.ExitOK},
		{[]string{"pull", "--quiet", "facebook/esm2-private-test"}, cli.ExitFailed},
		{[]string{"pull", "--quiet", "facebook/no-such-repo"}, cli.ExitFailed},
	} {
		err := runModelCmd(context.Background(), tc.args)
		if got := cli.Code(err); got != tc.code {
			t.Errorf("model %v: exit %d (%v), want %d", tc.args, got, err, tc.code)
		}
	}
	err := runModelCmd(context.Background(), []string{"pull", "--quiet", "facebook/esm2-private-test"})
	if !errors.Is(err, modelhub.ErrUnauthorized) || !strings.Contains(err.Error(), "HF_TOKEN") {
		t.Errorf("private repository: %v, want ErrUnauthorized naming HF_TOKEN", err)
	}
	t.Setenv(modelhub.EnvEndpoint, "ftp://example.com")
	if got := cli.Code(runModelCmd(context.Background(), []string{"pull", "org/name"})); got != cli.ExitUsage {
		t.Errorf("bad HF_ENDPOINT: exit %d, want %d", got, cli.ExitUsage)
	}
}

// TestRunHFModelMatchesGolden is the "use a real model in one command" path, with no hub: a fake
// hub serves the tiny model's Hugging Face checkpoint (esm2graph/testdata/esm2-tiny-hf, the
// weights of testdata/esm2-tiny, saved by transformers' save_pretrained); `seqembed run --model
// hf:ORG/NAME` pulls it, builds its graph in Go into the cache and embeds the golden FASTA, whose
// embeddings match the PyTorch golden vectors within 1e-4. A second run pulls and builds nothing.
// `model build` writes the same graph from the local directory.
func TestRunHFModelMatchesGolden(t *testing.T) {
	e2etest.RequireORT(t)
	hfDir := filepath.Join(e2etest.Root, "esm2graph", "testdata", "esm2-tiny-hf")
	var files []hubtest.File
	for _, f := range []string{"config.json", "model.safetensors"} {
		data, err := os.ReadFile(filepath.Join(hfDir, f))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, hubtest.File{Name: f, Data: data, LFS: strings.HasSuffix(f, ".safetensors")})
	}
	hub := hubtest.New(t, hubtest.Repo{ID: "facebook/esm2-tiny-test", Files: files})
	cache := t.TempDir()
	env := []string{modelhub.EnvEndpoint + "=" + hub.URL, modelhub.EnvToken + "=", modelhub.EnvOffline + "=", modelhub.EnvCache + "=" + cache}
	dir := t.TempDir()
	out := filepath.Join(dir, "emb.parquet")
	golden := filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")
	c := runChild(t, "run "+golden+" --model hf:facebook/esm2-tiny-test --threads 1 --quiet --out "+out, nil, env...)
	if c.code != cli.ExitOK || !strings.Contains(c.stderr, "model: building the cpu-fp32 graph of facebook/esm2-tiny-test") {
		t.Fatalf("run --model hf:: exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil {
		t.Fatal(err)
	}
	want := e2etest.LoadGolden(t)
	if meta.Model != "esm2-tiny-test" || len(rows) != len(want) {
		t.Fatalf("model %q, %d rows; want esm2-tiny-test, %d", meta.Model, len(rows), len(want))
	}
	worst := 0.0
	for _, r := range rows {
		g, ok := want[r.ID]
		if !ok {
			t.Fatalf("row %s not in the golden set", r.ID)
		}
		for i, v := range r.Embedding {
			worst = max(worst, math.Abs(float64(v)-float64(g.Embedding[i])))
		}
	}
	if worst > 1e-4 {
		t.Errorf("Go-built graph from the hub checkpoint vs PyTorch golden: max abs %.3g > 1e-4", worst)
	}
	t.Logf("hf: model vs golden: max abs %.3g", worst)
	hub.Reset()
	c = runChild(t, "run "+golden+" --model hf:facebook/esm2-tiny-test --threads 1 --quiet --force --out "+out, nil, env...)
	if c.code != cli.ExitOK || strings.Contains(c.stderr, "building") || hub.Count("hub", "GET")+hub.Count("cdn", "GET") != 0 {
		t.Errorf("second run: exit %d, %d GETs\n%s", c.code, hub.Count("hub", "GET")+hub.Count("cdn", "GET"), c.stderr)
	}
	built := filepath.Join(dir, "built")
	c = runChild(t, "model build --from "+hfDir+" --out "+built+" --device cpu --name esm2-tiny", nil)
	if c.code != cli.ExitOK || c.stdout != built+"\n" || !strings.Contains(c.stderr, "model: esm2-tiny (mha, float32, dim 64, 2 layers) -> "+built) {
		t.Fatalf("model build: exit %d\n%s\n%s", c.code, c.stdout, c.stderr)
	}
	if c = runChild(t, "model build --from "+hfDir+" --out "+built+" --device cpu", nil); c.code != cli.ExitFailed || !strings.Contains(c.stderr, "already holds a model") {
		t.Errorf("model build over a model: exit %d\n%s", c.code, c.stderr)
	}
	if c = runChild(t, "model build --from "+hfDir+" --out "+built+" --device cpu --fused packed --force", nil); c.code != cli.ExitUsage {
		t.Errorf("packed for the CPU: exit %d, want 2\n%s", c.code, c.stderr)
	}
}

// TestModelBuildOutputs: `model build --outputs` writes a graph with extra outputs (the last layer's
// mean, the embedding column, added when not asked for) and `run` writes one column per output.
func TestModelBuildOutputs(t *testing.T) {
	e2etest.RequireORT(t)
	hfDir := filepath.Join(e2etest.Root, "esm2graph", "testdata", "esm2-tiny-hf")
	dir := t.TempDir()
	built := filepath.Join(dir, "m")
	c := runChild(t, "model build --from "+hfDir+" --out "+built+" --device cpu --name esm2-tiny --outputs bos:-1,per-residue:1 --residues-fp16", nil)
	if c.code != cli.ExitOK {
		t.Fatalf("model build --outputs: exit %d\n%s", c.code, c.stderr)
	}
	out := filepath.Join(dir, "o.parquet")
	golden := filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")
	if c = runChild(t, "run "+golden+" --model "+built+" --threads 1 --quiet --out "+out, nil); c.code != cli.ExitOK {
		t.Fatalf("run: exit %d\n%s", c.code, c.stderr)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil || len(rows) != 20 {
		t.Fatalf("%d rows, %v", len(rows), err)
	}
	if meta.Outputs != "bos_l2,residues_l1" || !meta.ResiduesFP16 {
		t.Errorf("meta outputs %q (fp16 %v), want bos_l2,residues_l1 in float16", meta.Outputs, meta.ResiduesFP16)
	}
	for _, r := range rows {
		if len(r.Outputs) != 2 || len(r.Outputs[0]) != 64 || len(r.Outputs[1]) != 64*int(r.Length) {
			t.Fatalf("%s: outputs %d, want bos (64) and %d×64 residues", r.ID, len(r.Outputs), r.Length)
		}
	}
	if c = runChild(t, "model build --from "+hfDir+" --out "+built+"x --device cpu --outputs mean:7", nil); c.code != cli.ExitUsage {
		t.Errorf("a layer the model lacks: exit %d, want 2\n%s", c.code, c.stderr)
	}
}

// TestModelBuildFastPath: model build --fused-gelu --fp16-linear --cudnn-attention writes the graph
// the fastest measured exports run (Fp16Linear projections, fc1 with its GELU in the epilogue,
// RaggedAttention; the manifest saying the GELU is tanh's) where the ops library is there; without
// it the build falls back to ONNX Runtime's ops and says that these options went with it; a
// library named by SEQEMBED_CUSTOM_OPS (the GPU image's) is found and is not taken for
// --custom-ops's value; cuDNN attention on the mha form is a usage error.
func TestModelBuildFastPath(t *testing.T) {
	hfDir := filepath.Join(e2etest.Root, "esm2graph", "testdata", "esm2-tiny-hf")
	dir := t.TempDir()
	flags := " --fp16 --fused packed --custom-ops --fused-gelu --fp16-linear --cudnn-attention"
	readMan := func(d string) map[string]any {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(d, "model.json"))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	with := filepath.Join(dir, "with")
	if err := os.MkdirAll(with, 0o755); err != nil {
		t.Fatal(err)
	}
	// model build only looks for the library (the worker loads it): any file stands in.
	if err := os.WriteFile(filepath.Join(with, "libseqembed_ops.so"), []byte("stand-in"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := runChild(t, "model build --from "+hfDir+" --out "+with+flags, nil, "SEQEMBED_CUSTOM_OPS=")
	if c.code != cli.ExitOK {
		t.Fatalf("model build: exit %d\n%s", c.code, c.stderr)
	}
	m := readMan(with)
	opt, _ := m["optimized"].(map[string]any)
	if m["ffn_gelu"] != "tanh" || m["custom_ops"] != "libseqembed_ops.so" || opt["Fp16Linear"] != float64(12) || opt["RaggedAttention"] != float64(2) ||
		opt["MatMul"] != nil || opt["BiasGelu"] != nil {
		t.Errorf("manifest ffn_gelu %v custom_ops %v optimized %v", m["ffn_gelu"], m["custom_ops"], opt)
	}
	// Without the library, flags that only it runs are refused (nothing written); --custom-ops
	// alone falls back to ONNX Runtime's ops and says what that costs.
	without := filepath.Join(dir, "without")
	c = runChild(t, "model build --from "+hfDir+" --out "+without+flags+" --precision fp8", nil, "SEQEMBED_CUSTOM_OPS=")
	if c.code != cli.ExitFailed || !strings.Contains(c.stderr, "no custom-op library") ||
		!strings.Contains(c.stderr, "--fused-gelu, --fp16-linear, --cudnn-attention, --precision fp8 run only on it") ||
		!strings.Contains(c.stderr, "scripts/build-ops.sh "+filepath.Join(without, "libseqembed_ops.so")) {
		t.Fatalf("model build of the fast path without the library: exit %d, want 1 naming the flags and the build\n%s", c.code, c.stderr)
	}
	if _, err := os.Stat(filepath.Join(without, "model.json")); err == nil {
		t.Errorf("refused build wrote %s", filepath.Join(without, "model.json"))
	}
	c = runChild(t, "model build --from "+hfDir+" --out "+without+" --fp16 --fused packed --custom-ops", nil, "SEQEMBED_CUSTOM_OPS=")
	if c.code != cli.ExitOK || !strings.Contains(c.stderr, "building with ONNX Runtime's Add + RotaryEmbedding") {
		t.Fatalf("model build --custom-ops without the library: exit %d, want 0 with the fallback\n%s", c.code, c.stderr)
	}
	m = readMan(without)
	opt, _ = m["optimized"].(map[string]any)
	if m["custom_ops"] != "" || opt["RotaryEmbedding"] != float64(4) || opt["PackedMultiHeadAttention"] != float64(2) {
		t.Errorf("fallback manifest custom_ops %v optimized %v", m["custom_ops"], opt)
	}
	// FP8: the manifest says so (gpurun refuses it on a GPU without FP8 tensor cores), and the
	// CPU refuses the model with a sentence.
	fp8 := filepath.Join(with, "fp8")
	if err := os.MkdirAll(fp8, 0o755); err != nil {
		t.Fatal(err)
	}
	c = runChild(t, "model build --from "+hfDir+" --out "+fp8+flags+" --precision fp8 --fused-ln-quant", nil,
		"SEQEMBED_CUSTOM_OPS="+filepath.Join(with, "libseqembed_ops.so"))
	if c.code != cli.ExitOK {
		t.Fatalf("model build --precision fp8: exit %d\n%s", c.code, c.stderr)
	}
	m = readMan(fp8)
	opt, _ = m["optimized"].(map[string]any)
	if m["precision"] != "fp8" || m["fp8_projections"] != "all" || opt["Fp8Linear"] != float64(12) || opt["SkipLayerNormE4M3"] != float64(3) ||
		opt["QuantizeE4M3"] != float64(5) || opt["RaggedAttention"] != float64(2) {
		t.Errorf("fp8 manifest precision %v fp8_projections %v optimized %v", m["precision"], m["fp8_projections"], opt)
	}
	golden := filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")
	c = runChild(t, "run "+golden+" --model "+fp8+" --out "+filepath.Join(dir, "fp8.parquet"), nil,
		"SEQEMBED_CUSTOM_OPS="+filepath.Join(with, "libseqembed_ops.so"))
	if c.code != cli.ExitFailed || !strings.Contains(c.stderr, "CUDA") {
		t.Errorf("run of an FP8 model on the CPU: exit %d, want 1 saying it needs CUDA\n%s", c.code, c.stderr)
	}
	// As in the GPU image: SEQEMBED_CUSTOM_OPS names the library (it is not --custom-ops's value).
	viaEnv := filepath.Join(dir, "env")
	c = runChild(t, "model build --from "+hfDir+" --out "+viaEnv+" --fp16 --fused packed --custom-ops", nil,
		"SEQEMBED_CUSTOM_OPS="+filepath.Join(with, "libseqembed_ops.so"))
	if c.code != cli.ExitOK || readMan(viaEnv)["custom_ops"] != "libseqembed_ops.so" {
		t.Fatalf("model build with SEQEMBED_CUSTOM_OPS set: exit %d\n%s", c.code, c.stderr)
	}
	c = runChild(t, "model build --from "+hfDir+" --out "+filepath.Join(with, "mha")+" --fp16 --fused mha --custom-ops --cudnn-attention", nil,
		"SEQEMBED_CUSTOM_OPS="+filepath.Join(with, "libseqembed_ops.so"))
	if c.code != cli.ExitUsage || !strings.Contains(c.stderr, "packed") {
		t.Errorf("--cudnn-attention --fused mha: exit %d, want 2 naming packed\n%s", c.code, c.stderr)
	}
}
