package gpurun

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
)

// TestCaptureLock: readers share the lock, a writer waits for them and holds new readers back,
// and every wait ends with its context (a writer that gives up lets the readers it held back
// go). synctest.Wait returns once every goroutine of the test is blocked, so "still waiting" is
// an observed state, not a guess after a sleep.
func TestCaptureLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l captureLock
		ctx := context.Background()
		if err := l.rlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.rlock(ctx); err != nil { // a second reader does not wait
			t.Fatal(err)
		}

		wrote := make(chan error, 1)
		go func() { wrote <- l.lock(ctx) }()
		synctest.Wait()
		select {
		case err := <-wrote:
			t.Fatalf("lock returned %v while two readers hold the lock", err)
		default:
		}

		// A reader arriving while the writer waits waits too, and its context ends the wait.
		rctx, cancel := context.WithCancel(ctx)
		read := make(chan error, 1)
		go func() { read <- l.rlock(rctx) }()
		synctest.Wait()
		if len(read) != 0 {
			t.Fatal("a new reader got the lock past a waiting writer")
		}
		cancel()
		if err := <-read; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled reader: err = %v, want context.Canceled", err)
		}

		l.runlock()
		synctest.Wait()
		if len(wrote) != 0 {
			t.Fatal("the writer got the lock while a reader still holds it")
		}
		l.runlock()
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}

		// Held exclusively: readers and a second writer wait; a cancelled writer gives up.
		read2 := make(chan error, 1)
		go func() { read2 <- l.rlock(ctx) }()
		wctx, cancelW := context.WithCancel(ctx)
		wrote2 := make(chan error, 1)
		go func() { wrote2 <- l.lock(wctx) }()
		synctest.Wait()
		if len(read2) != 0 || len(wrote2) != 0 {
			t.Fatal("the lock was taken while a writer holds it")
		}
		cancelW()
		if err := <-wrote2; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled writer: err = %v, want context.Canceled", err)
		}
		l.unlock()
		if err := <-read2; err != nil {
			t.Fatal(err)
		}
		l.runlock()

		// A writer that gives up while readers hold the lock lets readers held back by it go.
		if err := l.rlock(ctx); err != nil {
			t.Fatal(err)
		}
		wctx, cancelW = context.WithCancel(ctx)
		go func() { wrote2 <- l.lock(wctx) }()
		synctest.Wait()
		go func() { read2 <- l.rlock(ctx) }()
		synctest.Wait()
		if len(read2) != 0 {
			t.Fatal("a reader got past a waiting writer")
		}
		cancelW()
		if err := <-wrote2; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled writer: err = %v", err)
		}
		if err := <-read2; err != nil {
			t.Fatal(err)
		}
		l.runlock()
		l.runlock()
		if l.readers != 0 || l.writer || l.waiting != 0 || l.wake != nil {
			t.Fatalf("lock not back to its zero state: %+v", &l)
		}
	})
}

func TestCaptureLockNoAlloc(t *testing.T) {
	var l captureLock
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() {
		_ = l.rlock(ctx)
		l.runlock()
		_ = l.lock(ctx)
		l.unlock()
	}); n != 0 {
		t.Errorf("uncontended lock and unlock allocate %v times", n)
	}
}
