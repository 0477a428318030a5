package arrowout

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// identityBatch is a batch of rows (id, seq_sha256, description, input index), everything else
// filled in from makeBatch.
func identityBatch(seq uint64, seq0 uint64, rows ...[4]string) *Batch {
	b := makeBatch(seq, len(rows), testMeta.Dim, seq0)
	for i, r := range rows {
		b.IDs[i], b.SeqSHA256s[i], b.Descriptions[i] = r[0], r[1], r[2]
		b.InputIndexes[i] = int64(len(r[3])) - 1 // the index is the length of the fourth field less 1
	}
	return b
}

// TestSinkIdentityAndConflicts runs both file sinks over the same messages: rows are kept once
// per (id, seq_sha256); a row under a known id with another sequence is kept and counted as a
// conflict; the conflicts file lists every sequence of each conflicting id, in input order;
// Close with no conflict removes a stale conflicts file instead of leaving it.
func TestSinkIdentityAndConflicts(t *testing.T) {
	for _, tc := range []struct {
		ext  string
		open func(string, ...SinkOption) (testSink, error)
		read func(string) (Meta, []Row, error)
	}{
		{"parquet", func(p string, o ...SinkOption) (testSink, error) { return NewParquetSink(p, o...) }, ReadParquet},
		{"arrow", func(p string, o ...SinkOption) (testSink, error) { return NewArrowFileSink(p, o...) }, ReadArrowFile},
	} {
		t.Run(tc.ext, func(t *testing.T) {
			dir := t.TempDir()
			out, tsv := filepath.Join(dir, "out."+tc.ext), filepath.Join(dir, "out.conflicts.tsv")
			s, err := tc.open(out, WithConflictsFile(tsv), WithRowGroupRows(2))
			if err != nil {
				t.Fatal(err)
			}
			e, _ := NewEncoder(testMeta)
			// Two genomes with prokka-style reused ids, then genome A again (a replay).
			genomeA := identityBatch(1, 100, [4]string{"PROKKA_00001", "a1", "DNA gyrase", "x"},
				[4]string{"PROKKA_00002", "a2", "hypothetical protein", "x"})
			genomeB := identityBatch(2, 200, [4]string{"PROKKA_00001", "b1", "chaperone\tDnaK", ""},
				[4]string{"PROKKA_00002", "a2", "hypothetical protein", "x"}, // the same sequence: a duplicate
				[4]string{"PROKKA_00003", "b3", "", "xx"})
			genomeC := identityBatch(3, 300, [4]string{"PROKKA_00001", "c1", "", "xxx"})
			for i, m := range []struct {
				b          *Batch
				added, dup int
			}{{genomeA, 2, 0}, {genomeB, 2, 1}, {genomeA, 0, 2}, {genomeC, 1, 0}, {genomeB, 0, 3}} {
				added, dups, err := s.WriteIPC(encodeRange(t, e, m.b, 0, m.b.Rows()))
				if err != nil || added != m.added || dups != m.dup {
					t.Fatalf("message %d: added %d dups %d (%v), want %d and %d", i, added, dups, err, m.added, m.dup)
				}
			}
			fs := s.(FileSink)
			if s.Rows() != 5 || s.Duplicates() != 6 || fs.Conflicts() != 2 || fs.ConflictIDs() != 1 ||
				strings.Join(fs.ConflictExamples(5), ",") != "PROKKA_00001" {
				t.Fatalf("rows %d dups %d conflicts %d in %d ids", s.Rows(), s.Duplicates(), fs.Conflicts(), fs.ConflictIDs())
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			_, rows, err := tc.read(out)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rows {
				got = append(got, r.ID+"/"+r.SeqSHA256+"/"+r.Description)
			}
			want := "PROKKA_00001/a1/DNA gyrase PROKKA_00002/a2/hypothetical protein PROKKA_00001/b1/chaperone\tDnaK " +
				"PROKKA_00003/b3/ PROKKA_00001/c1/"
			if strings.Join(got, " ") != want {
				t.Errorf("rows\n%q\nwant\n%q", strings.Join(got, " "), want)
			}
			equalRows(t, rows[:2], wantRows(genomeA, testMeta.Dim, 0, 2))
			data, err := os.ReadFile(tsv)
			if err != nil {
				t.Fatal(err)
			}
			wantTSV := "id\tseq_sha256\tinput_length\tinput_index\tstream_seq\tdescription\n" +
				"PROKKA_00001\ta1\t50\t0\t100\tDNA gyrase\n" + // in input order,
				"PROKKA_00001\tc1\t50\t2\t300\t\n" +
				"PROKKA_00001\tb1\t50\t\t200\tchaperone\\tDnaK\n" // an unknown index (-1: empty) last
			if string(data) != wantTSV {
				t.Errorf("conflicts file\n%q\nwant\n%q", data, wantTSV)
			}
			if fi, err := os.Stat(tsv); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("conflicts file: %v %v", fi, err)
			}

			// A sink without conflicts over the same paths (--force): the stale file goes.
			s2, err := tc.open(out, WithConflictsFile(tsv))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := s2.WriteIPC(encodeRange(t, e, genomeA, 0, 2)); err != nil {
				t.Fatal(err)
			}
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(tsv); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stale conflicts file left: %v", err)
			}
			if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}

// version1Stream encodes rows of b as a version-1 message (the layout before seq_sha256), as an
// older worker published it.
func version1Stream(t *testing.T, b *Batch) []byte {
	t.Helper()
	schema := schemaVersion(testMeta, 1)
	rb := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer rb.Release()
	for i := range b.Rows() {
		rb.Field(0).(*array.StringBuilder).Append(b.IDs[i])
		rb.Field(1).(*array.Uint64Builder).Append(b.StreamSeqs[i])
		rb.Field(2).(*array.Int32Builder).Append(b.Lengths[i])
		rb.Field(3).(*array.BooleanBuilder).Append(b.Truncated[i])
		l := rb.Field(4).(*array.FixedSizeListBuilder)
		l.Append(true)
		l.ValueBuilder().(*array.Float32Builder).AppendValues(b.Embeddings[i*testMeta.Dim:(i+1)*testMeta.Dim], nil)
	}
	rec := rb.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema))
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodeVersion1: a message of the version-1 layout still decodes, its rows with the
// "unknown" identity values; a sink takes it into a version-2 file, and its row and a version-2
// row of the same id are both kept (the old row's sequence is unknown: reported as a conflict).
func TestDecodeVersion1(t *testing.T) {
	b := makeBatch(1, 3, testMeta.Dim, 40)
	old := version1Stream(t, b)
	m, rows, err := Decode(old)
	if err != nil || m != testMeta || len(rows) != 3 {
		t.Fatalf("Decode(version 1) = %+v, %d rows, %v", m, len(rows), err)
	}
	for i, r := range rows {
		if r.ID != b.IDs[i] || r.Length != b.Lengths[i] || r.SeqSHA256 != "" || r.Description != "" ||
			r.InputLength != -1 || r.InputIndex != -1 || r.StopStripped {
			t.Errorf("row %d: %+v", i, r)
		}
		equalFloats(t, r.ID, r.Embedding, b.Embeddings[i*testMeta.Dim:(i+1)*testMeta.Dim])
	}
	if _, v, err := messageMeta(old); err != nil || v != 1 {
		t.Errorf("messageMeta(version 1) = %d, %v", v, err)
	}

	path := filepath.Join(t.TempDir(), "mixed.parquet")
	s, err := NewParquetSink(path)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := NewEncoder(testMeta)
	for _, data := range [][]byte{old, old, encodeRange(t, e, b, 0, 1)} {
		if _, _, err := s.WriteIPC(data); err != nil {
			t.Fatal(err)
		}
	}
	if s.Rows() != 4 || s.Duplicates() != 3 || s.Conflicts() != 1 {
		t.Fatalf("rows %d dups %d conflicts %d, want 4, 3, 1", s.Rows(), s.Duplicates(), s.Conflicts())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, rows, err = ReadParquet(path)
	if err != nil || len(rows) != 4 || rows[0].InputIndex != -1 || rows[3].SeqSHA256 != b.SeqSHA256s[0] {
		t.Fatalf("mixed file: %+v, %v", rows, err)
	}

	// Without the version key the columns tell the layout; a version this build does not know
	// is refused with a clear message.
	noKey := bytes.Replace(old, []byte(`seqembed.version`), []byte(`seqembed.versioX`), 1)
	if _, rows, err := Decode(noKey); err != nil || len(rows) != 3 {
		t.Errorf("no version key, version-1 columns: %d rows, %v", len(rows), err)
	}
	md := arrow.NewMetadata([]string{MetaKeyModel, MetaKeyDim, MetaKeyVersion}, []string{"m", "8", "4"})
	if _, _, err := metaFromMetadata(md); !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), `seqembed.version="4" (this build reads 1 to 3)`) {
		t.Errorf("version 4: %v", err)
	}
}

// TestMismatchAbortsAndModels: a stream holding two models' embeddings: StreamModels lists both
// with their first message's Meta before anything is read; a sink reading both stops at the
// first message of the second model with an error naming both models, and writes no file.
func TestMismatchAbortsAndModels(t *testing.T) {
	ctx := testCtx(t)
	_, _, js := runJetStream(t, nil)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	other := Meta{Model: "esm2-other", ModelSHA256: "0123456789abcdef0123", Pooling: "mean", Dim: 4}
	for _, m := range []struct {
		meta Meta
		subj string
		seq0 uint64
	}{{testMeta, "embeddings.a", 1}, {other, "embeddings.b", 50}, {testMeta, "embeddings.a", 100}} {
		p, err := NewPublisher(js, m.subj, m.meta)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Publish(ctx, makeBatch(1, 3, m.meta.Dim, m.seq0)); err != nil {
			t.Fatal(err)
		}
	}
	models, err := StreamModels(ctx, js, DefaultStreamName, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(models) != 2 || models[0].Subject != "embeddings.a" || models[0].Meta != testMeta || models[0].Messages != 2 ||
		models[0].Version != FormatVersion || models[1].Subject != "embeddings.b" || models[1].Meta != other {
		t.Fatalf("models %+v", models)
	}
	if one, err := StreamModels(ctx, js, DefaultStreamName, "embeddings.b"); err != nil || len(one) != 1 || one[0].Meta != other {
		t.Fatalf("models of embeddings.b: %+v, %v", one, err)
	}

	path := filepath.Join(t.TempDir(), "both.parquet")
	fs, err := NewFileSink("", path)
	if err != nil {
		t.Fatal(err)
	}
	run := StartSink(context.Background(), js, DefaultStreamName, "", fs, nil)
	<-run.Done()
	err = run.Finish()
	for _, want := range []string{"holds the embeddings of " + testMeta.Model + " (dim 8, model sha256 ab12cd34)",
		"the message is of esm2-other (dim 4, model sha256 0123456789ab…)", "stream seq 2"} {
		if !errors.Is(err, ErrSchemaMismatch) || !strings.Contains(err.Error(), want) {
			t.Errorf("sink over two models: %v; want ErrSchemaMismatch with %q", err, want)
		}
	}
	if left, _ := os.ReadDir(filepath.Dir(path)); len(left) != 0 {
		t.Errorf("a failed sink left %v", left)
	}
}
