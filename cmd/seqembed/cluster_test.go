package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/internal/natstest"
)

// progressLog records when each output id was first seen (core NATS subscription on the output
// subject: it sees a batch the moment the worker publishes it, whichever node it lands on).
type progressLog struct {
	mu    sync.Mutex
	first map[string]time.Time
	times []time.Time // first-seen times in order
}

func (p *progressLog) add(ids []string) {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if _, ok := p.first[id]; !ok {
			p.first[id] = now
			p.times = append(p.times, now)
		}
	}
}

func (p *progressLog) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.times)
}

// stall is the longest stretch without a new id between from and the time the count reached
// upto, and the first new id after from.
func (p *progressLog) stall(from time.Time, upto int) (longest, firstAfter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := from
	firstAfter = -1
	for i, t := range p.times {
		if i >= upto {
			break
		}
		if t.Before(from) {
			continue
		}
		if firstAfter < 0 {
			firstAfter = t.Sub(from)
		}
		longest = max(longest, t.Sub(prev))
		prev = t
	}
	return longest, firstAfter
}

func waitCount(t *testing.T, p *progressLog, want int, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for p.count() < want {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d ids embedded after %s", p.count(), want, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Now()
}

// TestClusterFailover: a worker on a 3-node cluster (SEQS and EMBEDDINGS R3) loses nothing and
// duplicates nothing visible after dedupe through: the SEQS leader's node going down (and coming
// back), a consumer leader stepdown, and a quorum loss (2 of 3 nodes down for 3 s). 300 records
// in 3 waves of 100, one fault right after each wave is published.
func TestClusterFailover(t *testing.T) {
	requireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl := natstest.Cluster(t, 3)
	log := zap.NewNop()
	nc, err := (&natsFlags{URL: cl.URLs()}).connect("cluster-test worker", log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pnc, err := (&natsFlags{URL: cl.URLs()}).connect("cluster-test producer", log)
	if err != nil {
		t.Fatal(err)
	}
	defer pnc.Close()
	js, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	man, err := gpurun.LoadManifest(tinyModel)
	if err != nil {
		t.Fatal(err)
	}
	model := man.Name
	// R3 streams first: the worker creates missing streams only and never changes existing ones.
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithReplicas(3))
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}

	// Progress comes from the stored stream through an ordered consumer, not a core
	// subscription: a core subscriber misses what is published while its own connection is
	// reconnecting after a node loss, which once showed up as "only 92 of 100 ids embedded".
	prog := &progressLog{first: map[string]time.Time{}}
	oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"embeddings." + model}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) {
		_, rows, err := arrowout.Decode(m.Data())
		if err != nil {
			t.Errorf("decoding output: %v", err)
			return
		}
		ids := make([]string, len(rows))
		for i, r := range rows {
			ids[i] = r.ID
		}
		prog.add(ids)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()

	cfg := testConfig(t)
	// An ack lost in a failover is redelivered after 10 s; MaxDeliver (5) × 10 s stays far above
	// the longest failover stall (~10 s), so held records are never taken for poison.
	cfg.AckWait = 10 * time.Second
	cfg.MaxBatchRows = 10 // ~10 batches a wave, each ≥ 100 ms: faults land mid-wave
	_, stop := startWorker(t, ctx, cfg, nc, beforeEmbed(func(gpurun.Input) error {
		time.Sleep(100 * time.Millisecond)
		return nil
	}))
	defer stop()

	rng := rand.New(rand.NewPCG(7, 7))
	retries := 0
	publishWave := func(w int) {
		t.Helper()
		for i := range 100 {
			n, err := publishRetry(ctx, js, recordMsg(model, fmt.Sprintf("w%d-%03d", w, i), randomProtein(rng, 30, 60)))
			retries += n
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	stream := cons.StreamConfig().Name

	// Wave 1, then the SEQS leader's node goes down for 3 s.
	publishWave(1)
	leader := cl.StreamLeader("$G", stream)
	if leader < 0 {
		t.Fatal("SEQS has no leader")
	}
	t0 := time.Now()
	cl.Shutdown(leader)
	restarted := make(chan struct{})
	go func() { time.Sleep(3 * time.Second); cl.Restart(leader); close(restarted) }()
	done := waitCount(t, prog, 100, 60*time.Second)
	longest, first := prog.stall(t0, 100)
	t.Logf("fault 1: SEQS leader n%d down for 3s: first output %s after the kill, longest stall %s, wave done in %s (new SEQS leader n%d)",
		leader+1, first.Round(time.Millisecond), longest.Round(time.Millisecond), done.Sub(t0).Round(time.Millisecond), cl.StreamLeader("$G", stream)+1)
	<-restarted

	// Wave 2, then the consumer's leader steps down.
	publishWave(2)
	before := cl.ConsumerLeader("$G", stream, consumer.Durable(model))
	t0 = time.Now()
	for err := natstest.ConsumerStepDown(pnc, stream, consumer.Durable(model)); err != nil; err = natstest.ConsumerStepDown(pnc, stream, consumer.Durable(model)) {
		if time.Since(t0) > 20*time.Second {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	done = waitCount(t, prog, 200, 60*time.Second)
	longest, first = prog.stall(t0, 200)
	t.Logf("fault 2: consumer leader stepdown (n%d → n%d): first output %s after, longest stall %s, wave done in %s",
		before+1, cl.ConsumerLeader("$G", stream, consumer.Durable(model))+1, first.Round(time.Millisecond),
		longest.Round(time.Millisecond), done.Sub(t0).Round(time.Millisecond))

	// Wave 3, then 2 of 3 nodes go down (no quorum) for 3 s.
	publishWave(3)
	down := []int{(leader + 1) % 3, (leader + 2) % 3}
	t0 = time.Now()
	cl.Shutdown(down[0])
	cl.Shutdown(down[1])
	during := prog.count()
	time.Sleep(3 * time.Second)
	// Progress during the outage is at most what was in flight as it began.
	stalled := prog.count() - during
	cl.Restart(down[0])
	cl.Restart(down[1])
	tr := time.Now()
	done = waitCount(t, prog, 300, 60*time.Second)
	_, firstAfterRestart := prog.stall(tr, 300)
	longest, _ = prog.stall(t0, 300)
	t.Logf("fault 3: n%d and n%d down for 3s (no quorum; %d ids appeared during the outage): first output %s after the restart, longest stall %s, wave done %s after the restart",
		down[0]+1, down[1]+1, stalled, firstAfterRestart.Round(time.Millisecond), longest.Round(time.Millisecond), done.Sub(tr).Round(time.Millisecond))
	t.Logf("publish retries: %d", retries)

	// Every id in the stored output (not just seen on the wire), none missing; the queue empties.
	// (waitQueueEmpty fails on the first API error; right after a restart the cluster may still
	// answer 503 for a moment.)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left, pend, unacked, err := queueState(ctx, js, stream, model)
		if err == nil && left == 0 && pend == 0 && unacked == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("work queue not empty: %d left, %d pending, %d unacked (%v)", left, pend, unacked, err)
		}
	}
	seen := storedOutputIDs(t, ctx, js)
	dups := 0
	for w := 1; w <= 3; w++ {
		for i := range 100 {
			id := fmt.Sprintf("w%d-%03d", w, i)
			if seen[id] == 0 {
				t.Errorf("%s missing from the output", id)
			}
			dups += seen[id] - 1
		}
	}
	if len(seen) != 300 {
		t.Errorf("%d distinct ids in the output, want 300", len(seen))
	}
	t.Logf("output: %d distinct ids, %d duplicate rows before dedupe", len(seen), dups)
	dl, err := consumer.ReadDeadLetters(ctx, js, stream, model, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 0 {
		t.Errorf("%d dead letters: %+v", len(dl), dl[0])
	}
}

// storedOutputIDs reads the whole output stream (every message stored when it is called) and
// counts each id; a read that fails (a node still recovering) starts over, for up to 30 s.
func storedOutputIDs(t *testing.T, ctx context.Context, js jetstream.JetStream) map[string]int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		seen, err := func() (map[string]int, error) {
			info, err := streamInfo(ctx, js, arrowout.DefaultStreamName)
			if err != nil {
				return nil, err
			}
			oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
			if err != nil {
				return nil, err
			}
			seen := map[string]int{}
			for range info.State.Msgs {
				m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
				if err != nil {
					return nil, err
				}
				_, rows, err := arrowout.Decode(m.Data())
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range rows {
					seen[r.ID]++
				}
			}
			return seen, nil
		}()
		if err == nil {
			return seen
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("reading the output stream: %v", last)
	return nil
}
