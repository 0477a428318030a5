// Package testutil holds the one helper tests use to wait for a condition: Eventually.
//
// Tests synchronise on events (channels, counts read from real servers), never on sleeps.
// Where the only observable is state that changes on its own (a consumer's pending count, a
// file growing), Eventually polls it; its budget is a ceiling for a loaded 2-core machine, not a
// speed goal, so give it at least five times what the wait needs there.
package testutil

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// pollInterval is how often Eventually re-checks; short enough to add no real latency.
const pollInterval = 20 * time.Millisecond

// Eventually calls cond until it returns true, failing the test (t.Fatalf) when within has
// passed first. cond may return a description of the state it saw, printed on failure; it runs
// on the test's goroutine, so it may call t.Fatal itself.
func Eventually(t testing.TB, within time.Duration, cond func() (ok bool, state string)) {
	t.Helper()
	if err := Wait(context.Background(), within, cond); err != nil {
		t.Fatal(err)
	}
}

// EventuallyTrue is Eventually for a condition without a state description.
func EventuallyTrue(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, within, func() (bool, string) { return cond(), what })
}

// Wait is the non-test form of Eventually: it polls cond until it returns true (nil), within
// passes or ctx ends (an error naming the last state cond described).
func Wait(ctx context.Context, within time.Duration, cond func() (ok bool, state string)) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", state, ctx.Err())
		case <-deadline.C:
			ok, state = cond()
			if ok {
				return nil
			}
			return fmt.Errorf("not true after %s: %s", time.Since(start).Round(time.Millisecond), state)
		case <-tick.C:
		}
	}
}
