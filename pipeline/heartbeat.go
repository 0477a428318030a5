package pipeline

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// keeper is the heartbeat rule: every record the pipeline holds — from the moment the feeder
// takes it off the consumer, through the batcher's queue and buckets, the run, the publish and
// its retries, until it is acked, nak'd or termed — gets InProgress every interval (AckWait/3),
// so the server never redelivers a record the worker still holds. One goroutine owns the set of
// held messages; Hold and Release hand messages to it.
//
// Holding only what can be heartbeated also needs nothing to wait outside the set: the batcher's
// queue is sized to MaxAckPending (the most unacked records the server lets any worker hold), so
// the feeder never blocks and records spend only microseconds in the client's pull buffer.
type keeper struct {
	interval time.Duration
	// ops carries holds, releases and questions in one FIFO, so a release always follows the
	// hold it undoes (separate channels would let select take them in either order).
	ops  chan keeperOp
	stop chan struct{}
	done chan struct{}
}

// keeperOp is one Hold (hold set), Release (release set) or Held (held set) call.
type keeperOp struct {
	hold    jetstream.Msg
	release []jetstream.Msg
	held    chan int
}

// newKeeper starts the keeper; Stop ends it.
func newKeeper(interval time.Duration) *keeper {
	k := &keeper{interval: interval, ops: make(chan keeperOp, 256), stop: make(chan struct{}), done: make(chan struct{})}
	go k.loop()
	return k
}

func (k *keeper) loop() {
	defer close(k.done)
	set := map[jetstream.Msg]struct{}{}
	tick := time.NewTicker(max(k.interval, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case op := <-k.ops:
			if op.hold != nil {
				set[op.hold] = struct{}{}
			}
			for _, m := range op.release {
				delete(set, m)
			}
			if op.held != nil {
				op.held <- len(set)
			}
		case <-tick.C:
			for m := range set {
				_ = m.InProgress() // an already acked message answers an error: harmless
			}
		case <-k.stop:
			return
		}
	}
}

// Hold adds m to the heartbeated set.
func (k *keeper) Hold(m jetstream.Msg) {
	select {
	case k.ops <- keeperOp{hold: m}:
	case <-k.done: // stopped: nothing is heartbeated any more
	}
}

// Release removes msgs from the set once they are acked, nak'd or termed; it copies msgs, so the
// caller may reuse the slice.
func (k *keeper) Release(msgs ...jetstream.Msg) {
	if len(msgs) == 0 {
		return
	}
	select {
	case k.ops <- keeperOp{release: append([]jetstream.Msg(nil), msgs...)}:
	case <-k.done:
	}
}

// Held is the number of messages in the set (after every Hold and Release sent before it).
func (k *keeper) Held() int {
	reply := make(chan int, 1)
	select {
	case k.ops <- keeperOp{held: reply}:
		return <-reply
	case <-k.done:
		return 0
	}
}

// Stop ends the keeper and waits for it.
func (k *keeper) Stop() { close(k.stop); <-k.done }
