package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/e2etest"
)

// TestCrashPoints SIGKILLs a `seqembed worker` process (SEQEMBED_CRASH_AT, see crashHooks in main_test.go) on its
// second batch at each crash point: before publish, after publish before the ack, and after
// acking half the batch. A second worker then finishes the work: every id is output (exactly
// once after dedupe by id) and the work queue ends empty.
func TestCrashPoints(t *testing.T) {
	e2etest.RequireORT(t)
	for i, point := range []string{"before-publish", "after-publish", "partial-ack"} {
		t.Run(point, func(t *testing.T) { testCrashPoint(t, point, uint64(i+1)) })
	}
}

func testCrashPoint(t *testing.T, point string, seed uint64) {
	ctx, srv, nc, js := e2etest.Server(t, 3*time.Minute)

	cmd, exited := startWorkerProcess(t, srv, "--ack-wait 2s --max-batch-rows 8 --threads 1 --http-addr 127.0.0.1:0 --log-level warn",
		"SEQEMBED_CRASH_AT="+point, "SEQEMBED_CRASH_AFTER=2")
	reaped := false
	defer func() {
		if !reaped {
			cmd.Process.Kill()
			<-exited
		}
	}()

	rng := rand.New(rand.NewPCG(seed, 0xc0a5))
	recs := map[string]string{}
	for i := range 120 {
		recs[fmt.Sprint("c", i)] = string(e2etest.RandomProtein(rng, 20, 200))
	}
	// The child creates the streams; wait for them before publishing.
	if err, gone := e2etest.WaitForStreams(t, ctx, js, exited); gone {
		reaped = true
		t.Fatalf("worker exited before it was ready: %v", err)
	}
	e2etest.PublishRecords(t, js, "esm2-tiny", recs)

	select {
	case err := <-exited:
		reaped = true
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("worker exit: %v, want killed by SIGKILL", err)
		}
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("worker exit: %v, want killed by SIGKILL", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("worker did not crash at %s within 2 minutes", point)
	}

	// The batch the worker died on was never acked in full, so some ids are still missing.
	if before, _, _ := e2etest.ReadAllOutput(t, ctx, js, recs, 300*time.Millisecond); len(before) >= len(recs) {
		t.Fatalf("all %d ids were output before the crash: the crash point was never reached mid-stream", len(before))
	} else {
		t.Logf("%d of %d ids output by the crashed worker", len(before), len(recs))
	}

	// A second worker takes over; the crashed one's unacked records come back after AckWait.
	cfg := e2etest.Config()
	cfg.AckWait = 2 * time.Second
	w := e2etest.NewWorkerConn(t, ctx, nc, cfg).Start(t, ctx)
	defer w.Wait()
	e2etest.OutputIDs(t, js, len(recs))
	e2etest.WaitQueueEmpty(t, js, w.Model()) // every record acked, so every output is stored

	seen, rows, msgs := e2etest.ReadAllOutput(t, ctx, js, recs, 2*time.Second)
	for id := range recs {
		if seen[id] == 0 {
			t.Errorf("%s lost", id)
		}
	}
	if len(seen) != len(recs) {
		t.Errorf("%d distinct ids after dedupe, want %d", len(seen), len(recs))
	}
	var dupIDs []string
	for id, n := range seen {
		if n > 1 {
			dupIDs = append(dupIDs, fmt.Sprintf("%s×%d", id, n))
		}
	}
	t.Logf("%s: %d output messages, %d rows, %d distinct ids, %d raw duplicate rows %v",
		point, msgs, rows, len(seen), rows-len(seen), dupIDs)
	e2etest.WaitQueueEmpty(t, js, w.Model())
}
