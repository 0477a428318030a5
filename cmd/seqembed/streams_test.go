package main

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/natstest"
)

func TestEnsureStreamsIdempotent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.Connect(t, natstest.Server(t, nil))
	var cfg workerConfig
	cfg.register(flag.NewFlagSet("t", flag.ContinueOnError))
	var first, second strings.Builder
	if err := ensureStreams(ctx, js, "m", cfg, &first); err != nil {
		t.Fatal(err)
	}
	publishRecords(t, js, "m", map[string]string{"a": "MKT", "b": "MKTAY"})
	cfg.MaxDeliver = 7 // an update, not a conflict
	if err := ensureStreams(ctx, js, "m", cfg, &second); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stream SEQS: 2 messages", "seqs.in.m: 2 waiting", "consumer seqembed-m: 2 pending", "max deliver 7", "stream EMBEDDINGS: 0 messages"} {
		if !strings.Contains(second.String(), want) {
			t.Errorf("state lacks %q:\n%s", want, second.String())
		}
	}
}
