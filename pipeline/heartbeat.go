package pipeline

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// keeper is the heartbeat rule and the hold budget. Every record the pipeline holds — from the
// moment the feeder takes it off the consumer, through the batcher's queue and buckets, the run,
// the publish and its retries, until it is acked, nak'd or termed — gets InProgress every
// interval (AckWait/3), so the server never redelivers a record the worker still holds. One
// goroutine owns the set of held messages; Hold and Release hand messages to it.
//
// Holding only what can be heartbeated also needs nothing to wait outside the set: the batcher's
// queue is sized to MaxAckPending (the most unacked records the server lets any worker hold), so
// the feeder never blocks and records spend only a hand-off in the client's pull buffer.
//
// With a token budget (Config.MaxHeldTokens) the keeper also governs the pulls: Room, the
// consumer's pull gate, waits until the held records' tokens are under the budget and says how
// many records to pull (the room over the mean tokens of records held so far). A worker then
// holds only what it can work through soon, and a worker that dies (SIGKILL, OOM) hands back
// that much, not MaxAckPending records, each redelivery of which counts towards MaxDeliver.
type keeper struct {
	interval time.Duration
	budget   int // tokens; 0 = no budget
	// ops carries holds, releases and questions in one FIFO, so a release always follows the
	// hold it undoes (separate channels would let select take them in either order).
	ops  chan keeperOp
	stop chan struct{}
	done chan struct{}
}

// keeperOp is one Hold (hold set), Release (release set), Held (held set) or Room (room set)
// call.
type keeperOp struct {
	hold    jetstream.Msg
	tokens  int
	release []jetstream.Msg
	held    chan int
	room    chan int
}

// newKeeper starts the keeper; Stop ends it. budget is in tokens (0: none).
func newKeeper(interval time.Duration, budget int) *keeper {
	k := &keeper{interval: interval, budget: budget, ops: make(chan keeperOp, 256),
		stop: make(chan struct{}), done: make(chan struct{})}
	go k.loop()
	return k
}

func (k *keeper) loop() {
	defer close(k.done)
	set := map[jetstream.Msg]int{} // held message → its tokens
	heldTokens := 0
	meanTokens := 512.0 // a guess until records arrive; then a moving mean
	var waiting []chan int
	room := func() int { return k.budget - heldTokens }
	answer := func(reply chan int) { reply <- max(1, int(float64(room())/meanTokens)) }
	tick := time.NewTicker(max(k.interval, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case op := <-k.ops:
			if op.hold != nil {
				if _, ok := set[op.hold]; !ok {
					set[op.hold] = op.tokens
					heldTokens += op.tokens
					meanTokens += (float64(op.tokens) - meanTokens) / 64
				}
			}
			for _, m := range op.release {
				if t, ok := set[m]; ok {
					delete(set, m)
					heldTokens -= t
				}
			}
			if op.held != nil {
				op.held <- len(set)
			}
			if op.room != nil {
				if k.budget <= 0 || room() > 0 {
					answer(op.room)
				} else {
					waiting = append(waiting, op.room)
				}
			}
			for len(waiting) > 0 && room() > 0 {
				answer(waiting[0])
				waiting = waiting[1:]
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

// Hold adds m, of tokens tokens, to the heartbeated set.
func (k *keeper) Hold(m jetstream.Msg, tokens int) {
	select {
	case k.ops <- keeperOp{hold: m, tokens: tokens}:
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

// Room waits until the held tokens are under the budget and returns how many records to pull
// (at least 1; the pull batch caps it). Without a budget it answers at once. It is the
// consumer's pull gate.
func (k *keeper) Room(ctx context.Context) (int, error) {
	if k.budget <= 0 {
		return 1 << 30, nil
	}
	reply := make(chan int, 1) // the keeper never blocks on an abandoned waiter
	select {
	case k.ops <- keeperOp{room: reply}:
	case <-k.done:
		return 0, ctx.Err()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case n := <-reply:
		return n, nil
	case <-k.done:
		return 0, context.Canceled
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Stop ends the keeper and waits for it.
func (k *keeper) Stop() { close(k.stop); <-k.done }
