package consumer_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// residues marks the uppercase standard residues.
var residues = func() (t [256]bool) {
	for _, c := range []byte("LAGVSERTIDPKQNFYMHWCXBUZO") {
		t[c] = true
	}
	return t
}()

// validate accepts uppercase standard residues (the real one is batcher.Tokenizer.Validate).
func validate(b []byte) error {
	for i, c := range b {
		if !residues[c] {
			return fmt.Errorf("byte %q at %d", c, i)
		}
	}
	return nil
}

func hdr(id string) nats.Header {
	h := nats.Header{}
	if id != "" {
		h.Set(consumer.HeaderID, id)
	}
	return h
}

func TestDecode(t *testing.T) {
	p := consumer.Policy{MaxRecordBytes: 64, MaxResidues: 10, Validate: validate}
	reject, chunk := p, p
	reject.Overlength, chunk.Overlength = consumer.Reject, consumer.Chunk
	cases := []struct {
		name   string
		id     string
		body   string
		p      consumer.Policy
		reason string
		want   string
		trunc  bool
	}{
		{"ok", "P1", "MKTAY", p, "", "MKTAY", false},
		{"whitespace inside", "P2", " MK\nTA\r\n Y\t", p, "", "MKTAY", false},
		{"missing id", "", "MKT", p, consumer.ReasonMissingID, "", false},
		{"id with space", "a b", "MKT", p, consumer.ReasonBadID, "", false},
		{"id not utf8", "a\xffb", "MKT", p, consumer.ReasonBadID, "", false},
		{"empty", "P3", "", p, consumer.ReasonEmpty, "", false},
		{"only whitespace", "P4", " \n\n", p, consumer.ReasonEmpty, "", false},
		{"lowercase", "P5", "MKta", p, consumer.ReasonInvalid, "", false},
		{"stop codon", "P6", "MKT*", p, consumer.ReasonInvalid, "", false},
		{"non-utf8", "P7", "MK\xc3\x28", p, consumer.ReasonInvalid, "", false},
		{"too large", "P8", strings.Repeat("A", 65), p, consumer.ReasonTooLarge, "", false},
		{"over length truncated", "P9", "MKTAYIAKQRQ", p, "", "MKTAYIAKQR", true},
		{"over length rejected", "P10", "MKTAYIAKQRQ", reject, consumer.ReasonTooLong, "", false},
		{"over length chunked", "P11", "MKTAYIAKQRQ", chunk, "", "MKTAYIAKQRQ", false},
		{"max length not chunked", "P12", "MKTAYIAKQR", chunk, "", "MKTAYIAKQR", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, err := consumer.Decode(hdr(c.id), []byte(c.body), 7, c.p)
			if c.reason != "" {
				var rej *consumer.RejectError
				if !errors.As(err, &rej) || rej.Reason != c.reason || rej.StreamSeq != 7 {
					t.Fatalf("err = %v, want reason %s", err, c.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(rec.Residues) != c.want || rec.Truncated != c.trunc || rec.ID != c.id || rec.Length != len(c.want) && !c.trunc {
				t.Fatalf("got %+v", rec)
			}
			// Chunk: kept whole and flagged when over the max length, never truncated.
			if wantChunk := c.p.Overlength == consumer.Chunk && len(c.want) > c.p.MaxResidues; rec.Chunk != wantChunk {
				t.Fatalf("chunk %v, want %v", rec.Chunk, wantChunk)
			}
		})
	}
}

func publish(t *testing.T, js jetstream.JetStream, id, body string) {
	t.Helper()
	m := nats.NewMsg(consumer.Subject("m"))
	if id != "" {
		m.Header.Set(consumer.HeaderID, id)
	}
	m.Data = []byte(body)
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestDeadLetterAndDeliver runs the pull loop against a real server: valid records come out,
// every bad one is in the DLQ with its reason, and the work queue holds only the DLQ copies.
func TestDeadLetterAndDeliver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js := natstest.Connect(t, natstest.Server(t, nil))
	c, err := consumer.New(js, "m", validate, consumer.WithMaxResidues(8), consumer.WithOverlength(consumer.Reject),
		consumer.WithMaxRecordBytes(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	bad := map[string]string{ // id -> reason
		"":     consumer.ReasonMissingID,
		"E1":   consumer.ReasonEmpty,
		"L1":   consumer.ReasonInvalid,
		"S1":   consumer.ReasonInvalid,
		"B1":   consumer.ReasonTooLarge,
		"LONG": consumer.ReasonTooLong,
	}
	publish(t, js, "G1", "MKT")
	publish(t, js, "", "MKT")
	publish(t, js, "E1", "\n")
	publish(t, js, "L1", "mkt")
	publish(t, js, "S1", "MKT*")
	publish(t, js, "B1", strings.Repeat("A", 101))
	publish(t, js, "LONG", "MKTAYIAKQ")
	publish(t, js, "G2", "MK\nTA")

	h, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []consumer.Record
	for len(got) < 2 {
		select {
		case r := <-h.Records():
			got = append(got, r)
		case <-ctx.Done():
			t.Fatal("timed out waiting for records")
		}
	}
	if got[0].ID != "G1" || got[1].ID != "G2" || string(got[1].Residues) != "MKTA" {
		t.Fatalf("records %+v", got)
	}
	var msgs []jetstream.Msg
	for _, r := range got {
		msgs = append(msgs, r.Msg)
	}
	if err := consumer.AckAll(ctx, nc, msgs); err != nil {
		t.Fatal(err)
	}

	// Every bad record is in the DLQ with its reason.
	dlq, err := js.CreateOrUpdateConsumer(ctx, "SEQS", jetstream.ConsumerConfig{Durable: "dlq-reader",
		FilterSubject: consumer.DLQSubject("m"), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := dlq.Fetch(len(bad), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for m := range batch.Messages() {
		seen[m.Headers().Get(consumer.HeaderID)] = m.Headers().Get(consumer.HeaderReason)
		if m.Headers().Get(consumer.HeaderError) == "" {
			t.Errorf("DLQ copy of %q has no error text", m.Headers().Get(consumer.HeaderID))
		}
		m.Ack()
	}
	for id, reason := range bad {
		if seen[id] != reason {
			t.Errorf("DLQ %q: reason %q, want %q", id, seen[id], reason)
		}
	}
	h.Stop()
	<-h.Done()
	// The work queue ends empty (records acked, bad ones terminated, DLQ copies consumed).
	waitEmpty(t, js)
}

// waitEmpty waits until the work queue holds no message: acks and terms are applied by the
// server within milliseconds, so 20 s is ample on a loaded machine.
func waitEmpty(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() (bool, string) {
		s, err := js.Stream(context.Background(), "SEQS")
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs == 0, fmt.Sprintf("work queue empty, holds %d messages", info.State.Msgs)
	})
}

// TestStopNaksBuffered: records pulled but not handed out are nak'd on Stop and redelivered.
func TestStopNaksBuffered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	c, err := consumer.New(js, "m", validate, consumer.WithBuffer(1), consumer.WithPullBatch(10))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		publish(t, js, fmt.Sprint("P", i), "MKT")
	}
	h, err := c.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var first consumer.Record
	select {
	case first = <-h.Records():
	case <-ctx.Done():
		t.Fatal("no record delivered")
	}
	h.Stop()
	<-h.Done()
	for r := range h.Records() { // whatever was in the channel: nak it like a worker would
		r.Msg.Nak()
	}
	first.Msg.Nak()
	// A second worker gets all 10 again, promptly (nak, not AckWait).
	c2, _ := consumer.New(js, "m", validate, consumer.WithAckWait(time.Minute))
	if err := c2.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	h2, err := c2.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Stop()
	ids := map[string]bool{}
	for len(ids) < 10 {
		select {
		case r := <-h2.Records():
			ids[r.ID] = true
			r.Msg.Ack()
		case <-ctx.Done():
			t.Fatalf("only %d of 10 records redelivered after Stop", len(ids))
		}
	}
}

// TestStopWhileRecordsArrive: a consumer stopped while records stream into its open pull naks
// every one that arrives, and leaves no record with the server as sent to it: a second worker
// gets all of them within seconds, where one sent to a pull its worker had already given up on
// would sit out the 10-minute AckWait.
func TestStopWhileRecordsArrive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	newConsumer := func() *consumer.Consumer {
		// A pull batch the flood cannot fill: the stopping pull stays open while records arrive.
		c, err := consumer.New(js, "m", validate, consumer.WithAckWait(10*time.Minute), consumer.WithPullBatch(50_000))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		return c
	}
	h, err := newConsumer().Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	started, published := make(chan struct{}), make(chan error, 1)
	go func() {
		for i := range n {
			if i == 100 {
				close(started)
			}
			m := nats.NewMsg(consumer.Subject("m"))
			m.Header.Set(consumer.HeaderID, fmt.Sprint("F", i))
			m.Data = []byte("MKT")
			if _, err := js.PublishMsg(ctx, m); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	seen := map[string]bool{}
	select {
	case r := <-h.Records(): // the flood reaches the consumer
		seen[r.ID] = true
		r.Msg.Ack()
	case <-ctx.Done():
		t.Fatal("no record delivered")
	}
	<-started
	h.Stop()
	for r := range h.Records() { // handed out before Stop took hold: a worker finishes these
		seen[r.ID] = true
		r.Msg.Ack()
	}
	<-h.Done()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	first := len(seen)
	h2, err := newConsumer().Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Stop()
	for len(seen) < n {
		select {
		case r := <-h2.Records():
			seen[r.ID] = true
			r.Msg.Ack()
		case <-ctx.Done():
			t.Fatalf("%d of %d records seen (%d by the stopped consumer): the rest were left to AckWait", len(seen), n, first)
		}
	}
	t.Logf("%d records by the stopped consumer, %d by the second", first, n-first)
}

func TestOptions(t *testing.T) {
	for _, opt := range []consumer.Option{consumer.WithAckWait(0), consumer.WithMaxDeliver(-1), consumer.WithStream("a.b"), consumer.WithLogger(nil)} {
		if _, err := consumer.New(nil, "m", validate, opt); !errors.Is(err, consumer.ErrOption) {
			t.Errorf("err = %v, want ErrOption", err)
		}
	}
	if _, err := consumer.New(nil, "a.b", validate); !errors.Is(err, consumer.ErrOption) {
		t.Errorf("dotted model: err = %v", err)
	}
	if _, err := consumer.ParseOverlength("cut"); !errors.Is(err, consumer.ErrOption) {
		t.Errorf("ParseOverlength: err = %v", err)
	}
	for s, want := range map[string]consumer.Overlength{"truncate": consumer.Truncate, "reject": consumer.Reject, "chunk": consumer.Chunk} {
		if got, err := consumer.ParseOverlength(s); got != want || err != nil {
			t.Errorf("ParseOverlength(%q) = %v, %v", s, got, err)
		}
	}
}

// TestDecodeHeaderNames: Seq-Id is matched in any case; values that disagree are a bad id; a
// missing id names the headers seen.
func TestDecodeHeaderNames(t *testing.T) {
	p := consumer.Policy{Validate: validate}
	cases := []struct {
		name   string
		h      nats.Header
		id     string
		reason string
		msg    string
	}{
		{"lower", nats.Header{"seq-id": {"P1"}}, "P1", "", ""},
		{"upper", nats.Header{"SEQ-ID": {"P2"}}, "P2", "", ""},
		{"two cases agreeing", nats.Header{"Seq-Id": {"P3"}, "seq-id": {"P3"}}, "P3", "", ""},
		{"two cases disagreeing", nats.Header{"Seq-Id": {"P4"}, "SEQ-ID": {"P5"}}, "", consumer.ReasonBadID, `disagree`},
		{"no headers", nil, "", consumer.ReasonMissingID, "(no headers)"},
		{"other headers", nats.Header{"Seq_Id": {"P6"}, "Content-Type": {"x"}}, "", consumer.ReasonMissingID,
			`headers seen: "Content-Type", "Seq_Id"`},
		{"empty value", nats.Header{"seq-id": {""}}, "", consumer.ReasonMissingID, "Seq-Id header is empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, err := consumer.Decode(c.h, []byte("MKT"), 3, p)
			if c.reason == "" {
				if err != nil || rec.ID != c.id {
					t.Fatalf("got %+v, %v; want id %q", rec, err, c.id)
				}
				return
			}
			var rej *consumer.RejectError
			if !errors.As(err, &rej) || rej.Reason != c.reason || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want reason %s mentioning %q", err, c.reason, c.msg)
			}
		})
	}
	many := nats.Header{}
	for i := range 40 {
		many[fmt.Sprintf("H%02d-%s", i, strings.Repeat("n", 100))] = []string{"v"}
	}
	_, err := consumer.Decode(many, []byte("MKT"), 3, p)
	if err == nil || len(err.Error()) > 2000 || !strings.Contains(err.Error(), "and 24 more") {
		t.Fatalf("many headers: %d-byte error %v", len(fmt.Sprint(err)), err)
	}
}

// TestDecodeRecordHeaders: the optional headers, by name in any case: Seq-Description is carried
// cleaned and capped at MaxDescriptionBytes (never a reason to refuse); Seq-Index and
// Seqembed-Stop-Stripped are carried, -1 and false when absent, and an unreadable or disagreeing
// value is bad_header. SeqSHA256 hashes the residues as received: whitespace removed, before
// truncation.
func TestDecodeRecordHeaders(t *testing.T) {
	p := consumer.Policy{MaxResidues: 4, Validate: validate}
	long := strings.Repeat("é", consumer.MaxDescriptionBytes) // 2 bytes each: cut at a character boundary
	cases := []struct {
		name   string
		h      nats.Header
		desc   string
		index  int64
		strip  bool
		reason string
	}{
		{"none", nats.Header{}, "", -1, false, ""},
		{"all", nats.Header{"Seq-Description": {"DNA gyrase subunit B"}, "Seq-Index": {"41"}, "Seqembed-Stop-Stripped": {"1"}},
			"DNA gyrase subunit B", 41, true, ""},
		{"any case", nats.Header{"seq-description": {" chaperone "}, "SEQ-INDEX": {"0"}, "seqembed-stop-stripped": {"true"}},
			"chaperone", 0, true, ""},
		{"control and invalid utf8", nats.Header{"Seq-Description": {"a\tb\x01c\xffd"}}, "a b c\uFFFDd", -1, false, ""},
		{"long", nats.Header{"Seq-Description": {long}}, long[:consumer.MaxDescriptionBytes], -1, false, ""},
		{"agreeing", nats.Header{"Seq-Index": {"7"}, "seq-index": {"7"}, "Seqembed-Stop-Stripped": {"0"}}, "", 7, false, ""},
		{"index not a number", nats.Header{"Seq-Index": {"first"}}, "", 0, false, consumer.ReasonBadHeader},
		{"negative index", nats.Header{"Seq-Index": {"-1"}}, "", 0, false, consumer.ReasonBadHeader},
		{"indexes disagree", nats.Header{"Seq-Index": {"1"}, "SEQ-INDEX": {"2"}}, "", 0, false, consumer.ReasonBadHeader},
		{"stop stripped junk", nats.Header{"Seqembed-Stop-Stripped": {"yes"}}, "", 0, false, consumer.ReasonBadHeader},
	}
	sum := sha256.Sum256([]byte("MKTAYIAK"))
	whole := hex.EncodeToString(sum[:])
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.h.Set(consumer.HeaderID, "P1")
			rec, err := consumer.Decode(c.h, []byte("MKTA\nYIAK\n"), 9, p)
			if c.reason != "" {
				var rej *consumer.RejectError
				if !errors.As(err, &rej) || rej.Reason != c.reason || !errors.Is(err, consumer.ErrBadHeader) || rej.ID != "P1" {
					t.Fatalf("err = %v, want reason %s", err, c.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rec.Description != c.desc || rec.InputIndex != c.index || rec.StopStripped != c.strip {
				t.Fatalf("got description %q index %d stripped %v, want %q %d %v", rec.Description, rec.InputIndex, rec.StopStripped,
					c.desc, c.index, c.strip)
			}
			if rec.SeqSHA256 != whole || rec.SeqSHA256 != consumer.SeqSHA256([]byte("MKTAYIAK")) || !rec.Truncated ||
				string(rec.Residues) != "MKTA" || rec.Length != 8 {
				t.Fatalf("got %+v: want the whole sequence's hash %s", rec, whole)
			}
		})
	}
	if got := consumer.CleanDescription(strings.Repeat("a", 1023) + "中"); got != strings.Repeat("a", 1023) {
		t.Errorf("a 3-byte character over the cap: %d bytes kept", len(got))
	}
}
