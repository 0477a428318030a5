package pipeline_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/e2etest"
)

// TestJobsPublishToTheirSubjects: records of two jobs and of none, interleaved and of one length
// (one bucket, so one batch mixes all three), are each embedded once and published on their own
// job's subject (arrowout.Subject): the mixed batch is split into one message per job. A bad
// record of a job is dead-lettered on that job's dead-letter subject.
func TestJobsPublishToTheirSubjects(t *testing.T) {
	ctx, _, nc, js := e2etest.Server(t, 60*time.Second)
	w := e2etest.NewWorkerConn(t, ctx, nc, e2etest.Config())
	model := w.Model() // New made the streams and the durable; the worker pulls once started
	rng := rand.New(rand.NewPCG(3, 4))
	jobs := []string{"a", "b", ""}
	for i := range 30 {
		job := jobs[i%3]
		m := e2etest.InputMsg(model, fmt.Sprintf("%s-%02d", job, i), string(e2etest.RandomProtein(rng, 40, 40)))
		m.Subject = consumer.JobSubject(model, job)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	bad := e2etest.InputMsg(model, "b-bad", "MKT*AY")
	bad.Subject = consumer.JobSubject(model, "b")
	if _, err := js.PublishMsg(ctx, bad); err != nil {
		t.Fatal(err)
	}
	w.Start(t, ctx)

	oc := e2etest.OutputConsumer(t, ctx, js)
	seen := map[string]int{}
	subjects := map[string]int{}
	for len(seen) < 30 {
		m, err := oc.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for output (%d of 30 ids): %v", len(seen), err)
		}
		_, rows, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		subjects[m.Subject()]++
		for _, r := range rows {
			seen[r.ID]++
			job, _, _ := strings.Cut(r.ID, "-")
			if want := arrowout.Subject(model, job); m.Subject() != want {
				t.Errorf("%s on %s, want %s", r.ID, m.Subject(), want)
			}
		}
	}
	e2etest.CheckEachOnce(t, seen)
	for _, job := range jobs {
		if subjects[arrowout.Subject(model, job)] == 0 {
			t.Errorf("no message on %s: %v", arrowout.Subject(model, job), subjects)
		}
	}
	in := e2etest.MustStream(t, ctx, js, "SEQS")
	dlq := consumer.JobDLQSubject(model, "b")
	info, err := in.Info(ctx, jetstream.WithSubjectFilter(dlq))
	if err != nil || info.State.Subjects[dlq] != 1 {
		t.Errorf("dead letters on %s: %v (%v)", dlq, info.State.Subjects, err)
	}
	if dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", model, "b", 0); err != nil || len(dls) != 1 || dls[0].ID != "b-bad" {
		t.Errorf("job b's dead letters: %+v, %v", dls, err)
	}
	if err := w.Wait(); err != nil {
		t.Fatal(err)
	}
}
