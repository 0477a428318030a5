package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/jspub"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// progressLog records when each output id was first seen.
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

// waitCount waits until want distinct ids were seen and returns when the last of them was.
func (p *progressLog) waitCount(t *testing.T, want int, within time.Duration) time.Time {
	t.Helper()
	testutil.Eventually(t, within, func() (bool, string) {
		n := p.count()
		return n >= want, fmt.Sprintf("%d of %d ids embedded", n, want)
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.times[want-1]
}

// connectCluster connects to the cluster's nodes, reconnecting forever, closed at test end.
func connectCluster(t *testing.T, urls, name string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(urls, nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestClusterFailover: a worker on a 3-node cluster (SEQS and EMBEDDINGS R3) loses nothing and
// duplicates nothing visible after dedupe through: the SEQS leader's node going down (and coming
// back), a consumer leader stepdown, and a quorum loss (2 of 3 nodes down for 3 s). 300 records
// in 3 waves of 100, one fault right after each wave is published.
func TestClusterFailover(t *testing.T) {
	e2etest.RequireORT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cl := natstest.Cluster(t, 3)
	nc := connectCluster(t, cl.URLs(), "cluster-test worker")
	pnc := connectCluster(t, cl.URLs(), "cluster-test producer")
	js, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	man, err := gpurun.LoadManifest(e2etest.TinyModel)
	if err != nil {
		t.Fatal(err)
	}
	model := man.Name
	// R3 streams first: the worker creates missing streams only and never changes existing ones.
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithReplicas(3))
	if err != nil {
		t.Fatal(err)
	}
	if err := setupStreams(ctx, js, cons); err != nil {
		t.Fatal(err)
	}

	// Progress is when the worker has each record's output stored (its PubAck, before the input's
	// ack), seen in the worker through Hooks.At: an ordered consumer on the output stream, as
	// before 2026-12-04, noticed its own node's loss only after missed heartbeats (2-11 s), which
	// showed as stalls of the worker that had not happened. The stored output itself is checked
	// at the end (storedOutputIDs).
	prog := &progressLog{first: map[string]time.Time{}}

	cfg := e2etest.Config()
	// An ack lost in a failover is redelivered after 10 s; MaxDeliver (5) × 10 s stays far above
	// the longest failover stall (~10 s), so held records are never taken for poison.
	cfg.AckWait = 10 * time.Second
	cfg.MaxBatchRows = 10 // ~10 batches a wave, each ≥ 100 ms: faults land mid-wave
	// Slow runs are the scenario (not synchronisation): every run takes 100 ms more.
	cfg.Hooks.WrapEmbed = e2etest.BeforeEmbed(func(gpurun.Input) error {
		time.Sleep(100 * time.Millisecond)
		return nil
	})
	cfg.Hooks.At = func(_ context.Context, p pipeline.Point, msgs []jetstream.Msg) {
		if p != pipeline.PointAfterPublish {
			return
		}
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.Headers().Get(consumer.HeaderID)
		}
		prog.add(ids)
	}
	w := e2etest.NewWorkerConn(t, ctx, nc, cfg).Start(t, ctx)
	defer func() {
		if err := w.Wait(); err != nil {
			t.Error(err)
		}
	}()

	// Records are republished (same Nats-Msg-Id) until stored: a PubAck lost with a node is
	// retried, never waited for forever.
	pub, err := jspub.New(pnc, jspub.WithWindow(100), jspub.WithAckTimeout(5*time.Second),
		jspub.WithRetry(retry.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second, PerTry: 5 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	rng := rand.New(rand.NewPCG(7, 7))
	publishWave := func(wave int) {
		t.Helper()
		for i := range 100 {
			if err := pub.Publish(ctx, ingest.RecordMsg(model, fmt.Sprintf("w%d-%03d", wave, i), e2etest.RandomProtein(rng, 30, 60))); err != nil {
				t.Fatal(err)
			}
		}
		if err := pub.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	stream := cons.StreamConfig().Name
	durable := consumer.Durable(model)

	// Wave 1, then the SEQS leader's node goes down for 3 s.
	publishWave(1)
	leader := cl.StreamLeader("$G", stream)
	if leader < 0 {
		t.Fatal("SEQS has no leader")
	}
	t0 := time.Now()
	cl.Shutdown(leader)
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(3 * time.Second) // the outage is the scenario: the node stays down for 3 s
		restarted <- cl.Cluster.Restart(leader)
	}()
	done := prog.waitCount(t, 100, 60*time.Second)
	longest, first := prog.stall(t0, 100)
	t.Logf("fault 1: SEQS leader n%d down for 3s: first output %s after the kill, longest stall %s, wave done in %s (new SEQS leader n%d)",
		leader+1, first.Round(time.Millisecond), longest.Round(time.Millisecond), done.Sub(t0).Round(time.Millisecond), cl.StreamLeader("$G", stream)+1)
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}

	// Wave 2, then the consumer's leader steps down (retried while the restarted node catches up).
	publishWave(2)
	before := cl.ConsumerLeader("$G", stream, durable)
	t0 = time.Now()
	sdCtx, sdCancel := context.WithTimeout(ctx, 20*time.Second)
	err = retry.Do(sdCtx, retry.Policy{Initial: 200 * time.Millisecond, Max: 200 * time.Millisecond}, func(context.Context) error {
		return natstest.ConsumerStepDown(pnc, stream, durable)
	})
	sdCancel()
	if err != nil {
		t.Fatal(err)
	}
	done = prog.waitCount(t, 200, 60*time.Second)
	longest, first = prog.stall(t0, 200)
	t.Logf("fault 2: consumer leader stepdown (n%d → n%d): first output %s after, longest stall %s, wave done in %s",
		before+1, cl.ConsumerLeader("$G", stream, durable)+1, first.Round(time.Millisecond),
		longest.Round(time.Millisecond), done.Sub(t0).Round(time.Millisecond))

	// Wave 3, then 2 of 3 nodes go down (no quorum) for 3 s.
	publishWave(3)
	down := []int{(leader + 1) % 3, (leader + 2) % 3}
	t0 = time.Now()
	cl.Shutdown(down[0])
	cl.Shutdown(down[1])
	during := prog.count()
	time.Sleep(3 * time.Second) // the outage is the scenario: no quorum for 3 s
	// Progress during the outage is at most what was in flight as it began.
	stalled := prog.count() - during
	cl.Restart(down[0])
	cl.Restart(down[1])
	tr := time.Now()
	done = prog.waitCount(t, 300, 60*time.Second)
	_, firstAfterRestart := prog.stall(tr, 300)
	longest, _ = prog.stall(t0, 300)
	t.Logf("fault 3: n%d and n%d down for 3s (no quorum; %d ids appeared during the outage): first output %s after the restart, longest stall %s, wave done %s after the restart",
		down[0]+1, down[1]+1, stalled, firstAfterRestart.Round(time.Millisecond), longest.Round(time.Millisecond), done.Sub(tr).Round(time.Millisecond))
	t.Logf("publish retries: %d", pub.Retries())

	// Every id in the stored output (not just seen on the wire), none missing; the queue empties.
	// (Right after a restart the cluster may still answer 503 for a moment: an error is a state
	// to wait out, not a failure.)
	testutil.Eventually(t, 30*time.Second, func() (bool, string) {
		left, pend, unacked, err := queueState(ctx, js, stream, model)
		return err == nil && left == 0 && pend == 0 && unacked == 0,
			fmt.Sprintf("work queue: %d left, %d pending, %d unacked (%v)", left, pend, unacked, err)
	})
	seen := storedOutputIDs(t, ctx, js)
	dups := 0
	for wave := 1; wave <= 3; wave++ {
		for i := range 100 {
			id := fmt.Sprintf("w%d-%03d", wave, i)
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
	dl, err := consumer.ReadDeadLetters(ctx, js, stream, model, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 0 {
		t.Errorf("%d dead letters: %+v", len(dl), dl[0])
	}
}

// errDecode marks an output message that does not decode: a failure, not a state to retry.
var errDecode = errors.New("decoding output")

// storedOutputIDs reads the whole output stream (every message stored when it is called) and
// counts each id; a read that fails (a node still recovering) starts over, each read bounded by
// 15 s (a JetStream API request lost in the recovery otherwise waits out the whole budget: seen
// as "context deadline exceeded" after 30 s), for up to 60 s.
func storedOutputIDs(t *testing.T, ctx context.Context, js jetstream.JetStream) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var seen map[string]int
	pol := retry.Policy{Initial: 200 * time.Millisecond, Max: 200 * time.Millisecond, PerTry: 15 * time.Second,
		Retryable: func(err error) bool { return !errors.Is(err, errDecode) },
		OnRetry:   func(try int, err error, _ time.Duration) { t.Logf("reading the output stream, try %d: %v", try, err) }}
	err := retry.Do(ctx, pol, func(ctx context.Context) error {
		s, err := js.Stream(ctx, arrowout.DefaultStreamName)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		oc, err := js.OrderedConsumer(ctx, arrowout.DefaultStreamName, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return err
		}
		seen = map[string]int{}
		for range info.State.Msgs {
			m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				return err
			}
			_, rows, err := arrowout.Decode(m.Data())
			if err != nil {
				return fmt.Errorf("%w: %w", errDecode, err)
			}
			for _, r := range rows {
				seen[r.ID]++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the output stream: %v", err)
	}
	return seen
}
