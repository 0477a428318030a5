// Package retry is seqembed's one retry loop: exponential backoff that honours ctx.
//
// Every loop that tries a call again (a publish that found the output stream full, a JetStream
// set-up request unanswered during a leader election, a dead-letter copy, a stream lookup) goes
// through Do with a Policy saying how long to wait between tries, how many tries to make and
// which errors are worth another. It is a small package of our own rather than a dependency:
// the whole policy is four fields, and every caller needs ctx honoured during the wait, a
// per-try timeout and a hook for logging, which is less code here than adapting a library.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Policy says how Do retries. The zero value retries every error, forever (until ctx ends),
// starting at 100 ms and doubling to 5 s.
type Policy struct {
	// Initial is the wait after the first failure (default 100 ms); each later wait doubles,
	// up to Max (default 5 s). Waits get up to 10 % random jitter so that workers restarted
	// together do not retry in step.
	Initial, Max time.Duration
	// Tries is the most calls made, the first included; 0 means until ctx ends.
	Tries int
	// PerTry bounds each call with its own timeout (0 = only ctx). A try that times out is
	// retried even if ctx has time left.
	PerTry time.Duration
	// Retryable reports whether err is worth another try (nil = every error is).
	Retryable func(error) bool
	// OnRetry is called before each wait with the number of the try that failed (1-based), its
	// error and the wait to come; use it to log.
	OnRetry func(try int, err error, wait time.Duration)
}

// ErrExhausted wraps the last error when Policy.Tries calls all failed.
var ErrExhausted = errors.New("retry: tries exhausted")

// Do calls fn until it returns nil, the error is not Retryable, the tries run out or ctx ends.
// It returns nil, the last error of fn (not retryable, or ctx ended: errors.Is works on it), or
// an error wrapping both ErrExhausted and the last error.
func Do(ctx context.Context, p Policy, fn func(ctx context.Context) error) error {
	wait := p.Initial
	if wait <= 0 {
		wait = 100 * time.Millisecond
	}
	maxWait := p.Max
	if maxWait <= 0 {
		maxWait = 5 * time.Second
	}
	for try := 1; ; try++ {
		err := call(ctx, p.PerTry, fn)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || (p.Retryable != nil && !p.Retryable(err)) {
			return err
		}
		if p.Tries > 0 && try >= p.Tries {
			return fmt.Errorf("%w after %d tries: %w", ErrExhausted, try, err)
		}
		d := min(wait, maxWait)
		d += time.Duration(rand.Int64N(int64(d)/10 + 1))
		if p.OnRetry != nil {
			p.OnRetry(try, err, d)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, maxWait)
	}
}

func call(ctx context.Context, perTry time.Duration, fn func(context.Context) error) error {
	if perTry <= 0 {
		return fn(ctx)
	}
	tctx, cancel := context.WithTimeout(ctx, perTry)
	defer cancel()
	return fn(tctx)
}

// Timeouts is a Retryable that retries only calls that ran out of time (a per-try timeout, an
// unanswered request): the JetStream set-up calls at start, where any other error is final.
func Timeouts(err error) bool { return errors.Is(err, context.DeadlineExceeded) }
