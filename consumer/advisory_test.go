package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// countObs counts Observer calls: DeadLettered by reason, and the other calls under the keys
// listed on count.
type countObs struct {
	mu   sync.Mutex
	dead map[string]int
}

func (o *countObs) RecordIn()                  { o.add("in") }
func (o *countObs) Redelivered()               { o.add("redelivered") }
func (o *countObs) Truncated()                 {}
func (o *countObs) DeadLettered(reason string) { o.add(reason) }
func (o *countObs) Dropped(reason string)      { o.add("dropped:" + reason) }

func (o *countObs) add(key string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dead == nil {
		o.dead = map[string]int{}
	}
	o.dead[key]++
}

// count returns how many records were dead-lettered with reason; "in" and "redelivered" count
// first and later deliveries, "dropped:<reason>" records terminated without a copy.
func (o *countObs) count(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.dead[reason]
}

// waitBudget bounds the waits on the server's redeliveries and advisories: with a 300 ms AckWait
// and MaxDeliver 2 a record is dead-lettered within about a second; this is many times that for
// a loaded 2-core machine.
const waitBudget = 30 * time.Second

// nakAll naks every record the handle delivers and counts deliveries per id.
func nakAll(h *consumer.Handle) (wait func() map[string]int) {
	seen := map[string]int{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for r := range h.Records() {
			seen[r.ID]++
			_ = r.Msg.Nak()
		}
	}()
	return func() map[string]int { <-done; return seen }
}

// publishSeq publishes a record of model m and returns its stream sequence.
func publishSeq(t *testing.T, js jetstream.JetStream, id, body string) uint64 {
	t.Helper()
	m := nats.NewMsg(consumer.Subject("m"))
	m.Header.Set(consumer.HeaderID, id)
	m.Data = []byte(body)
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func subjectCount(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

func deadLetters(t *testing.T, js jetstream.JetStream) []consumer.DeadLetter {
	t.Helper()
	dl, err := consumer.ReadDeadLetters(context.Background(), js, "SEQS", "m", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return dl
}

// startWatched starts a consumer of model "m" with MaxDeliver 2 and a 300 ms AckWait (plus
// opts), its max-deliveries watcher and its pull loop.
func startWatched(t *testing.T, ctx context.Context, js jetstream.JetStream, opts ...consumer.Option) (*consumer.AdvisoryHandle, *consumer.Handle) {
	t.Helper()
	c, err := consumer.New(js, "m", validate, append([]consumer.Option{consumer.WithMaxDeliver(2),
		consumer.WithAckWait(300 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := c.WatchMaxDeliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return w, h
}

// TestMaxDeliveriesDeadLetter: a record nak'd on every delivery is dead-lettered with reason
// max_deliveries after MaxDeliver deliveries, and the input subject ends empty.
func TestMaxDeliveriesDeadLetter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	obs := &countObs{}
	w, h := startWatched(t, ctx, js, consumer.WithObserver(obs))
	wait := nakAll(h)
	seqG1 := publishSeq(t, js, "G1", "MKT")
	seqG2 := publishSeq(t, js, "G2", "MKTAY")

	testutil.Eventually(t, waitBudget, func() (bool, string) {
		dl := deadLetters(t, js)
		return len(dl) == 2, fmt.Sprintf("two max_deliveries dead letters, have %+v", dl)
	})
	testutil.Eventually(t, waitBudget, func() (bool, string) {
		n := subjectCount(t, js, consumer.Subject("m"))
		return n == 0, fmt.Sprintf("input subject empty, %d records left on %s", n, consumer.Subject("m"))
	})
	h.Stop()
	seen := wait()
	w.Stop()
	<-w.Done()

	want := map[string]struct {
		seq  uint64
		body string
	}{"G1": {seqG1, "MKT"}, "G2": {seqG2, "MKTAY"}}
	for _, d := range deadLetters(t, js) {
		exp, ok := want[d.ID]
		if !ok {
			t.Fatalf("unexpected dead letter %+v", d)
		}
		if d.Reason != consumer.ReasonMaxDeliveries || d.StreamSeq != exp.seq || string(d.Data) != exp.body {
			t.Errorf("dead letter %+v, want reason %s, stream seq %d, body %q", d, consumer.ReasonMaxDeliveries, exp.seq, exp.body)
		}
		if !strings.Contains(d.Error, "delivered 2 times without success (max deliver 2)") {
			t.Errorf("dead letter %s error %q", d.ID, d.Error)
		}
	}
	if seen["G1"] != 2 || seen["G2"] != 2 {
		t.Errorf("deliveries %v, want 2 each", seen)
	}
	if n := obs.count(consumer.ReasonMaxDeliveries); n != 2 {
		t.Errorf("observer counted %d max_deliveries, want 2", n)
	}
}

// TestMaxDeliveriesTwoWatchers: two workers, each with its own connection, pull loop and watcher,
// see every advisory; each record still has exactly one dead-letter copy and is counted once.
func TestMaxDeliveriesTwoWatchers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Server(t, nil)
	const records = 5
	obs := &countObs{}
	var logs []*observer.ObservedLogs
	var watchers []*consumer.AdvisoryHandle
	var loops []*consumer.Handle
	var waits []func() map[string]int
	var js jetstream.JetStream
	for range 2 {
		_, wjs := natstest.Connect(t, srv)
		js = wjs
		core, lg := observer.New(zapcore.DebugLevel)
		logs = append(logs, lg)
		w, h := startWatched(t, ctx, wjs, consumer.WithObserver(obs), consumer.WithLogger(zap.New(core)))
		watchers, loops, waits = append(watchers, w), append(loops, h), append(waits, nakAll(h))
	}
	for i := range records {
		publish(t, js, fmt.Sprint("R", i), "MKT")
	}
	// Every watcher handles every advisory exactly once, by one of these outcomes.
	outcomes := map[string]bool{
		"dead-lettered": true, "max-delivered record already gone": true,
		"max-deliveries dead-letter copy was a duplicate": true, "max-deliveries dead-letter": true,
	}
	testutil.Eventually(t, waitBudget, func() (bool, string) {
		var counts []int
		ok := true
		for _, lg := range logs {
			n := 0
			for _, e := range lg.All() {
				if outcomes[e.Message] {
					n++
				}
			}
			counts = append(counts, n)
			ok = ok && n >= records
		}
		return ok, fmt.Sprintf("both watchers to handle all %d advisories, handled per watcher %v", records, counts)
	})
	for _, h := range loops {
		h.Stop()
	}
	for _, w := range waits {
		w()
	}
	for _, w := range watchers {
		w.Stop()
		<-w.Done()
	}
	for i, lg := range logs {
		if errs := lg.FilterLevelExact(zapcore.ErrorLevel).All(); len(errs) > 0 {
			t.Errorf("watcher %d logged errors: %+v", i, errs)
		}
	}
	dl := deadLetters(t, js)
	perID := map[string]int{}
	for _, d := range dl {
		perID[d.ID]++
		if d.Reason != consumer.ReasonMaxDeliveries {
			t.Errorf("dead letter %+v", d)
		}
	}
	if len(dl) != records || len(perID) != records {
		t.Fatalf("%d dead letters for %d ids (%v), want exactly one each of %d", len(dl), len(perID), perID, records)
	}
	if n := obs.count(consumer.ReasonMaxDeliveries); n != records {
		t.Errorf("observer counted %d max_deliveries, want %d", n, records)
	}
	if n := subjectCount(t, js, consumer.Subject("m")); n != 0 {
		t.Errorf("%d records left on the input subject", n)
	}
}

// TestMaxDeliveredCopyFails: when the dead-letter copy cannot be stored (the stream is full), the
// original stays in the work queue and the error is ErrDeadLetter; once it is gone, a repeat is a
// no-op success.
func TestMaxDeliveredCopyFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	obs := &countObs{}
	c, err := consumer.New(js, "m", validate, consumer.WithStreamMaxBytes(1000), consumer.WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	publish(t, js, "BIG", strings.Repeat("A", 700))
	err = c.DeadLetterMaxDelivered(ctx, 1, 5)
	if !errors.Is(err, consumer.ErrDeadLetter) || !strings.Contains(err.Error(), `"BIG"`) {
		t.Fatalf("err = %v, want ErrDeadLetter naming the record", err)
	}
	if n := subjectCount(t, js, consumer.Subject("m")); n != 1 {
		t.Fatalf("original not kept: %d records on the input subject", n)
	}
	if dl := deadLetters(t, js); len(dl) != 0 || obs.count(consumer.ReasonMaxDeliveries) != 0 {
		t.Fatalf("dead letters %+v, observer %d", dl, obs.count(consumer.ReasonMaxDeliveries))
	}
	s, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.DeadLetterMaxDelivered(ctx, 1, 5); err != nil {
		t.Fatalf("already-gone record: %v", err)
	}
}
