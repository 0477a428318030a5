package gpurun

import (
	"context"
	"sync"
)

// captureMu keeps seqembed's own CUDA calls away from graph captures: ORT captures in
// cudaStreamCaptureModeGlobal, where a cudaMalloc, cudaHostAlloc or stream synchronisation on
// any other thread fails the capture. Captures (Warmup) hold it exclusively; CUDA runs, session
// set-up and pinned allocations hold it shared.
var captureMu captureLock

// captureLock is a readers–writer lock whose waits end with a context. A waiting writer holds
// new readers back (as sync.RWMutex does), so a capture is not starved by a stream of runs; a
// reader must therefore not take it twice. The zero value is unlocked. Taking and releasing it
// without contention does not allocate.
type captureLock struct {
	mu      sync.Mutex
	readers int           // holding it shared
	writer  bool          // held exclusively
	waiting int           // writers waiting
	wake    chan struct{} // closed (then cleared) when the state changes; nil while nobody waits
}

// waitLocked returns the channel closed at the next state change. l.mu is held.
func (l *captureLock) waitLocked() <-chan struct{} {
	if l.wake == nil {
		l.wake = make(chan struct{})
	}
	return l.wake
}

// broadcastLocked wakes every waiter. l.mu is held.
func (l *captureLock) broadcastLocked() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

// rlock takes the lock shared, waiting while a writer holds it or waits for it, until ctx ends
// (ctx.Err(), the lock not taken).
func (l *captureLock) rlock(ctx context.Context) error {
	l.mu.Lock()
	for l.writer || l.waiting > 0 {
		w := l.waitLocked()
		l.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
		l.mu.Lock()
	}
	l.readers++
	l.mu.Unlock()
	return nil
}

func (l *captureLock) runlock() {
	l.mu.Lock()
	if l.readers--; l.readers == 0 {
		l.broadcastLocked()
	}
	l.mu.Unlock()
}

// lock takes the lock exclusively, waiting for readers and another writer to release it, until
// ctx ends (ctx.Err(), the lock not taken).
func (l *captureLock) lock(ctx context.Context) error {
	l.mu.Lock()
	l.waiting++
	for l.writer || l.readers > 0 {
		w := l.waitLocked()
		l.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			l.mu.Lock()
			l.waiting--
			l.broadcastLocked() // readers held back by this writer may go
			l.mu.Unlock()
			return ctx.Err()
		}
		l.mu.Lock()
	}
	l.waiting--
	l.writer = true
	l.mu.Unlock()
	return nil
}

func (l *captureLock) unlock() {
	l.mu.Lock()
	l.writer = false
	l.broadcastLocked()
	l.mu.Unlock()
}
