package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/e2etest"
)

// seqembedBin is cmd/seqembed built once for the test binary (the soak tests share it), in a
// directory TestMain removes; err says why it could not be built.
var seqembedBin struct {
	once     sync.Once
	dir, exe string
	skip     string
	err      error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if seqembedBin.dir != "" {
		os.RemoveAll(seqembedBin.dir)
	}
	os.Exit(code)
}

// buildSeqembed returns the path of cmd/seqembed, built on the first call.
func buildSeqembed(t *testing.T) string {
	t.Helper()
	b := &seqembedBin
	b.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			b.skip = fmt.Sprintf("no go tool to build seqembed: %v", err)
			return
		}
		if b.dir, b.err = os.MkdirTemp("", "seqembed-lab-test-"); b.err != nil {
			return
		}
		b.exe = filepath.Join(b.dir, "seqembed")
		cmd := exec.Command(goTool, "build", "-o", b.exe, "github.com/seqembed/seqembed/cmd/seqembed")
		cmd.Dir = e2etest.Root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/seqembed: %w\n%s", err, out)
		}
	})
	if b.skip != "" {
		t.Skip(b.skip)
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.exe
}

// soak runs `seqembed-lab soak` against the built seqembed with the tiny model, args added, and
// fails the test on any loss, duplicate or false dead letter the ledger shows.
func soak(t *testing.T, within time.Duration, args ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds seqembed and runs worker processes")
	}
	e2etest.RequireORT(t)
	exe := buildSeqembed(t)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	args = append([]string{"--seqembed", exe, "--model", e2etest.TinyModel, "--dir", t.TempDir()}, args...)
	if err := runSoakCmd(ctx, args); err != nil {
		t.Fatal(err)
	}
}

// TestSoakSmall runs a short soak against a freshly built seqembed: 3,000 records, two worker
// processes, a SIGKILL every second, the SEQS leader's node down for 2 s and a consumer
// stepdown; the ledger must show nothing lost and no duplicate after dedupe.
func TestSoakSmall(t *testing.T) {
	soak(t, 4*time.Minute, "--records", "3000", "--workers", "2", "--kill-every", "1s", "--node-down", "2s",
		"--ack-wait", "3s", "--timeout", "3m",
		"--worker-flags", "--max-held-tokens 16384 --max-deliver 20") // see TestSoakLongSequences
}

// TestSoakLongSequences is the chaos test of long records: 300 sequences of 900–1,000 residues
// (each batch of them takes a good part of the 3 s AckWait on the CPU), two worker processes, a
// SIGKILL every 4 s, no node outage. Every id must be output exactly once after dedupe, nothing
// lost, and no valid record dead-lettered (max_deliveries) although the kills redeliver batches.
// Each worker holds at most 16,384 tokens (one batch): without that bound a worker holds
// everything it can pull and every kill redelivers all of it, so with seven kills some records
// reached MaxDeliver (5) and were dead-lettered though valid (23 to 122 of 400 in runs here).
// Even bounded, a record whose holder is killed on each of its deliveries is dead-lettered after
// MaxDeliver of them: on a loaded 2-core machine a batch of these takes seconds, and about a
// quarter of deliveries (over half with three soaks at once) ended in a kill, so MaxDeliver 5
// left 11 of 400 in one full-suite run and MaxDeliver 10 one of 400 under triple load. The
// workers run with --max-deliver 20 (0.6^20 × 300 ≈ 0.01 expected false dead letters at the
// worst load seen), a kill every 4 s.
func TestSoakLongSequences(t *testing.T) {
	soak(t, 8*time.Minute, "--records", "300", "--min-len", "900", "--max-len", "1000", "--workers", "2",
		"--kill-every", "4s", "--node-down", "0s", "--ack-wait", "3s", "--timeout", "7m", "--seed", "7",
		"--worker-flags", "--max-held-tokens 16384 --max-deliver 20")
}

func TestSoakFlags(t *testing.T) {
	ctx := context.Background()
	if err := runSoakCmd(ctx, []string{"--records", "0"}); err == nil {
		t.Error("--records 0: no error")
	}
	missing := filepath.Join(t.TempDir(), "no-such-seqembed")
	if err := runSoakCmd(ctx, []string{"--model", e2etest.TinyModel, "--seqembed", missing}); err == nil {
		t.Error("--seqembed of a missing file: no error")
	}
}
