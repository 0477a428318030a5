package jobs_test

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/jobs"
	"github.com/seqembed/seqembed/internal/natstest"
)

// TestLedgerConcurrentPublishes: eight publishes of one job begin and finish at once (each its own
// ledger, as separate processes would have); compare-and-set loses none of their counts. A job of
// another model is refused; an unknown job is ErrNotFound.
func TestLedgerConcurrentPublishes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := natstest.Server(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		_, js := natstest.Connect(t, srv) // on the test goroutine: it may t.Fatal
		wg.Go(func() {
			l, err := jobs.Open(ctx, js, 1)
			if err != nil {
				errs <- err
				return
			}
			if _, err := l.Begin(ctx, "genomes", "esm2-tiny"); err != nil {
				errs <- err
				return
			}
			if _, err := l.Finish(ctx, "genomes", "esm2-tiny", 10+i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	_, js := natstest.Connect(t, srv)
	l, err := jobs.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	j, err := l.Get(ctx, "genomes")
	if err != nil || j.Published != 8*10+28 || j.Publishes != 8 || j.Active != 0 || !j.Done() || j.Model != "esm2-tiny" {
		t.Errorf("after 8 publishes: %+v, %v; want 108 published in 8 publishes, none active", j, err)
	}
	if _, err := l.Begin(ctx, "genomes", "esm2-other"); !errors.Is(err, jobs.ErrModel) {
		t.Errorf("another model's publish: %v, want ErrModel", err)
	}
	if _, err := l.Get(ctx, "nope"); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("unknown job: %v", err)
	}
	if _, err := l.Get(ctx, "bad.name"); err == nil {
		t.Error("a job name with a dot was accepted")
	}
	if n := jobs.NewName(); !regexp.MustCompile(`^run-[0-9a-f]{12}$`).MatchString(n) || consumer.CheckJob(n) != nil {
		t.Errorf("NewName() = %q", n)
	}
}

// TestStateOf: a job's waiting records and dead letters are counted on its own subjects only, and
// its last output's stream sequence is found (0 before any).
func TestStateOf(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SEQS", Subjects: []string{"seqs.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub := func(subject string) uint64 {
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	j := jobs.Job{Name: "a", Model: "m"}
	st, err := jobs.StateOf(ctx, js, "SEQS", arrowout.DefaultStreamName, j)
	if err != nil || st != (jobs.State{}) {
		t.Fatalf("empty: %+v, %v", st, err)
	}
	pub(consumer.JobSubject("m", "a"))
	pub(consumer.JobSubject("m", "a"))
	pub(consumer.JobSubject("m", "b"))
	pub(consumer.Subject("m"))
	pub(consumer.JobDLQSubject("m", "a"))
	pub(arrowout.Subject("m", "a"))
	last := pub(arrowout.Subject("m", "a"))
	pub(arrowout.Subject("m", "b"))
	st, err = jobs.StateOf(ctx, js, "SEQS", arrowout.DefaultStreamName, j)
	if err != nil || st.Waiting != 2 || st.DeadLettered != 1 || st.OutputSeq != last {
		t.Errorf("job a: %+v, %v; want 2 waiting, 1 dead letter, output seq %d", st, err, last)
	}
}
