package localrun_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/esm2graph"
	"github.com/seqembed/seqembed/internal/e2etest"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/pipeline"
)

// TestRun is `seqembed run` on the golden FASTA plus a header with no id: the Parquet file
// holds one row per valid record with PyTorch-matching embeddings; the bad record is dead-lettered.
func TestRun(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	in, err := os.ReadFile(filepath.Join(e2etest.Root, "testdata", "golden-input.fasta"))
	if err != nil {
		t.Fatal(err)
	}
	fastaPath := filepath.Join(dir, "in.fasta")
	os.WriteFile(fastaPath, append(in, []byte(">\nMKTAYIAK\n>dup-free-bad lowercase\nMKTaa\n")...), 0o644)
	out := filepath.Join(dir, "out.parquet")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := localrun.Run(ctx, fastaPath, out, e2etest.Config(), nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Published.Records != 22 || sum.Embedded != 20 || sum.DeadLettered != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Reasons[consumer.ReasonMissingID] != 1 || sum.Reasons[consumer.ReasonInvalid] != 1 {
		t.Errorf("reasons %v", sum.Reasons)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Model != "esm2-tiny" || len(rows) != 20 {
		t.Fatalf("meta %+v, %d rows", meta, len(rows))
	}
	golden := e2etest.LoadGolden(t)
	for _, r := range rows {
		e2etest.CheckEmbedding(t, r.ID, r.Embedding, golden[r.ID].Embedding)
	}
}

// prodigal is ingest's prodigal-style test file (see ingest/testdata).
var prodigal = filepath.Join(e2etest.Root, "ingest", "testdata", "prodigal.faa")

// TestRunJobStopCodonsAndRejects runs the prodigal file and a file of bad records in one job with
// a rejects file: trailing stop codons are stripped and the records embedded; the transeq record's
// inner '*', a lowercase record and a header without id are dead-lettered; the rejects file lists
// every one with its file, line and 1-based position, in file order; the summary counts them by
// reason.
func TestRunJobStopCodonsAndRejects(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.fa")
	if err := os.WriteFile(bad, []byte(">fine\nMKTAYIAKQR\n>lower case residues\nMKTAYiAK\n>\nMKT\n>NC_000913.3_5 a repeated id\nMKT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.arrow")
	tsv := filepath.Join(dir, "rejects.tsv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sum, err := localrun.RunJob(ctx, localrun.Job{Inputs: []string{bad, prodigal}, Out: out, Rejects: tsv, Config: e2etest.Config()})
	if err != nil {
		t.Fatal(err)
	}
	// bad.fa: fine embedded, lower and no-id dead-lettered, NC_000913.3_5 embedded;
	// prodigal.faa: NC_000913.3_5 again with another sequence, embedded too (an id conflict),
	// EMBOSS_001_4 dead-lettered, 4 embedded.
	if sum.Published.Records != 9 || sum.Published.Files != 2 || sum.Published.Duplicates != 0 || sum.Embedded != 6 ||
		sum.DeadLettered != 3 || sum.Published.StopStripped != 4 || sum.Conflicts != 1 || sum.ConflictIDs != 1 ||
		sum.ConflictsFile != out+".conflicts.tsv" {
		t.Fatalf("summary %+v", sum)
	}
	if sum.Reasons[consumer.ReasonInvalid] != 2 || sum.Reasons[consumer.ReasonMissingID] != 1 || sum.RejectsRows != 3 {
		t.Errorf("reasons %v, %d rejects rows", sum.Reasons, sum.RejectsRows)
	}
	data, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")[1:] {
		f := strings.Split(l, "\t")
		rows = append(rows, []string{f[0], f[1], f[3], f[4], f[5]}) // all but the message
	}
	want := [][]string{
		{"lower", "invalid_residue", bad, "3", "6"},
		{"", "missing_id", bad, "5", ""},
		{"EMBOSS_001_4", "invalid_residue", prodigal, "28", "15"},
	}
	if !reflect.DeepEqual(rows, want) {
		t.Errorf("rejects rows\n%q\nwant\n%q\n%s", rows, want, data)
	}
	var buf strings.Builder
	sum.Print(&buf, out)
	for _, s := range []string{"9 records read from 2 files, 6 embedded", "4 trailing stop codons", "invalid_residue       2  e.g. ",
		"1 id conflicts: 1 ids came with more than one sequence (e.g. NC_000913.3_5)",
		"missing_id            1  e.g. ", "every dead-lettered record: " + tsv + " (3 rows)"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("summary lacks %q:\n%s", s, buf.String())
		}
	}
	if sum.SlowConsumers != 0 || strings.Contains(buf.String(), "slow connection") {
		t.Errorf("the embedded server dropped %d slow connections:\n%s", sum.SlowConsumers, buf.String())
	}
	if _, err := os.Stat(out); err != nil {
		t.Error(err)
	}
	buf.Reset()
	sum.SlowConsumers = 2
	sum.Print(&buf, out)
	if !strings.Contains(buf.String(), "dropped 2 slow connection(s)") {
		t.Errorf("a summary with slow consumers does not say so:\n%s", buf.String())
	}
}

// TestRunJobChecksFirst: a bad output path, an unknown format, a missing input or a bad
// configuration fails at once, before the model loads (the model directory here does not exist).
func TestRunJobChecksFirst(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "old.parquet")
	if err := os.WriteFile(existing, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := e2etest.Config()
	cfg.ModelDir = filepath.Join(dir, "no-model")
	badCfg := cfg
	badCfg.MaxBatchRows = 0
	for _, tc := range []struct {
		job  localrun.Job
		want error
		msg  string
	}{
		{localrun.Job{Out: existing}, localrun.ErrOutputPath, "--force"},
		{localrun.Job{Out: filepath.Join(dir, "emb.csv")}, localrun.ErrOutputFormat, ".csv"},
		{localrun.Job{Out: dir}, localrun.ErrOutputPath, "is a directory"},
		{localrun.Job{Out: filepath.Join(existing, "x.parquet")}, localrun.ErrOutputPath, "not a directory"},
		{localrun.Job{Out: filepath.Join(dir, "new.parquet"), Inputs: []string{filepath.Join(dir, "missing.fa")}}, os.ErrNotExist, "missing.fa"},
		{localrun.Job{Out: filepath.Join(dir, "new.parquet"), Config: badCfg}, pipeline.ErrConfig, "--max-batch-rows"},
		{localrun.Job{Out: filepath.Join(dir, "old")}, localrun.ErrOutputPath, "old.parquet.conflicts.tsv exists; pass --force"},
		{localrun.Job{Out: filepath.Join(dir, "new.parquet"), Conflicts: filepath.Join(dir, "new.parquet")}, localrun.ErrOutputPath,
			"is the output file"},
	} {
		if tc.job.Out == filepath.Join(dir, "old") {
			tc.job.Out = filepath.Join(dir, "a.parquet")
			tc.job.Conflicts = existing + ".conflicts.tsv"
			if err := os.WriteFile(tc.job.Conflicts, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if tc.job.Inputs == nil {
			tc.job.Inputs = []string{prodigal}
		}
		if tc.job.Config.ModelDir == "" {
			tc.job.Config = cfg
		}
		_, err := localrun.RunJob(context.Background(), tc.job)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) || strings.Contains(err.Error(), "no-model") {
			t.Errorf("out %s: %v, want %v mentioning %q", tc.job.Out, err, tc.want, tc.msg)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "new.parquet")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed check left an output file: %v", err)
	}
}

func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "old.arrow")
	if err := os.WriteFile(existing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, format string
		force        bool
		want         string
		err          error
	}{
		{filepath.Join(dir, "a.parquet"), "", false, arrowout.FormatParquet, nil},
		{filepath.Join(dir, "a.PQ"), "", false, arrowout.FormatParquet, nil},
		{filepath.Join(dir, "a.feather"), "", false, arrowout.FormatArrow, nil},
		{filepath.Join(dir, "a.npy"), "", false, "", localrun.ErrOutputFormat},
		{filepath.Join(dir, "a.npy"), "arrow", false, arrowout.FormatArrow, nil},
		{filepath.Join(dir, "noext"), "", false, "", localrun.ErrOutputFormat},
		{filepath.Join(dir, "a.parquet"), "csv", false, "", localrun.ErrOutputFormat},
		{existing, "", false, "", localrun.ErrOutputPath},
		{existing, "", true, arrowout.FormatArrow, nil},
		{"/dev/null", "parquet", true, "", localrun.ErrOutputPath}, // not a regular file, even with --force
		{filepath.Join(dir, "missing", "a.parquet"), "", false, "", localrun.ErrOutputPath},
		{"", "", false, "", localrun.ErrOutputFormat},
	} {
		got, err := localrun.CheckOutput(tc.path, tc.format, tc.force)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("CheckOutput(%q, %q, %v) = %q, %v; want %q, %v", tc.path, tc.format, tc.force, got, err, tc.want, tc.err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("CheckOutput left files behind: %v", entries)
	}
	// A directory that takes no new files (root ignores permissions: then nothing to check).
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	if f, err := os.CreateTemp(ro, "probe"); err == nil {
		f.Close()
		os.Remove(f.Name())
		t.Log("running as root: the unwritable-directory case is covered by the missing and not-a-directory parents")
		return
	}
	if _, err := localrun.CheckOutput(filepath.Join(ro, "a.parquet"), "", false); !errors.Is(err, localrun.ErrOutputPath) {
		t.Errorf("unwritable directory: %v", err)
	}
}

// TestRunJobPipeInput embeds the prodigal file read from a named pipe: the pipe cannot be read
// again to locate the worker's rejects, so the transeq record's row names the pipe, with its
// position but no line.
func TestRunJobPipeInput(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe")
	data, err := os.ReadFile(prodigal)
	if err != nil {
		t.Fatal(err)
	}
	wrote := testutil.FIFO(t, fifo, data)
	tsv := filepath.Join(dir, "rejects.tsv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sum, err := localrun.RunJob(ctx, localrun.Job{Inputs: []string{fifo}, Out: filepath.Join(dir, "o.parquet"), Rejects: tsv, Config: e2etest.Config()})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if sum.Embedded != 4 || sum.DeadLettered != 1 {
		t.Fatalf("summary %+v", sum)
	}
	got, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "EMBOSS_001_4\tinvalid_residue\t") || !strings.HasSuffix(lines[1], "\t"+fifo+"\t\t15") {
		t.Errorf("rejects file:\n%s", got)
	}
}

// TestRunTwoGenomes runs two prokka genomes whose ids are reused (PROKKA_00001... in both, with
// other sequences), the first one given twice: every sequence is embedded once, both rows of a
// reused id are kept, the conflicts are counted and listed in the conflicts file, the first
// genome's second reading is deduplicated; every row carries its identity and provenance.
func TestRunTwoGenomes(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	genomeA, genomeB := filepath.Join(dir, "genomeA.faa"), filepath.Join(dir, "genomeB.faa")
	os.WriteFile(genomeA, []byte(">PROKKA_00001 DNA gyrase subunit B\nMKTAYIAKQRQISFVKSHFSRQ*\n"+
		">PROKKA_00002 hypothetical protein\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n"), 0o644)
	os.WriteFile(genomeB, []byte(">PROKKA_00001 Chaperone protein DnaK\nMGKIIGIDLGTTNSCVAIMEGTQ\n"+
		">PROKKA_00002 hypothetical protein\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n>PROKKA_00003\nMAAAAAAAAAAAAAAAAAAAAAAAA\n"), 0o644)
	out := filepath.Join(dir, "emb.arrow")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sum, err := localrun.RunJob(ctx, localrun.Job{Inputs: []string{genomeA, genomeB, genomeA}, Out: out, Config: e2etest.Config()})
	if err != nil {
		t.Fatal(err)
	}
	// genomeA: 2 embedded; genomeB: PROKKA_00001 (another sequence) and PROKKA_00003 embedded,
	// PROKKA_00002 (the same sequence) a duplicate; genomeA again: 2 duplicates.
	if sum.Published.Records != 7 || sum.Published.Stored != 4 || sum.Published.Duplicates != 3 || sum.Published.IDConflicts != 1 ||
		sum.Embedded != 4 || sum.Conflicts != 1 || sum.ConflictIDs != 1 || sum.ConflictsFile != out+".conflicts.tsv" {
		t.Fatalf("summary %+v", sum)
	}
	_, rows, err := arrowout.ReadArrowFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].InputIndex < rows[j].InputIndex })
	type row struct {
		id, desc    string
		index       int64
		length, in  int32
		strip, hash bool
	}
	var got []row
	for _, r := range rows {
		got = append(got, row{r.ID, r.Description, r.InputIndex, r.Length, r.InputLength, r.StopStripped,
			r.SeqSHA256 == consumer.SeqSHA256([]byte(strings.TrimSuffix(seqOf(t, r.InputIndex, genomeA, genomeB), "*")))})
	}
	want := []row{
		{"PROKKA_00001", "DNA gyrase subunit B", 0, 22, 22, true, true},
		{"PROKKA_00002", "hypothetical protein", 1, 27, 27, false, true},
		{"PROKKA_00001", "Chaperone protein DnaK", 2, 23, 23, false, true},
		{"PROKKA_00003", "", 4, 25, 25, false, true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows\n%+v\nwant\n%+v", got, want)
	}
	data, err := os.ReadFile(sum.ConflictsFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 3 || lines[0] != strings.Join(arrowout.ConflictsColumns, "\t") ||
		!strings.HasPrefix(lines[1], "PROKKA_00001\t"+rows[0].SeqSHA256+"\t22\t0\t") || !strings.HasSuffix(lines[1], "\tDNA gyrase subunit B") ||
		!strings.HasPrefix(lines[2], "PROKKA_00001\t"+rows[2].SeqSHA256+"\t23\t2\t") || !strings.HasSuffix(lines[2], "\tChaperone protein DnaK") {
		t.Errorf("conflicts file:\n%s", data)
	}
	var buf strings.Builder
	sum.Print(&buf, out)
	if !strings.Contains(buf.String(), "1 id conflicts: 1 ids came with more than one sequence (e.g. PROKKA_00001); every sequence is embedded, one row each: "+sum.ConflictsFile) ||
		!strings.Contains(buf.String(), "3 duplicate records") {
		t.Errorf("summary:\n%s", buf.String())
	}

	// Again over the same output (--force) with the genomes' conflict gone: the stale conflicts
	// file goes with it.
	sum, err = localrun.RunJob(ctx, localrun.Job{Inputs: []string{genomeB}, Out: out, Force: true, Config: e2etest.Config()})
	if err != nil || sum.Embedded != 3 || sum.Conflicts != 0 || sum.ConflictsFile != "" {
		t.Fatalf("genome B alone: %+v, %v", sum, err)
	}
	if _, err := os.Stat(out + ".conflicts.tsv"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale conflicts file: %v", err)
	}
}

// seqOf is the sequence of the record at index (0-based, counted across the files in turn).
func seqOf(t *testing.T, index int64, files ...string) string {
	t.Helper()
	var all []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range strings.Split(string(data), ">")[1:] {
			_, seq, _ := strings.Cut(rec, "\n")
			all = append(all, strings.ReplaceAll(seq, "\n", ""))
		}
	}
	return all[index]
}

// TestRunWritesOutputs is `seqembed run` with a model of extra outputs (mean of layer 0, <cls>
// row of layer 2, float16 per-residue states of layer 2, and the embedding): the Parquet file has
// the output columns (Meta.Outputs, float16 residues) and every golden record's values match the
// PyTorch reference (1e-4; per-residue 2e-3, float16 rounding).
func TestRunWritesOutputs(t *testing.T) {
	e2etest.RequireORT(t)
	ref := e2etest.LoadRefOutputs(t)
	cfg := e2etest.Config()
	cfg.ModelDir = e2etest.OutputsModel(t, []esm2graph.Output{{Layer: 0, Pooling: esm2graph.PoolMean}, {Layer: 2, Pooling: esm2graph.PoolBOS},
		{Layer: 2, Pooling: esm2graph.PoolPerResidue}, {Layer: -1, Pooling: esm2graph.PoolMean}}, true)
	out := filepath.Join(t.TempDir(), "out.parquet")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sum, err := localrun.Run(ctx, filepath.Join(e2etest.Root, "testdata", "golden-input.fasta"), out, cfg, nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	meta, rows, err := arrowout.ReadParquet(out)
	if err != nil {
		t.Fatal(err)
	}
	if meta.Outputs != "mean_l0,bos_l2,residues_l2" || !meta.ResiduesFP16 || len(rows) != len(ref.Records) || sum.Embedded != len(rows) {
		t.Fatalf("meta %+v, %d rows, summary %+v", meta, len(rows), sum)
	}
	cols, _ := meta.OutputColumns()
	index := map[string]int{}
	for i, r := range ref.Records {
		index[r.ID] = i
	}
	for _, r := range rows {
		i, ok := index[r.ID]
		if !ok || len(r.Outputs) != len(cols) {
			t.Fatalf("row %s: %d outputs", r.ID, len(r.Outputs))
		}
		for k, c := range cols {
			want, tol := ref.RefValues(i, c), 1e-4
			if c.Pooling == arrowout.PoolPerResidue {
				tol = 2e-3
				if want == nil {
					if len(r.Outputs[k]) != int(r.Length)*meta.Dim {
						t.Errorf("%s %s: %d values for %d residues", r.ID, c.Name, len(r.Outputs[k]), r.Length)
					}
					continue
				}
			}
			if d := e2etest.MaxAbsDiff(r.Outputs[k], want); d > tol {
				t.Errorf("%s %s: max abs %.3g vs PyTorch (limit %g)", r.ID, c.Name, d, tol)
			}
		}
	}
}
