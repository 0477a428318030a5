package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/natstest"
)

// TestCrashPoints SIGKILLs a `seqembed worker` process (SEQEMBED_CRASH_AT, see worker.go) on its
// second batch at each crash point: before publish, after publish before the ack, and after
// acking half the batch. A second worker then finishes the work: every id is output (exactly
// once after dedupe by id) and the work queue ends empty.
func TestCrashPoints(t *testing.T) {
	requireORT(t)
	for i, point := range []string{"before-publish", "after-publish", "partial-ack"} {
		t.Run(point, func(t *testing.T) { testCrashPoint(t, point, uint64(i+1)) })
	}
}

func testCrashPoint(t *testing.T, point string, seed uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SEQEMBED_CRASH_AT="+point, "SEQEMBED_CRASH_AFTER=2",
		"SEQEMBED_TEST_MAIN=worker --nats "+srv.ClientURL()+" --model "+tinyModel+
			" --ack-wait 2s --max-batch-rows 8 --threads 1 --http-addr 127.0.0.1:0 --log-level warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false
	defer func() {
		if !reaped {
			cmd.Process.Kill()
			<-exited
		}
	}()

	rng := rand.New(rand.NewPCG(seed, 0xc0a5))
	const aminoAcids = "ACDEFGHIKLMNPQRSTVWY"
	recs := map[string]string{}
	for i := range 120 {
		b := make([]byte, 20+rng.IntN(181))
		for j := range b {
			b[j] = aminoAcids[rng.IntN(len(aminoAcids))]
		}
		recs[fmt.Sprint("c", i)] = string(b)
	}
	// The child creates the streams; wait for them before publishing.
	for {
		if _, err := js.Stream(ctx, "SEQS"); err == nil {
			if _, err := js.Stream(ctx, arrowout.DefaultStreamName); err == nil {
				break
			}
		}
		select {
		case err := <-exited:
			reaped = true
			t.Fatalf("worker exited before it was ready: %v", err)
		case <-ctx.Done():
			t.Fatal("streams never appeared")
		case <-time.After(50 * time.Millisecond):
		}
	}
	publishRecords(t, js, "esm2-tiny", recs)

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
	case <-time.After(20 * time.Second):
		t.Fatalf("worker did not crash at %s within 20s", point)
	}

	// The batch the worker died on was never acked in full, so some ids are still missing.
	if before, _, _ := readAllOutput(t, ctx, js, recs, 300*time.Millisecond); len(before) >= len(recs) {
		t.Fatalf("all %d ids were output before the crash: the crash point was never reached mid-stream", len(before))
	} else {
		t.Logf("%d of %d ids output by the crashed worker", len(before), len(recs))
	}

	// A second worker takes over; the crashed one's unacked records come back after AckWait.
	cfg := testConfig(t)
	cfg.AckWait = 2 * time.Second
	w, stop := startWorker(t, ctx, cfg, nc, nil)
	defer stop()
	outputIDs(t, js, len(recs))
	waitQueueEmpty(t, js, w.model) // every record acked, so every output is stored

	seen, rows, msgs := readAllOutput(t, ctx, js, recs, 2*time.Second)
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
	waitQueueEmpty(t, js, w.model)
}

// readAllOutput reads the whole output stream until no message arrives for idle: the count of
// each id, the rows and the messages. An id that was never published is an error.
func readAllOutput(t *testing.T, ctx context.Context, js jetstream.JetStream, recs map[string]string, idle time.Duration) (seen map[string]int, rows, msgs int) {
	t.Helper()
	oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seen = map[string]int{}
	for {
		m, err := oc.Next(jetstream.FetchMaxWait(idle))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) {
			return seen, rows, msgs
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs++
		_, rs, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if _, ok := recs[r.ID]; !ok {
				t.Errorf("output has id %q that was never published", r.ID)
			}
			seen[r.ID]++
			rows++
		}
	}
}
