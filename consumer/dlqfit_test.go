package consumer_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// publishBody publishes body with headers hdr on model m's subject, straight to the stream.
func publishBody(t *testing.T, js jetstream.JetStream, hdr nats.Header, body []byte) uint64 {
	t.Helper()
	m := nats.NewMsg(consumer.Subject("m"))
	m.Header = hdr
	m.Data = body
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatalf("publishing %d bytes: %v", len(body), err)
	}
	return ack.Sequence
}

// TestDeadLetterCopyFits: records as large as max_payload allows are dead-lettered both ways
// (rejected by the pull loop, and max-delivered through the advisory watcher): each copy is
// stored under the server's max_payload, whole when it fits and otherwise a prefix of the body
// flagged Seqembed-Body-Truncated with the full length, and the original leaves the work queue.
func TestDeadLetterCopyFits(t *testing.T) {
	const (
		mib       = 1 << 20
		nearOneMi = 1_048_400 // 176 bytes under 1 MiB: room for the record's own headers only
		producer  = "loader-7 (uniref50 2026_01, shard 0042)"
	)
	cases := []struct {
		name       string
		maxPayload int32
		bodies     map[string]int // id -> body size; ids starting with "BAD" are invalid, the others are nak'd to max deliveries
		cut        map[string]bool
	}{
		{"max_payload 1MiB", mib, map[string]int{"BAD1": nearOneMi, "MAX1": nearOneMi},
			map[string]bool{"BAD1": true, "MAX1": true}},
		{"max_payload 16MiB", 16 * mib,
			map[string]int{"BAD1": nearOneMi, "MAX1": nearOneMi, "BAD2": 16*mib - 176, "MAX2": 16*mib - 176},
			map[string]bool{"BAD2": true, "MAX2": true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			srv := natstest.Server(t, func(o *server.Options) { o.MaxPayload = tc.maxPayload })
			nc, js := natstest.Connect(t, srv)
			if got := nc.MaxPayload(); got != int64(tc.maxPayload) {
				t.Fatalf("server max_payload %d, want %d", got, tc.maxPayload)
			}
			obs := &countObs{}
			// An invalid record must be dead-lettered by the pull loop before its second delivery's
			// AckWait runs out (else the advisory watcher gets it first, as max_deliveries): 300 ms
			// was too short for a 16 MiB copy under the race detector on a loaded 2-core machine
			// (CI, 2026-12-03). The nak'd records do not wait for AckWait (a nak redelivers at once).
			w, h := startWatched(t, ctx, js, consumer.WithObserver(obs), consumer.WithMaxRecordBytes(32*mib),
				consumer.WithAckWait(3*time.Second))
			wait := nakAll(h)
			bodies := map[string][]byte{}
			seqs := map[string]uint64{}
			// Published in id order, the invalid records (BAD…) first: the pull loop meets them
			// before the nak'd ones, whatever the map's order.
			for _, id := range slices.Sorted(maps.Keys(tc.bodies)) {
				n := tc.bodies[id]
				fill := "A" // valid: delivered, nak'd until max deliveries
				if strings.HasPrefix(id, "BAD") {
					fill = "a" // invalid residues: dead-lettered by the pull loop
				}
				bodies[id] = bytes.Repeat([]byte(fill), n)
				hdr := nats.Header{}
				hdr.Set(consumer.HeaderID, id)
				hdr.Set("Producer", producer) // the record still fits; its copy, whole, does not
				seqs[id] = publishBody(t, js, hdr, bodies[id])
			}
			// A record is dead-lettered within about a second (MaxDeliver 2); 16 MiB copies take
			// longer under the race detector.
			testutil.Eventually(t, 60*time.Second, func() (bool, string) {
				n := subjectCount(t, js, consumer.Subject("m"))
				return n == 0, fmt.Sprintf("input subject empty, %d records left", n)
			})
			h.Stop()
			wait()
			w.Stop()
			<-w.Done()

			dl := deadLetters(t, js)
			if len(dl) != len(tc.bodies) {
				t.Fatalf("%d dead letters, want %d", len(dl), len(tc.bodies))
			}
			for _, d := range dl {
				body, ok := bodies[d.ID]
				if !ok {
					t.Fatalf("unexpected dead letter %q", d.ID)
				}
				want := consumer.ReasonMaxDeliveries
				if strings.HasPrefix(d.ID, "BAD") {
					want = consumer.ReasonInvalid
				}
				if d.Reason != want || d.StreamSeq != seqs[d.ID] || d.Error == "" {
					t.Errorf("%s: reason %q, stream seq %d, error %q; want %s, %d", d.ID, d.Reason, d.StreamSeq, d.Error, want, seqs[d.ID])
				}
				if d.Truncated != tc.cut[d.ID] || d.BodyBytes != len(body) || !bytes.HasPrefix(body, d.Data) {
					t.Errorf("%s: truncated %v (want %v), body %d of %d bytes", d.ID, d.Truncated, tc.cut[d.ID], len(d.Data), d.BodyBytes)
				}
				// The copy is only as much shorter as its own headers need.
				if d.Truncated && len(d.Data) < len(body)-2048 {
					t.Errorf("%s: copy keeps %d of %d bytes", d.ID, len(d.Data), len(body))
				}
				if len(body) > 2*mib {
					continue // reading a 16 MiB copy back again costs seconds under the race detector
				}
				raw, err := getRaw(ctx, js, d.DLQSeq)
				if err != nil {
					t.Fatal(err)
				}
				if got := raw.Header.Get(consumer.HeaderBodyTruncated); d.Truncated != (got == strconv.Itoa(len(body))) {
					t.Errorf("%s: %s = %q", d.ID, consumer.HeaderBodyTruncated, got)
				}
				if got := raw.Header.Get("Producer"); got != producer {
					t.Errorf("%s: the record's Producer header is %q in the copy", d.ID, got)
				}
			}
			for _, r := range []string{consumer.ReasonInvalid, consumer.ReasonMaxDeliveries} {
				if n, want := obs.count(r), len(tc.bodies)/2; n != want {
					t.Errorf("observer counted %d %s, want %d", n, r, want)
				}
				if n := obs.count("dropped:" + r); n != 0 {
					t.Errorf("observer counted %d dropped %s", n, r)
				}
			}
		})
	}
}

func getRaw(ctx context.Context, js jetstream.JetStream, seq uint64) (*jetstream.RawStreamMsg, error) {
	s, err := js.Stream(ctx, "SEQS")
	if err != nil {
		return nil, err
	}
	return s.GetMsg(ctx, seq)
}

// TestDeadLetterUnfitDropped: when no copy of a record can be stored at any size (here the
// stream's max_msg_size leaves no room for the copy's own headers), the record is still taken
// off the work queue, terminated by the pull loop or deleted by the advisory watcher, and
// counted as dropped.
func TestDeadLetterUnfitDropped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	obs := &countObs{}
	c, err := consumer.New(js, "m", validate)
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.StreamConfig()
	cfg.MaxMsgSize = 140 // a record fits, a copy (Seq-Id, reason, stream seq, msg id) does not
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	w, h := startWatched(t, ctx, js, consumer.WithObserver(obs))
	wait := nakAll(h)
	long := strings.Repeat("x", 100)
	hdr := nats.Header{}
	hdr.Set(consumer.HeaderID, long+" y") // a space: bad_id, dead-lettered by the pull loop
	publishBody(t, js, hdr, []byte("MKT"))
	hdr = nats.Header{}
	hdr.Set(consumer.HeaderID, long) // valid: nak'd to max deliveries
	publishBody(t, js, hdr, []byte("MKT"))
	testutil.Eventually(t, waitBudget, func() (bool, string) {
		n := subjectCount(t, js, consumer.Subject("m"))
		return n == 0, fmt.Sprintf("input subject empty, %d records left", n)
	})
	h.Stop()
	wait()
	w.Stop()
	<-w.Done()
	if dl := deadLetters(t, js); len(dl) != 0 {
		t.Fatalf("dead letters %+v, want none", dl)
	}
	if a, b := obs.count("dropped:"+consumer.ReasonBadID), obs.count("dropped:"+consumer.ReasonMaxDeliveries); a != 1 || b != 1 {
		t.Errorf("observer counted %d dropped bad_id and %d dropped max_deliveries, want 1 each", a, b)
	}
}

// TestHeaderCase: Seq-Id is found in any case (records are delivered, and dead-lettered under
// their id with the header name canonical in the copy); a record without it is dead-lettered
// with a message naming the headers it had.
func TestHeaderCase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js := natstest.Connect(t, natstest.Server(t, nil))
	c, err := consumer.New(js, "m", validate)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	pub := func(name, id, body string, extra ...string) {
		t.Helper()
		hdr := nats.Header{}
		if name != "" {
			hdr[name] = []string{id} // as sent: nats.Header keeps the name's case
		}
		for i := 0; i+1 < len(extra); i += 2 {
			hdr[extra[i]] = []string{extra[i+1]}
		}
		publishBody(t, js, hdr, []byte(body))
	}
	pub("seq-id", "low", "MKT")
	pub("SEQ-ID", "up", "MKT")
	pub("sEq-Id", "bad-low", "mkt") // invalid residues
	pub("", "", "MKT", "Content-Type", "text/plain", "seqid", "X")
	pub("Seq-Id", "", "MKT") // present but empty

	h, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var msgs []jetstream.Msg
	for len(got) < 2 {
		select {
		case r := <-h.Records():
			got = append(got, r.ID)
			msgs = append(msgs, r.Msg)
		case <-ctx.Done():
			t.Fatalf("records %v", got)
		}
	}
	if got[0] != "low" || got[1] != "up" {
		t.Fatalf("records %v, want [low up]", got)
	}
	if err := consumer.AckAll(ctx, nc, msgs); err != nil {
		t.Fatal(err)
	}
	var dl []consumer.DeadLetter
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		dl = deadLetters(t, js)
		return len(dl) == 3, fmt.Sprintf("3 dead letters, have %+v", dl)
	})
	h.Stop()
	<-h.Done()
	if d := dl[0]; d.ID != "bad-low" || d.Reason != consumer.ReasonInvalid {
		t.Errorf("dead letter %+v, want bad-low invalid_residue", d)
	}
	raw, err := getRaw(ctx, js, dl[0].DLQSeq)
	if err != nil {
		t.Fatal(err)
	}
	if v := raw.Header[consumer.HeaderID]; len(v) != 1 || v[0] != "bad-low" || len(raw.Header["sEq-Id"]) != 0 {
		t.Errorf("copy headers %v: want Seq-Id under its canonical name only", raw.Header)
	}
	if d := dl[1]; d.Reason != consumer.ReasonMissingID || !strings.Contains(d.Error, `headers seen: "Content-Type", "seqid"`) {
		t.Errorf("dead letter %+v: want missing_id naming the headers seen", d)
	}
	if d := dl[2]; d.Reason != consumer.ReasonMissingID || !strings.Contains(d.Error, "Seq-Id header is empty") {
		t.Errorf("dead letter %+v: want missing_id for an empty Seq-Id", d)
	}
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		n := subjectCount(t, js, consumer.Subject("m"))
		return n == 0, fmt.Sprintf("input subject empty, %d records left", n)
	})
}
