package testutil

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitTrueAfterSomeCalls(t *testing.T) {
	var n atomic.Int32
	if err := Wait(context.Background(), time.Minute, func() (bool, string) { return n.Add(1) >= 3, "three calls" }); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Fatalf("cond called %d times, want 3", n.Load())
	}
}

func TestWaitNamesStateOnTimeout(t *testing.T) {
	err := Wait(context.Background(), 50*time.Millisecond, func() (bool, string) { return false, "7 of 9 rows" })
	if err == nil || !strings.Contains(err.Error(), "7 of 9 rows") {
		t.Fatalf("err = %v, want one naming the state", err)
	}
}

func TestWaitHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Wait(ctx, time.Hour, func() (bool, string) { return false, "never" })
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("err = %v, want context canceled", err)
	}
}
