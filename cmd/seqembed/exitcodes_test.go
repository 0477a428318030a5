package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
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

var (
	// prodigalFASTA is ingest's prodigal-style file: 4 of its 5 records end in '*', one of them
	// (EMBOSS_001_4, line 28) also has an inner '*' at position 15.
	prodigalFASTA = filepath.Join(e2etest.Root, "ingest", "testdata", "prodigal.faa")
	// goldenBzip2 is the golden FASTA compressed by bzip2 (fasta/testdata/compressed).
	goldenBzip2 = filepath.Join(e2etest.Root, "fasta", "testdata", "compressed", "golden.fasta.bz2")
)

// child is the outcome of one seqembed command run as a child process.
type child struct {
	code           int
	stdout, stderr string
}

// runChild runs `seqembed ARGS` (the test binary as seqembed, see TestMain; args are split at
// spaces) with stdin (nil: none) and env added, and waits at most 3 minutes.
func runChild(t *testing.T, args string, stdin io.Reader, env ...string) child {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...), "SEQEMBED_TEST_MAIN="+args)
	cmd.Stdin = stdin
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("seqembed %s: %v", args, err)
	}
	return child{code: cmd.ProcessState.ExitCode(), stdout: out.String(), stderr: errOut.String()}
}

// TestUsageErrorsExit2: a missing required flag or argument, an unknown flag or a bad value
// (flag or environment) exits 2 with the error printed once and a pointer to the command's -h;
// -h itself exits 0. None of these loads a model or dials NATS.
func TestUsageErrorsExit2(t *testing.T) {
	dir := t.TempDir()
	fa := filepath.Join(dir, "in.fa")
	if err := os.WriteFile(fa, []byte(">a\nMKT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.parquet")
	for _, tc := range []struct {
		args, env, want string
	}{
		{"publish " + fa, "", "--model NAME is required"},
		{"publish --model m", "", "no FASTA file given"},
		{"sink", "", "--out FILE is required"},
		{"sink --out " + filepath.Join(dir, "emb.csv"), "", "the suffix .csv"},
		{"sink --out " + out + " --format csv", "", `--format "csv"`},
		{"run", "", "no FASTA file given"},
		{"run " + fa + " --bogus", "", "flag provided but not defined: -bogus"},
		{"run " + fa + " --stop-codon keep", "", `stop codon policy "keep"`},
		{"run " + fa + " --max-batch-rows 0 --out " + out, "", "--max-batch-rows must be > 0"},
		{"run " + fa + " --out " + filepath.Join(dir, "emb.npy"), "", "the suffix .npy"},
		{"run - " + fa + " - --out " + out, "", "standard input (-) given 2 times"},
		{"run " + fa + " --out " + out, "SEQEMBED_MAX_BATCH_ROWS=many", `invalid value "many" for --max-batch-rows`},
		{"streams", "", "--name MODEL is required"},
		{"streams --name m --max-batch-tokens 8", "", "flag provided but not defined: -max-batch-tokens"},
		{"bench", "", "--fasta FILE is required"},
		{"bench --fasta " + fa + " --worker-procs --raw", "", "--worker-procs measures end to end only"},
		{"worker --nats nats://127.0.0.1:1 stray", "", `unexpected argument "stray"`},
		{"nosuchcommand", "", `unknown command "nosuchcommand"`},
	} {
		var env []string
		if tc.env != "" {
			env = append(env, tc.env)
		}
		c := runChild(t, tc.args, nil, env...)
		if c.code != cli.ExitUsage || strings.Count(c.stderr, tc.want) != 1 {
			t.Errorf("seqembed %s: exit %d, want 2 and %q once in\n%s", tc.args, c.code, tc.want, c.stderr)
		}
		if cmd, _, _ := strings.Cut(tc.args, " "); cmd != "nosuchcommand" && !strings.Contains(c.stderr, "seqembed "+cmd+" -h") {
			t.Errorf("seqembed %s: no pointer to -h in\n%s", tc.args, c.stderr)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a usage error wrote the output: %v", err)
	}
	for _, args := range []string{"run -h", "publish --help", "-h"} {
		if c := runChild(t, args, nil); c.code != cli.ExitOK || !strings.Contains(c.stderr, "usage: seqembed") {
			t.Errorf("seqembed %s: exit %d\n%s", args, c.code, c.stderr)
		}
	}
}

// TestFailuresExit1: a missing input, an existing output without --force or a server that is not
// there exits 1, and the output checks come before the model loads (the model here is missing,
// and the error is about the output).
func TestFailuresExit1(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "old.parquet")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	noModel := filepath.Join(dir, "no-model")
	for _, tc := range []struct{ args, want string }{
		{"run " + prodigalFASTA + " --model " + noModel + " --out " + existing, existing + " exists; pass --force"},
		{"run " + prodigalFASTA + " --model " + noModel + " --out " + dir, dir + " is a directory"},
		{"run " + prodigalFASTA + " --model " + noModel + " --out " + filepath.Join(dir, "nodir", "x.parquet"), "does not exist"},
		{"run " + filepath.Join(dir, "missing.fa") + " --model " + noModel + " --out " + filepath.Join(dir, "new.parquet"), "missing.fa"},
		{"sink --out " + existing, "pass --force"},
		{"publish --nats nats://127.0.0.1:1 --model m " + prodigalFASTA, "connecting to NATS"},
	} {
		c := runChild(t, tc.args, nil)
		if c.code != cli.ExitFailed || !strings.Contains(c.stderr, tc.want) || strings.Contains(c.stderr, "no-model/") {
			t.Errorf("seqembed %s: exit %d, want 1 and %q in\n%s", tc.args, c.code, tc.want, c.stderr)
		}
	}
	if data, _ := os.ReadFile(existing); string(data) != "keep me" {
		t.Errorf("the existing output was touched: %q", data)
	}
}

// TestRunExitCodes runs `seqembed run` as a child on real files: several inputs with flags
// between and after them, the prodigal file's inner '*' and a bad record dead-lettered: exit 3,
// the rejects file lists them; --allow-rejects (and --force over the same output) exits 0; a file
// that embeds cleanly, read from standard input as bzip2, exits 0. Progress on a pipe is plain
// lines, never carriage returns.
func TestRunExitCodes(t *testing.T) {
	e2etest.RequireORT(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.fa")
	if err := os.WriteFile(bad, []byte(">bad1\nMKTAYiAK\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, tsv := filepath.Join(dir, "emb.parquet"), filepath.Join(dir, "rejects.tsv")
	model := "--model " + e2etest.TinyModel + " --threads 1"
	c := runChild(t, "run "+prodigalFASTA+" --out "+out+" "+bad+" --rejects "+tsv+" "+model, nil)
	if c.code != cli.ExitRejected || !strings.Contains(c.stdout, "6 records read from 2 files, 4 embedded") ||
		!strings.Contains(c.stderr, "2 of 6 records dead-lettered") {
		t.Fatalf("run with rejects: exit %d, want 3\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}
	if strings.Contains(c.stderr, "\r") || !strings.Contains(c.stderr, "embed: ") {
		t.Errorf("progress on a pipe:\n%q", c.stderr)
	}
	data, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "EMBOSS_001_4\tinvalid_residue\t") || !strings.HasSuffix(lines[1], "\t"+prodigalFASTA+"\t28\t15") ||
		!strings.HasPrefix(lines[2], "bad1\tinvalid_residue\t") || !strings.HasSuffix(lines[2], "\t"+bad+"\t1\t6") {
		t.Errorf("rejects file:\n%s", data)
	}
	_, rows, err := arrowout.ReadParquet(out)
	if err != nil || len(rows) != 4 {
		t.Fatalf("%s: %d rows, %v", out, len(rows), err)
	}

	c = runChild(t, "run "+model+" "+prodigalFASTA+" "+bad+" --out "+out+" --allow-rejects --force --quiet", nil)
	if c.code != cli.ExitOK || !strings.Contains(c.stdout, "2 dead-lettered") || strings.Contains(c.stderr, "embed: ") {
		t.Errorf("--allow-rejects: exit %d\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}

	stdin, err := os.Open(goldenBzip2)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	clean := filepath.Join(dir, "golden.arrow")
	c = runChild(t, "run - --out "+clean+" "+model, stdin)
	if c.code != cli.ExitOK || !strings.Contains(c.stdout, "20 records read from 1 file, 20 embedded") {
		t.Errorf("stdin: exit %d\nstdout:\n%s\nstderr:\n%s", c.code, c.stdout, c.stderr)
	}
	if _, err := os.Stat(clean); err != nil {
		t.Error(err)
	}
}

// TestPublishExitCodes runs `seqembed publish` as a child against a real server: with
// --stop-codon reject, a file and standard input, the refused records exit 3 and fill the
// rejects file; the default strip policy publishes the rest and exits 0.
func TestPublishExitCodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := natstest.Server(t, nil)
	_, js := natstest.Connect(t, srv)
	if err := ensureStreams(ctx, js, "m", pipeline.Default(), nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tsv := filepath.Join(dir, "refused.tsv")
	stdin := strings.NewReader(">\nMKT\n>ok\nMKTAY*\n")
	c := runChild(t, "publish --nats "+srv.ClientURL()+" "+prodigalFASTA+" --model m --stop-codon reject - --rejects "+tsv, stdin)
	if c.code != cli.ExitRejected || !strings.Contains(c.stderr, "published 7 records from 2 files (1 stored, 0 duplicate records, 6 dead-lettered") {
		t.Fatalf("publish --stop-codon reject: exit %d, want 3\n%s", c.code, c.stderr)
	}
	data, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 7 || !strings.HasSuffix(lines[6], "\tstdin\t3\t6") || !strings.Contains(lines[5], "missing_id") {
		t.Errorf("rejects file:\n%s", data)
	}
	c = runChild(t, "publish --nats "+srv.ClientURL()+" --model m "+prodigalFASTA, nil)
	if c.code != cli.ExitOK || !strings.Contains(c.stderr, "(4 stored, 1 duplicate records, 0 dead-lettered, 4 stop codons stripped)") {
		t.Errorf("publish: exit %d\n%s", c.code, c.stderr)
	}
}

// TestHelpListsOwnFlags: streams lists the stream and consumer flags, bench and run the model and
// batching ones, none the other's; bench's help names no broken placeholder.
func TestHelpListsOwnFlags(t *testing.T) {
	for _, tc := range []struct {
		cmd       string
		has, lack []string
	}{
		{"streams", []string{"-in-stream", "-ack-wait", "-max-deliver", "-name", "-nats"},
			[]string{"-max-batch-tokens", "-device", "-model ", "-threads", "-shutdown-timeout"}},
		{"bench", []string{"-max-batch-tokens", "-device", "-model", "-fasta", "-worker-procs\n", "-report DIR\n"},
			[]string{"-ack-wait", "-in-stream", "-max-ack-pending", "-shutdown-timeout", "-nats", "-worker-procs seqembed"}},
		{"run", []string{"-max-batch-tokens", "-stop-codon", "-rejects", "-allow-rejects", "-force", "-format", "-conflicts", "-allow-id-conflicts"},
			[]string{"-ack-wait", "-in-stream", "-out-stream", "-shutdown-timeout", "-nats"}},
		{"publish", []string{"-nats", "-model", "-stop-codon", "-rejects", "-allow-rejects", "-allow-id-conflicts"},
			[]string{"-max-batch-tokens", "-device", "-conflicts"}},
		{"sink", []string{"-out", "-force", "-format", "-conflicts", "-allow-id-conflicts"}, []string{"-max-batch-tokens", "-stop-codon"}},
	} {
		c := runChild(t, tc.cmd+" -h", nil)
		if c.code != cli.ExitOK {
			t.Errorf("%s -h: exit %d", tc.cmd, c.code)
		}
		for _, s := range tc.has {
			if !strings.Contains(c.stderr, "  "+s) {
				t.Errorf("%s -h lacks %q:\n%s", tc.cmd, s, c.stderr)
			}
		}
		for _, s := range tc.lack {
			if strings.Contains(c.stderr, "  "+s) {
				t.Errorf("%s -h lists %q:\n%s", tc.cmd, s, c.stderr)
			}
		}
	}
}

// TestWorkerFlagSubsets: every name of the subsets is a worker flag, and the fields they do not
// expose keep the worker's defaults.
func TestWorkerFlagSubsets(t *testing.T) {
	for _, names := range [][]string{modelFlags, streamFlags, precisionFlags} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		var cfg pipeline.Config
		registerWorkerFlags(fs, &cfg, names...)
		if cfg.InStream != pipeline.Default().InStream || cfg.MaxBatchTokens != pipeline.Default().MaxBatchTokens {
			t.Errorf("%v: defaults not applied: %+v", names, cfg)
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n != len(names) {
			t.Errorf("%v: %d flags registered", names, n)
		}
	}
}

// TestParseArgs: flags anywhere among the files, "-" a file, "--" ends the flags; an unknown
// flag is a usage error.
func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		files []string
		out   string
		quiet bool
	}{
		{[]string{"a.fa", "--out", "x.parquet", "b.fa"}, []string{"a.fa", "b.fa"}, "x.parquet", false},
		{[]string{"--out=x", "a.fa", "-", "--quiet", "b.fa.xz"}, []string{"a.fa", "-", "b.fa.xz"}, "x", true},
		{[]string{"a.fa", "--", "--out", "-q"}, []string{"a.fa", "--out", "-q"}, "d", false},
		{[]string{"-quiet"}, nil, "d", true},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		out, quiet := fs.String("out", "d", ""), fs.Bool("quiet", false, "")
		files, err := parseArgs(fs, tc.args)
		if err != nil || strings.Join(files, " ") != strings.Join(tc.files, " ") || *out != tc.out || *quiet != tc.quiet {
			t.Errorf("parseArgs(%q) = %q, out %q, quiet %v, %v", tc.args, files, *out, *quiet, err)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.String("out", "", "")
	var ue *cli.UsageError
	if _, err := parseArgs(fs, []string{"a.fa", "--out", "x", "b.fa", "--nope"}); !errors.As(err, &ue) {
		t.Errorf("unknown flag after a second file: %v, want a usage error", err)
	}
}
