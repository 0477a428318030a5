package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

var errBoom = errors.New("boom")

func TestDoRetriesUntilSuccess(t *testing.T) {
	n := 0
	var waits []time.Duration
	err := Do(context.Background(), Policy{Initial: time.Millisecond, Max: 4 * time.Millisecond,
		OnRetry: func(_ int, _ error, w time.Duration) { waits = append(waits, w) }},
		func(context.Context) error {
			n++
			if n < 5 {
				return errBoom
			}
			return nil
		})
	if err != nil || n != 5 {
		t.Fatalf("err %v after %d calls, want nil after 5", err, n)
	}
	// 1, 2, 4, 4 ms (capped), each with at most 10 % jitter.
	for i, base := range []time.Duration{1, 2, 4, 4} {
		base *= time.Millisecond
		if waits[i] < base || waits[i] > base+base/10 {
			t.Errorf("wait %d = %s, want %s..%s", i, waits[i], base, base+base/10)
		}
	}
}

func TestDoTriesExhausted(t *testing.T) {
	n := 0
	err := Do(context.Background(), Policy{Initial: time.Microsecond, Tries: 3}, func(context.Context) error { n++; return errBoom })
	if n != 3 || !errors.Is(err, ErrExhausted) || !errors.Is(err, errBoom) {
		t.Fatalf("n=%d err=%v, want 3 calls and ErrExhausted wrapping boom", n, err)
	}
}

func TestDoStopsOnNonRetryable(t *testing.T) {
	n := 0
	err := Do(context.Background(), Policy{Retryable: Timeouts}, func(context.Context) error { n++; return errBoom })
	if n != 1 || err != errBoom {
		t.Fatalf("n=%d err=%v, want one call returning boom", n, err)
	}
}

func TestDoPerTryTimeoutIsRetried(t *testing.T) {
	n := 0
	err := Do(context.Background(), Policy{Initial: time.Microsecond, PerTry: time.Millisecond, Retryable: Timeouts},
		func(ctx context.Context) error {
			n++
			if n == 1 {
				<-ctx.Done() // an unanswered request
				return ctx.Err()
			}
			return nil
		})
	if err != nil || n != 2 {
		t.Fatalf("err %v after %d calls, want nil after 2", err, n)
	}
}

func TestDoHonoursContextDuringWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	called := make(chan struct{}, 1)
	go func() {
		done <- Do(ctx, Policy{Initial: time.Hour}, func(context.Context) error {
			called <- struct{}{}
			return errBoom
		})
	}()
	<-called
	cancel()
	if err := <-done; err != errBoom {
		t.Fatalf("err = %v, want the last error once ctx ends", err)
	}
}
