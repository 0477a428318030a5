package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/pipeline"
)

// TestSinkJobStopsByItself: two jobs published onto one stream and embedded by one worker
// process; `sink --job` started before its job is published waits for it, writes only that job's
// rows (reused ids of the other genome are not there), stops by itself once every record of the
// job is embedded or dead-lettered (one record has a residue outside the alphabet: the worker
// dead-letters it on the job's subject), says so, and exits 0. A job name of another model is a
// usage error.
func TestSinkJobStopsByItself(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	a, b := prokkaGenomes(t, dir)
	bad := filepath.Join(dir, "bad.faa")
	if err := os.WriteFile(bad, []byte(">PROKKA_00009 odd residue\nMKTJAYIAK\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := natstest.Server(t, nil)
	nats := "--nats " + srv.ClientURL() + " "
	// Without a stream, publish fails at once (nothing would capture its records).
	if c := runChild(t, "publish "+nats+"--model esm2-tiny --quiet --job genomeA "+a, nil); c.code != cli.ExitFailed ||
		!strings.Contains(c.stderr, "no stream captures seqs.in.esm2-tiny.genomeA: start a worker for model esm2-tiny or run `seqembed streams --name esm2-tiny` first") {
		t.Fatalf("publish without a stream: exit %d\n%s", c.code, c.stderr)
	}
	_, js := natstest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ensureStreams(ctx, js, "esm2-tiny", pipeline.Default(), nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	worker, exited := startWorkerProcess(t, srv, "--threads 1 --http-addr 127.0.0.1:0 --log-level warn")
	t.Cleanup(func() {
		_ = worker.Process.Signal(syscall.SIGTERM)
		<-exited
	})

	outA := filepath.Join(dir, "a.parquet")
	// The sink starts first and says it waits for the job (read from its stderr as it comes).
	sink := exec.Command(os.Args[0], "-test.run=^$")
	sink.Env = append(os.Environ(), "SEQEMBED_TEST_MAIN=sink "+nats+"--job genomeA --out "+outA)
	pr, pw := io.Pipe()
	var sinkErr strings.Builder
	sink.Stderr = io.MultiWriter(pw, &sinkErr)
	if err := sink.Start(); err != nil {
		t.Fatal(err)
	}
	sinkDone := make(chan int, 1)
	go func() { _ = sink.Wait(); pw.Close(); sinkDone <- sink.ProcessState.ExitCode() }()
	waiting := bufio.NewScanner(pr)
	for waiting.Scan() && !strings.Contains(waiting.Text(), "sink: job genomeA not published yet; waiting") {
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()

	model := "--model esm2-tiny --quiet "
	if c := runChild(t, "publish "+nats+model+"--job genomeA --allow-id-conflicts "+a+" "+bad, nil); c.code != cli.ExitOK ||
		!strings.Contains(c.stderr, "job genomeA: 4 records published in 1 publish runs") {
		t.Fatalf("publish genomeA: exit %d\n%s", c.code, c.stderr)
	}
	if c := runChild(t, "publish "+nats+model+"--job genomeB "+b, nil); c.code != cli.ExitOK {
		t.Fatalf("publish genomeB: exit %d\n%s", c.code, c.stderr)
	}
	code := <-sinkDone
	if c := sinkErr.String(); code != cli.ExitOK || !strings.Contains(c, "sink: job genomeA not published yet; waiting") ||
		!strings.Contains(c, "sink: 3 rows (0 duplicates dropped) -> "+outA) ||
		!strings.Contains(c, "sink: job genomeA complete: 4 records published, 3 embedded, 1 dead-lettered (on seqs.dlq.esm2-tiny.genomeA)") {
		t.Fatalf("sink --job genomeA: exit %d\n%s", code, c)
	}
	_, rows, err := arrowout.ReadParquet(outA)
	if err != nil || len(rows) != 3 {
		t.Fatalf("%s: %d rows, %v", outA, len(rows), err)
	}
	for _, r := range rows {
		if r.ID == "PROKKA_00001" && r.Description != "DNA gyrase subunit B" {
			t.Errorf("genomeA's file holds genomeB's %s (%q)", r.ID, r.Description)
		}
	}

	// The other job, sunk after it is done; a wrong --model is refused before anything is written.
	outB := filepath.Join(dir, "b.arrow")
	if c := runChild(t, "sink "+nats+"--job genomeB --model other --out "+outB, nil); c.code != cli.ExitUsage ||
		!strings.Contains(c.stderr, "job genomeB is for model esm2-tiny, not --model other") {
		t.Fatalf("sink --job with another model: exit %d\n%s", c.code, c.stderr)
	}
	if c := runChild(t, "sink "+nats+"--job genomeB --out "+outB, nil); c.code != cli.ExitOK ||
		!strings.Contains(c.stderr, "sink: job genomeB complete: 3 records published, 3 embedded, 0 dead-lettered") {
		t.Fatalf("sink --job genomeB: exit %d\n%s", c.code, c.stderr)
	}
	// Publishing genomeB's job again under another model is refused.
	if c := runChild(t, "publish "+nats+"--model esm2-other --quiet --job genomeB "+b, nil); c.code != cli.ExitUsage ||
		!strings.Contains(c.stderr, "job \"genomeB\" is for model esm2-tiny, not esm2-other") {
		t.Fatalf("publish a job under another model: exit %d\n%s", c.code, c.stderr)
	}
	// Without --job the sink reads all of the model's embeddings: both jobs'.
	all := filepath.Join(dir, "all.parquet")
	if c := runChild(t, "sink "+nats+"--out "+all+" --expect 5 --allow-id-conflicts", nil); c.code != cli.ExitOK ||
		!strings.Contains(c.stderr, "sink: 5 rows (1 duplicates dropped)") {
		t.Fatalf("sink of every job: exit %d\n%s", c.code, c.stderr)
	}
}
