package main

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
)

// Fault injection, for tests only (crash_test.go). With SEQEMBED_CRASH_AT set to a crash point,
// the process SIGKILLs itself the SEQEMBED_CRASH_AFTER-th time (default 1) a batch reaches it:
// "before-publish" (embedded, not published), "after-publish" (published, not acked) or
// "partial-ack" (the first half of the batch acked and flushed, the rest not). Both variables are
// read once at startup; unset, each point costs one string comparison.
var (
	crashAt   = os.Getenv("SEQEMBED_CRASH_AT")
	crashLeft atomic.Int64
)

func init() {
	n, err := strconv.ParseInt(os.Getenv("SEQEMBED_CRASH_AFTER"), 10, 64)
	if err != nil || n < 1 {
		n = 1
	}
	crashLeft.Store(n)
}

// crashDue reports whether the batch now at point name is the one to crash on.
func crashDue(name string) bool { return crashAt == name && crashLeft.Add(-1) <= 0 }

func crash() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not catchable: nothing runs past here
}

func crashPoint(name string) {
	if crashDue(name) {
		crash()
	}
}

func ackHalfThenCrash(ctx context.Context, nc *nats.Conn, msgs []jetstream.Msg) {
	if crashDue("partial-ack") {
		_ = consumer.AckAll(ctx, nc, msgs[:len(msgs)/2]) // acks, then flushes them to the server
		crash()
	}
}
