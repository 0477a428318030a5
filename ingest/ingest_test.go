package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/natstest"
	"github.com/seqembed/seqembed/internal/testutil"
)

// prodigal is a prodigal-style protein file: four records ending in '*' (one of them with the
// '*' wrapped onto a line of its own), a partial gene without one, and a transeq-style record
// with an internal '*' as well.
var prodigal = filepath.Join("testdata", "prodigal.faa")

// record is a published input record read back from the stream.
type record struct {
	body     string
	stripped bool
}

// setup starts a nats-server with the input stream and model's consumer.
func setup(t *testing.T, model string) (context.Context, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	nc, js := natstest.Connect(t, natstest.Server(t, nil))
	cons, err := consumer.New(js, model, func([]byte) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, nc, js
}

// inputs reads the model's input records back from the stream by id (direct gets: nothing is
// consumed).
func inputs(t *testing.T, ctx context.Context, js jetstream.JetStream, model string) map[string]record {
	t.Helper()
	out := map[string]record{}
	for _, m := range stored(t, ctx, js, model) {
		out[m.Header.Get(consumer.HeaderID)] = record{string(m.Data), m.Header.Get(ingest.HeaderStopStripped) == "1"}
	}
	return out
}

// fileRecords reads path with the fasta package: id → residues and header line.
func fileRecords(t *testing.T, path string) (seqs map[string]string, lines map[string]int) {
	t.Helper()
	r, closer, err := fasta.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	seqs, lines = map[string]string{}, map[string]int{}
	for {
		rec, err := r.Next()
		if err != nil {
			return seqs, lines
		}
		seqs[rec.ID], lines[rec.ID] = string(rec.Seq), rec.Line
	}
}

// TestStopCodonStrip publishes the prodigal file with the default policy: every record is
// stored, exactly one trailing '*' removed and the record flagged; the partial gene is
// untouched; the transeq record keeps its inner '*' (the worker rejects it).
func TestStopCodonStrip(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	st, err := ingest.Publish(ctx, nc, []string{prodigal}, ingest.Options{Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 1 || st.Records != 5 || st.Stored != 5 || st.StopStripped != 4 || st.DeadLettered != 0 {
		t.Fatalf("stats %+v", st)
	}
	seqs, _ := fileRecords(t, prodigal)
	got := inputs(t, ctx, js, "m")
	for id, seq := range seqs {
		want := record{strings.TrimSuffix(seq, "*"), strings.HasSuffix(seq, "*")}
		if got[id] != want {
			t.Errorf("%s: stored %+v, want %+v", id, got[id], want)
		}
	}
	if r := got["NC_000913.3_2"]; len(r.body) != 60 || !r.stripped {
		t.Errorf("the '*' on its own line: %+v", r)
	}
	if r := got["EMBOSS_001_4"]; r.body != "MKVLAAGIVGLLAQ*GAEGKTAVVLDE" {
		t.Errorf("inner '*' record stored as %q", r.body)
	}
	if r := got["NC_000913.3_3"]; r.stripped || strings.HasSuffix(seqs["NC_000913.3_3"], "*") {
		t.Errorf("partial gene: %+v", r)
	}
}

// TestStopCodonReject publishes the prodigal file with StopReject: the four records ending in
// '*' are dead-lettered at publish time (invalid_residue) with the file, header line and the
// 1-based position of the '*' (the sequence length); the partial gene is stored; the rejects
// file lists them.
func TestStopCodonReject(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	tsv := filepath.Join(t.TempDir(), "rejects.tsv")
	rf, err := ingest.CreateRejectsFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	var rejects []ingest.Reject
	st, err := ingest.Publish(ctx, nc, []string{prodigal}, ingest.Options{Model: "m", StopCodon: ingest.StopReject,
		OnReject: func(r ingest.Reject) error { rejects = append(rejects, r); return rf.Write(r) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := rf.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Records != 5 || st.Stored != 1 || st.DeadLettered != 4 || st.Reasons[consumer.ReasonInvalid] != 4 || st.StopStripped != 0 {
		t.Fatalf("stats %+v", st)
	}
	seqs, lines := fileRecords(t, prodigal)
	if len(rejects) != 4 {
		t.Fatalf("rejects %+v", rejects)
	}
	for _, r := range rejects {
		if r.File != prodigal || r.Line != lines[r.ID] || r.Position != len(seqs[r.ID]) || r.Reason != consumer.ReasonInvalid {
			t.Errorf("reject %+v: want line %d position %d", r, lines[r.ID], len(seqs[r.ID]))
		}
		for _, want := range []string{prodigal, "line ", "position ", "stop codon '*'"} {
			if !strings.Contains(r.Message, want) {
				t.Errorf("message %q lacks %q", r.Message, want)
			}
		}
	}
	if got := inputs(t, ctx, js, "m"); len(got) != 1 || got["NC_000913.3_3"].body != seqs["NC_000913.3_3"] {
		t.Errorf("stored %v", got)
	}
	dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", "m", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 4 || dls[0].Reason != consumer.ReasonInvalid || dls[0].StreamSeq != 0 || string(dls[0].Data) != seqs[dls[0].ID] {
		t.Errorf("dead letters %+v", dls)
	}
	data, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(rows) != 5 || rows[0] != "id\treason\tmessage\tfile\tline\tposition" {
		t.Fatalf("rejects file:\n%s", data)
	}
	if f := strings.Split(rows[2], "\t"); len(f) != 6 || f[0] != "NC_000913.3_2" || f[1] != "invalid_residue" || f[3] != prodigal ||
		f[4] != "16" || f[5] != "61" {
		t.Errorf("row %q", rows[2])
	}
}

// TestParseRejectsNameFileAndLine: records the FASTA reader refuses are dead-lettered with
// messages naming the file and line, and reach OnReject with their location.
func TestParseRejectsNameFileAndLine(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	path := filepath.Join(t.TempDir(), "bad.fa")
	big := strings.Repeat("A", fasta.DefaultMaxRecordBytes+1)
	if err := os.WriteFile(path, []byte(">ok\nMKT\n>\nMKT\n>huge\n"+big+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var rejects []ingest.Reject
	st, err := ingest.Publish(ctx, nc, []string{path}, ingest.Options{Model: "m",
		OnReject: func(r ingest.Reject) error { rejects = append(rejects, r); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if st.Stored != 1 || st.DeadLettered != 2 || st.Reasons[consumer.ReasonMissingID] != 1 || st.Reasons[consumer.ReasonTooLarge] != 1 {
		t.Fatalf("stats %+v", st)
	}
	want := []ingest.Reject{
		{Reason: consumer.ReasonMissingID, File: path, Line: 3, Message: "fasta: " + path + " line 3: header has no identifier"},
		{ID: "huge", Reason: consumer.ReasonTooLarge, File: path, Line: 5,
			Message: "fasta: " + path + ` line 5 (record "huge"): record too large: sequence exceeds 1048576 bytes`},
	}
	if len(rejects) != 2 || rejects[0] != want[0] || rejects[1] != want[1] {
		t.Errorf("rejects\n%+v\nwant\n%+v", rejects, want)
	}
	dls, err := consumer.ReadDeadLetters(ctx, js, "SEQS", "m", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || dls[0].Error != want[0].Message || dls[1].ID != "huge" {
		t.Errorf("dead letters %+v", dls)
	}
	// The same file again: its dead letters are duplicates (same file and line), not new ones.
	st, err = ingest.Publish(ctx, nc, []string{path}, ingest.Options{Model: "m"})
	if err != nil || st.DeadLettered != 0 || st.Duplicates != 3 {
		t.Errorf("second publish: %+v, %v", st, err)
	}
}

// TestTruncatedInputNamesFile: a gzip file cut short stops the publish with an error naming the
// file and the line being read.
func TestTruncatedInputNamesFile(t *testing.T) {
	ctx, nc, _ := setup(t, "m")
	data, err := os.ReadFile(filepath.Join("..", "fasta", "testdata", "compressed", "golden.fasta.gz"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cut.fasta.gz")
	if err := os.WriteFile(path, data[:len(data)/3], 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = ingest.Publish(ctx, nc, []string{path}, ingest.Options{Model: "m"})
	var pe *fasta.ParseError
	if !errors.As(err, &pe) || pe.File != path || pe.Line < 1 || !strings.Contains(err.Error(), path+" line ") {
		t.Fatalf("err = %v", err)
	}
}

// TestSeveralFilesAndStdin publishes a plain file, an xz file made by the system's xz (or the
// golden fixture where there is none) and standard input in one call; ids repeated across them
// are counted once as duplicates with one log line, not a line per id.
func TestSeveralFilesAndStdin(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	dir := t.TempDir()
	plain := filepath.Join("..", "testdata", "golden-input.fasta")
	xzPath := filepath.Join(dir, "golden.fa.xz")
	if _, err := exec.LookPath("xz"); err == nil {
		data, err := os.ReadFile(plain)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("xz", "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(xzPath, out, 0o600); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("no xz command: using the committed fixture")
		xzPath = filepath.Join("..", "fasta", "testdata", "compressed", "golden.fasta.xz")
	}
	stdin, err := os.Open(prodigal)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	defer func(orig *os.File) { os.Stdin = orig }(os.Stdin)
	os.Stdin = stdin
	core, logs := observer.New(zapcore.DebugLevel)
	st, err := ingest.Publish(ctx, nc, []string{plain, "-", xzPath}, ingest.Options{Model: "m", Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != 3 || st.Records != 45 || st.Stored != 25 || st.Duplicates != 20 || st.IDConflicts != 0 ||
		fmt.Sprint(st.FileRecords) != "[20 5 20]" {
		t.Fatalf("stats %+v", st)
	}
	if n := len(inputs(t, ctx, js, "m")); n != 25 {
		t.Errorf("%d records stored, want 25", n)
	}
	dup := logs.FilterMessageSnippet("duplicate records")
	if dup.Len() != 1 || logs.FilterLevelExact(zapcore.WarnLevel).Len() != 1 {
		t.Fatalf("logs: %+v", logs.All())
	}
	if f := dup.All()[0].ContextMap(); f["records"] != int64(20) || len(f["examples"].([]any)) != 5 {
		t.Errorf("duplicate summary fields %v", f)
	}
}

// TestPublishChecksInputs: a missing file, a directory or standard input twice fail before
// anything is published.
func TestPublishChecksInputs(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	for _, files := range [][]string{
		{prodigal, filepath.Join(t.TempDir(), "missing.fa")},
		{prodigal, t.TempDir()},
		{"-", prodigal, "-"},
		nil,
	} {
		if _, err := ingest.Publish(ctx, nc, files, ingest.Options{Model: "m"}); err == nil {
			t.Errorf("Publish(%q): no error", files)
		}
	}
	if _, err := ingest.Publish(ctx, nc, []string{prodigal}, ingest.Options{}); !errors.Is(err, ingest.ErrOption) {
		t.Errorf("no model: %v", err)
	}
	if n := len(inputs(t, ctx, js, "m")); n != 0 {
		t.Errorf("%d records published by failed calls", n)
	}
}

func TestParseStopCodon(t *testing.T) {
	for in, want := range map[string]ingest.StopCodon{"strip": ingest.StopStrip, "reject": ingest.StopReject} {
		if got, err := ingest.ParseStopCodon(in); err != nil || got != want || got.String() != in {
			t.Errorf("ParseStopCodon(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ingest.ParseStopCodon("keep"); !errors.Is(err, ingest.ErrOption) {
		t.Errorf("keep: %v", err)
	}
}

// TestRejectsFileEscapes: tabs, newlines and backslashes inside values stay inside their cell.
func TestRejectsFileEscapes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.tsv")
	rf, err := ingest.CreateRejectsFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := rf.Write(ingest.Reject{ID: "a", Reason: "x", Message: "one\ttwo\nthree \\ four\r", File: "f"}); err != nil {
		t.Fatal(err)
	}
	if err := rf.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "id\treason\tmessage\tfile\tline\tposition\na\tx\tone\\ttwo\\nthree \\\\ four\\r\tf\t\t\n"
	if string(data) != want || rf.Rows() != 1 {
		t.Errorf("file %q, want %q", data, want)
	}
}

// TestPipeInput publishes from a named pipe (as bash's <(zcat f.gz) gives): it is read once,
// not counted first (which would consume it), and every record arrives.
func TestPipeInput(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	fifo := filepath.Join(t.TempDir(), "pipe")
	data, err := os.ReadFile(prodigal)
	if err != nil {
		t.Fatal(err)
	}
	wrote := testutil.FIFO(t, fifo, data)
	if ingest.Rereadable(fifo) || ingest.Rereadable("-") || !ingest.Rereadable(prodigal) {
		t.Fatal("Rereadable is wrong")
	}
	st, err := ingest.Publish(ctx, nc, []string{fifo}, ingest.Options{Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if st.Records != 5 || st.Stored != 5 || len(inputs(t, ctx, js, "m")) != 5 {
		t.Errorf("stats %+v", st)
	}
}

// stored reads every input record of model back from the stream, in order (direct gets).
func stored(t *testing.T, ctx context.Context, js jetstream.JetStream, model string) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(ctx, "SEQS")
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(consumer.Subject(model)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
}

// TestReusedIDs publishes two prokka-style genomes whose ids are reused (PROKKA_00001... in both
// files): a record is (id, sequence), so the other genome's sequences under the same ids are
// stored too and counted as id conflicts, while a record identical in both files is stored once;
// publishing a genome again stores nothing new. Every record carries its description, its
// running index across the files and a Nats-Msg-Id with 16 hex digits of its sequence's SHA-256.
func TestReusedIDs(t *testing.T) {
	ctx, nc, js := setup(t, "m")
	dir := t.TempDir()
	genomeA, genomeB := filepath.Join(dir, "genomeA.faa"), filepath.Join(dir, "genomeB.faa")
	long := strings.Repeat("x", 3000)
	os.WriteFile(genomeA, []byte(">PROKKA_00001 DNA gyrase subunit B\nMKTAYIAKQR*\n>PROKKA_00002 hypothetical protein\nMSTNPKPQRK\n"+
		">PROKKA_00003 "+long+"\nMAAAAAAA\n"), 0o644)
	os.WriteFile(genomeB, []byte(">PROKKA_00001 Chaperone protein DnaK\nMGKIIGIDLG\n>PROKKA_00002 hypothetical protein\nMSTNPKPQRK\n"+
		">PROKKA_00003\nMCCCCCCC*\n"), 0o644)
	st, err := ingest.Publish(ctx, nc, []string{genomeA, genomeB}, ingest.Options{Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Records != 6 || st.Stored != 5 || st.Duplicates != 1 || st.IDConflicts != 2 ||
		strings.Join(st.ConflictExamples, ",") != "PROKKA_00001,PROKKA_00003" || fmt.Sprint(st.FileRecords) != "[3 3]" {
		t.Fatalf("stats %+v", st)
	}
	msgs := stored(t, ctx, js, "m")
	type rec struct{ id, desc, index, strip, body string }
	var got []rec
	for _, m := range msgs {
		got = append(got, rec{m.Header.Get(consumer.HeaderID), m.Header.Get(consumer.HeaderDescription), m.Header.Get(consumer.HeaderIndex),
			m.Header.Get(ingest.HeaderStopStripped), string(m.Data)})
		want := "m:" + m.Header.Get(consumer.HeaderID) + ":" + consumer.SeqSHA256(m.Data)[:ingest.MsgIDHashHex]
		if id := m.Header.Get(nats.MsgIdHdr); id != want || len(id) != len("m:PROKKA_00001:")+16 {
			t.Errorf("Nats-Msg-Id %q, want %q", id, want)
		}
	}
	want := []rec{
		{"PROKKA_00001", "DNA gyrase subunit B", "0", "1", "MKTAYIAKQR"},
		{"PROKKA_00002", "hypothetical protein", "1", "", "MSTNPKPQRK"},
		{"PROKKA_00003", long[:consumer.MaxDescriptionBytes], "2", "", "MAAAAAAA"},
		{"PROKKA_00001", "Chaperone protein DnaK", "3", "", "MGKIIGIDLG"},
		{"PROKKA_00003", "", "5", "1", "MCCCCCCC"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("stored\n%v\nwant\n%v", got, want)
	}
	// The same file again: every record a duplicate, no conflict within this publish.
	st, err = ingest.Publish(ctx, nc, []string{genomeB}, ingest.Options{Model: "m"})
	if err != nil || st.Stored != 0 || st.Duplicates != 3 || st.IDConflicts != 0 {
		t.Fatalf("genome B again: %+v, %v", st, err)
	}
	if n := len(stored(t, ctx, js, "m")); n != 5 {
		t.Errorf("%d records stored after publishing genome B again, want 5", n)
	}
}
