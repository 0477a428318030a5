package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/pipeline"
)

// prokkaGenomes writes two prokka-style genomes whose ids are reused with other sequences
// (PROKKA_00001, PROKKA_00003), sharing one record (PROKKA_00002, the same sequence).
func prokkaGenomes(t *testing.T, dir string) (a, b string) {
	t.Helper()
	a, b = filepath.Join(dir, "genomeA.faa"), filepath.Join(dir, "genomeB.faa")
	for path, data := range map[string]string{
		a: ">PROKKA_00001 DNA gyrase subunit B\nMKTAYIAKQRQISFVKSHFSRQ*\n>PROKKA_00002 hypothetical protein\nMSTNPKPQRKTKRNTNRRPQ\n" +
			">PROKKA_00003 Chaperone\nMGKIIGIDLGTTNSCVA\n",
		b: ">PROKKA_00001 Elongation factor Tu\nMSKEKFERTKPHVNVGTIG\n>PROKKA_00002 hypothetical protein\nMSTNPKPQRKTKRNTNRRPQ\n" +
			">PROKKA_00003 tRNA ligase\nMAAAAAAAAAAAAAAAAAAAA\n",
	} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// TestIDConflictExitCodes: `run` and `publish` of two genomes with reused ids finish with every
// sequence embedded (published) and exit 3, naming the conflicts and, for run, the conflicts
// file; --allow-id-conflicts exits 0; the same genome given twice is deduplicated, exit 0.
func TestIDConflictExitCodes(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	a, b := prokkaGenomes(t, dir)
	out := filepath.Join(dir, "emb.parquet")
	model := "--model " + e2etest.TinyModel + " --threads 1 --quiet"
	c := runChild(t, "run "+a+" "+b+" --out "+out+" "+model, nil)
	if c.code != cli.ExitRejected || !strings.Contains(c.stdout, "6 records read from 2 files, 5 embedded") ||
		!strings.Contains(c.stdout, "2 id conflicts: 2 ids came with more than one sequence (e.g. PROKKA_00001, PROKKA_00003)") ||
		!strings.Contains(c.stderr, "ids came with more than one sequence: 2 ids, 2 more rows (every sequence embedded, one row each), listed in "+out+".conflicts.tsv (--allow-id-conflicts exits 0)") {
		t.Fatalf("run with reused ids: exit %d, want 3\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}
	_, rows, err := arrowout.ReadParquet(out)
	if err != nil || len(rows) != 5 {
		t.Fatalf("%s: %d rows, %v", out, len(rows), err)
	}
	data, err := os.ReadFile(out + ".conflicts.tsv")
	if err != nil || strings.Count(string(data), "\n") != 5 || !strings.Contains(string(data), "\tElongation factor Tu\n") {
		t.Errorf("conflicts file (%v):\n%s", err, data)
	}
	c = runChild(t, "run "+a+" "+b+" --out "+out+" --force --allow-id-conflicts "+model, nil)
	if c.code != cli.ExitOK || !strings.Contains(c.stdout, "2 id conflicts") {
		t.Errorf("--allow-id-conflicts: exit %d\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}
	twice := filepath.Join(dir, "twice.arrow")
	c = runChild(t, "run "+a+" "+a+" --out "+twice+" "+model, nil)
	if c.code != cli.ExitOK || !strings.Contains(c.stdout, "6 records read from 2 files, 3 embedded") ||
		!strings.Contains(c.stdout, "3 duplicate records") || strings.Contains(c.stdout, "conflict") {
		t.Errorf("one genome twice: exit %d\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}
	if _, err := os.Stat(twice + ".conflicts.tsv"); err == nil {
		t.Error("a conflicts file without conflicts")
	}

	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ensureStreams(ctx, js, "m", pipeline.Default(), nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	c = runChild(t, "publish --nats "+srv.ClientURL()+" --model m --quiet "+a+" "+b, nil)
	if c.code != cli.ExitRejected || !strings.Contains(c.stderr, "(5 stored, 1 duplicate records, 0 dead-lettered") ||
		!strings.Contains(c.stderr, "2 records reuse an earlier record's id with another sequence, e.g. PROKKA_00001, PROKKA_00003") {
		t.Errorf("publish with reused ids: exit %d, want 3\n%s", c.code, c.stderr)
	}
	c = runChild(t, "publish --nats "+srv.ClientURL()+" --model m --quiet --allow-id-conflicts "+b+" "+a, nil)
	if c.code != cli.ExitOK || !strings.Contains(c.stderr, "(0 stored, 6 duplicate records") {
		t.Errorf("publish again with --allow-id-conflicts: exit %d\n%s", c.code, c.stderr)
	}
}

// TestSinkModelsAndConflicts runs `seqembed sink` against a stream holding two models'
// embeddings: without --model it refuses (exit 2) before writing anything, naming both; with
// --model it writes that model's rows, keeps both rows of a reused id and exits 3 with the
// conflicts file written (0 with --allow-id-conflicts).
func TestSinkModelsAndConflicts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	if _, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	batch := func(seq0 uint64, ids, shas []string) *arrowout.Batch {
		b := &arrowout.Batch{}
		for i, id := range ids {
			b.IDs = append(b.IDs, id)
			b.StreamSeqs = append(b.StreamSeqs, seq0+uint64(i))
			b.Lengths, b.InputLengths = append(b.Lengths, 10), append(b.InputLengths, 10)
			b.Truncated, b.StopStripped = append(b.Truncated, false), append(b.StopStripped, false)
			b.Embeddings = append(b.Embeddings, float32(i), 1)
			b.SeqSHA256s, b.Descriptions = append(b.SeqSHA256s, shas[i]), append(b.Descriptions, "d "+shas[i])
			b.InputIndexes = append(b.InputIndexes, int64(seq0)+int64(i))
		}
		return b
	}
	for _, m := range []struct {
		model string
		b     *arrowout.Batch
	}{
		{"esm2-a", batch(1, []string{"PROKKA_00001", "PROKKA_00002"}, []string{"a1", "a2"})},
		{"esm2-a", batch(3, []string{"PROKKA_00001", "PROKKA_00002"}, []string{"b1", "a2"})},
		{"esm2-b", batch(5, []string{"x"}, []string{"x1"})},
	} {
		p, err := arrowout.NewPublisher(js, "embeddings."+m.model, arrowout.Meta{Model: m.model, Dim: 2})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(ctx, m.b); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "emb.parquet")
	nats := "--nats " + srv.ClientURL() + " "
	c := runChild(t, "sink "+nats+"--out "+out+" --idle 2s", nil)
	if c.code != cli.ExitUsage || !strings.Contains(c.stderr, "stream EMBEDDINGS holds the embeddings of 2 models") ||
		!strings.Contains(c.stderr, "esm2-a: esm2-a (dim 2, model sha256 none), 2 messages") ||
		!strings.Contains(c.stderr, "esm2-b: esm2-b (dim 2") || !strings.Contains(c.stderr, "pass --model NAME") {
		t.Fatalf("sink over two models: exit %d, want 2\n%s", c.code, c.stderr)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("the refused sink wrote %v", left)
	}
	c = runChild(t, "sink "+nats+"--model esm2-a --out "+out+" --expect 3", nil)
	if c.code != cli.ExitRejected || !strings.Contains(c.stderr, "sink: 3 rows (1 duplicates dropped) -> "+out) ||
		!strings.Contains(c.stderr, "1 id conflicts: 1 ids came with more than one sequence (e.g. PROKKA_00001)") {
		t.Fatalf("sink with a reused id: exit %d, want 3\n%s", c.code, c.stderr)
	}
	data, err := os.ReadFile(out + ".conflicts.tsv")
	if err != nil || string(data) != "id\tseq_sha256\tinput_length\tinput_index\tstream_seq\tdescription\n"+
		"PROKKA_00001\ta1\t10\t1\t1\td a1\nPROKKA_00001\tb1\t10\t3\t3\td b1\n" {
		t.Errorf("conflicts file (%v):\n%q", err, data)
	}
	tsv := filepath.Join(dir, "c.tsv")
	c = runChild(t, "sink "+nats+"--model esm2-b --out "+out+" --force --conflicts "+tsv+" --expect 1 --allow-id-conflicts", nil)
	if c.code != cli.ExitOK {
		t.Errorf("sink of the other model: exit %d\n%s", c.code, c.stderr)
	}
	if m, rows, err := arrowout.ReadParquet(out); err != nil || m.Model != "esm2-b" || len(rows) != 1 {
		t.Errorf("%s: %+v, %d rows, %v", out, m, len(rows), err)
	}
	if _, err := os.Stat(tsv); err == nil {
		t.Error("a conflicts file without conflicts")
	}
}
