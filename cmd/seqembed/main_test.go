package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/pipeline"
)

// TestMain lets a test run the real command in a child process: with SEQEMBED_TEST_MAIN set to
// the arguments, the test binary is seqembed, with the faults of crashHooks.
func TestMain(m *testing.M) {
	if args := os.Getenv("SEQEMBED_TEST_MAIN"); args != "" {
		os.Exit(realMain(strings.Fields(args), crashHooks()))
	}
	os.Exit(m.Run())
}

// crashHooks is the fault injection of the crash tests: with SEQEMBED_CRASH_AT set to a crash
// point the child SIGKILLs itself the SEQEMBED_CRASH_AFTER-th time (default 1) a batch reaches
// it: "before-publish" (embedded, not published), "after-publish" (published, not acked) or
// "partial-ack" (the first half of the batch acked and confirmed by the server, the rest not).
func crashHooks() pipeline.Hooks {
	at := os.Getenv("SEQEMBED_CRASH_AT")
	if at == "" {
		return pipeline.Hooks{}
	}
	n, err := strconv.ParseInt(os.Getenv("SEQEMBED_CRASH_AFTER"), 10, 64)
	if err != nil || n < 1 {
		n = 1
	}
	var left atomic.Int64
	left.Store(n)
	point := pipeline.Point(at)
	if at == "partial-ack" {
		point = pipeline.PointBeforeAck
	}
	return pipeline.Hooks{At: func(ctx context.Context, p pipeline.Point, msgs []jetstream.Msg) {
		if p != point || left.Add(-1) > 0 {
			return
		}
		if at == "partial-ack" {
			for _, m := range msgs[:len(msgs)/2] {
				_ = m.DoubleAck(ctx) // acked, and the server says so
			}
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not catchable: nothing runs past here
	}}
}

// TestSIGTERM runs `seqembed worker` as a process, sends it SIGTERM mid-stream and checks that it
// exits 0 promptly and loses nothing: a second worker finishes the rest, every id is output.
func TestSIGTERM(t *testing.T) {
	ctx, srv, nc, js := e2etest.Server(t, 3*time.Minute)

	cmd, exited := startWorkerProcess(t, srv, "--threads 1 --http-addr 127.0.0.1:0 --log-level warn --max-batch-rows 8")

	recs := map[string]string{}
	for i := range 300 {
		recs[fmt.Sprint("s", i)] = strings.Repeat("MKTAYIAKQRQISFVKSHFSRQ", 1+i%20)
	}
	// The child creates the streams; wait for them before publishing.
	if err, gone := e2etest.WaitForStreams(t, ctx, js, exited); gone {
		t.Fatalf("worker exited early: %v", err)
	}
	e2etest.PublishRecords(t, js, "esm2-tiny", recs)
	e2etest.OutputIDs(t, js, 1) // mid-stream
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("worker exit after SIGTERM: %v", err)
		}
	case <-time.After(2 * time.Minute): // --shutdown-timeout is 30 s
		cmd.Process.Kill()
		t.Fatal("worker did not exit within 2 minutes of SIGTERM")
	}
	// A second worker picks up what the first left; nothing is lost.
	w := e2etest.NewWorkerConn(t, ctx, nc, e2etest.Config()).Start(t, ctx)
	seen := e2etest.OutputIDs(t, js, len(recs))
	if err := w.Wait(); err != nil {
		t.Error(err)
	}
	for id := range recs {
		if seen[id] == 0 {
			t.Errorf("%s lost", id)
		}
	}
	e2etest.WaitQueueEmpty(t, js, w.Model())
}

// TestCorruptModelFailsCleanly: a model.onnx that is not a model (and a model.json without the
// sha256 that would have caught it) makes `seqembed worker` exit 1 with a message naming the
// file, never with a signal.
func TestCorruptModelFailsCleanly(t *testing.T) {
	e2etest.RequireORT(t)
	srv := natstest.Server(t, nil)
	dir := t.TempDir()
	manifest, err := os.ReadFile(filepath.Join(e2etest.TinyModel, "model.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "sha256")
	manifest, _ = json.Marshal(m)
	model, err := os.ReadFile(filepath.Join(e2etest.TinyModel, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 100; i < len(model); i += 97 { // the protobuf framing and the weights, scrambled
		model[i] ^= 0x5a
	}
	if err := os.WriteFile(filepath.Join(dir, "model.json"), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), model, 0o644); err != nil {
		t.Fatal(err)
	}
	// runChild (exitcodes_test.go): a signal shows as code -1, so anything but 1 fails here.
	res := runChild(t, "worker --nats "+srv.ClientURL()+" --model "+dir+" --http-addr= --log-level error", nil)
	out := res.stdout + res.stderr
	if res.code != 1 {
		t.Fatalf("worker on a corrupt model: exit code %d (-1: killed by a signal), want 1\n%s", res.code, out)
	}
	if !strings.Contains(out, "model.onnx") && !strings.Contains(out, dir) {
		t.Errorf("the error does not name the model:\n%s", out)
	}
	t.Logf("worker said: %s", strings.TrimSpace(out))
}
