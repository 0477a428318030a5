package ingest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// TestPublishWaitsWhileInputFull: the input stream holds only a few records (max bytes,
// DiscardNew) while a file of 60 is published; publish does not fail but waits, retrying with
// backoff, while a consumer drains the work queue, and ends with every record stored once.
func TestPublishWaitsWhileInputFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := natstest.Server(t, nil)
	nc, js := natstest.Connect(t, srv)
	c, err := consumer.New(js, "m", func([]byte) error { return nil }, consumer.WithStreamMaxBytes(4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	var fa strings.Builder
	for i := range 60 {
		fmt.Fprintf(&fa, ">full%d\n%s\n", i, strings.Repeat("MKTAYIAKQR", 6))
	}
	path := filepath.Join(t.TempDir(), "full.fasta")
	if err := os.WriteFile(path, []byte(fa.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan ingest.Stats, 1)
	errc := make(chan error, 1)
	go func() {
		st, err := ingest.Publish(ctx, nc, []string{path}, ingest.Options{Model: "m"})
		done <- st
		errc <- err
	}()
	// The stream fills up while publish waits (it neither returns nor fails).
	testutil.Eventually(t, time.Minute, func() (bool, string) {
		s, err := js.Stream(ctx, "SEQS")
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case st := <-done:
			t.Fatalf("publish returned before any room was made: %+v, %v", st, <-errc)
		default:
		}
		return info.State.Msgs > 0 && info.State.Bytes+200 > 4096, fmt.Sprintf("SEQS holds %d records, %d bytes of 4096", info.State.Msgs, info.State.Bytes)
	})
	// The drainer: a worker stand-in that acks what it pulls, so the work queue makes room.
	cons, err := js.Consumer(ctx, "SEQS", consumer.Durable("m"))
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for acked < 60 {
		b, err := cons.Fetch(10, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
			acked++
		}
		if ctx.Err() != nil {
			t.Fatalf("drained %d of 60 before the deadline", acked)
		}
	}
	st := <-done
	if err := <-errc; err != nil {
		t.Fatalf("publish into a full stream: %v (stats %+v)", err, st)
	}
	if st.Stored != 60 || st.Duplicates != 0 {
		t.Fatalf("stats %+v, want 60 stored, no duplicates", st)
	}
}
