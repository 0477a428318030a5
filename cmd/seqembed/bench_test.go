package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/benchrun"
	"github.com/seqembed/seqembed/internal/e2etest"
)

var benchFASTA = filepath.Join(e2etest.Root, "testdata", "golden-input.fasta")

// readBenchLine reads the one JSON line `bench --json-out` appended to path.
func readBenchLine(t *testing.T, path string) benchrun.Result {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var res benchrun.Result
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
	return res
}

// TestBenchWorkerProcs runs `seqembed bench --worker-procs --device cpu,cpu`: two worker processes
// (this test binary as seqembed, see TestMain) share the durable consumer; every golden record is
// embedded once and the JSON line says so.
func TestBenchWorkerProcs(t *testing.T) {
	e2etest.RequireORT(t)
	defer func(orig func(...string) (*exec.Cmd, error)) { workerCommand = orig }(workerCommand)
	workerCommand = func(args ...string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "SEQEMBED_TEST_MAIN="+strings.Join(args, " "))
		return cmd, nil
	}
	out := filepath.Join(t.TempDir(), "bench.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runBenchCmd(ctx, []string{"--model", e2etest.TinyModel, "--threads", "1", "--max-batch-rows", "4",
		"--device", "cpu,cpu", "--worker-procs", "--fasta", benchFASTA, "--json-out", out})
	if err != nil {
		t.Fatal(err)
	}
	res := readBenchLine(t, out)
	if res.WorkerProcs != 2 || res.Sequences != 20 || res.Residues <= 0 || res.ResiduesPerSec <= 0 {
		t.Fatalf("result %+v: want 2 worker processes, 20 sequences, residues and a rate", res)
	}
	if err := runBenchCmd(ctx, []string{"--worker-procs", "--raw", "--fasta", "x"}); err == nil {
		t.Error("--worker-procs with --raw: no error")
	}
}

// TestBenchReportFlag runs `seqembed bench --raw --report DIR --json-out F --cpuprofile P`: DIR
// gets summary.md and the plot data but no PNG (the plots are seqembed-lab's), F the JSON line, P
// a CPU profile (gzip-compressed, as runtime/pprof writes it).
func TestBenchReportFlag(t *testing.T) {
	e2etest.RequireORT(t)
	dir := filepath.Join(t.TempDir(), "report")
	out := filepath.Join(t.TempDir(), "bench.jsonl")
	prof := filepath.Join(t.TempDir(), "cpu.pprof")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := runBenchCmd(ctx, []string{"--model", e2etest.TinyModel, "--threads", "2", "--max-batch-rows", "2", "--raw",
		"--fasta", benchFASTA, "--report", dir, "--json-out", out, "--cpuprofile", prof})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := os.ReadFile(prof); err != nil || len(p) < 2 || p[0] != 0x1f || p[1] != 0x8b {
		t.Errorf("--cpuprofile %s: %d bytes, err %v; want a gzip-compressed profile", prof, len(p), err)
	}
	res := readBenchLine(t, out)
	if res.Mode != "raw" || res.Sequences != 20 || res.Batches < 10 {
		t.Fatalf("result %+v", res)
	}
	got, s, meta, err := benchrun.ReadReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, res) {
		t.Errorf("result.json %+v, JSON line %+v", got, res)
	}
	if len(s.Batches) != res.Batches || meta.Input != benchFASTA || len(meta.Args) == 0 {
		t.Errorf("series of %d batches, meta %+v", len(s.Batches), meta)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".png") {
			t.Errorf("bench wrote %s: plots are seqembed-lab's", e.Name())
		}
	}
}
