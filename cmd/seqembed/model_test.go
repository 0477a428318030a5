package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/modelhub/hubtest"
)

// modelTestHub is a fake hub with a public and a private tiny repository, and the environment
// pointing at it (no token, online).
func modelTestHub(t *testing.T) *hubtest.Hub {
	t.Helper()
	files := []hubtest.File{
		{Name: "config.json", Data: []byte(`{"architectures":["EsmForMaskedLM"],"hidden_size":32}`)},
		{Name: "model.safetensors", Data: bytes.Repeat([]byte("esm2"), 50_000), LFS: true},
	}
	hub := hubtest.New(t,
		hubtest.Repo{ID: "facebook/esm2-tiny-test", Files: files},
		hubtest.Repo{ID: "facebook/esm2-private-test", Files: files, Token: "hf_cli_secret_token"})
	t.Setenv(modelhub.EnvEndpoint, hub.URL)
	t.Setenv(modelhub.EnvToken, "")
	t.Setenv(modelhub.EnvOffline, "")
	t.Setenv(modelhub.EnvCache, t.TempDir())
	return hub
}

// TestModelPullPrintsSnapshotDir: `model pull NAME` prints the snapshot directory as its one line
// of stdout (the summary goes to stderr); a second pull of the same revision by --revision
// downloads nothing; `model list` shows the repository, its ref and commit.
func TestModelPullPrintsSnapshotDir(t *testing.T) {
	hub := modelTestHub(t)
	cache := t.TempDir()
	var out, errOut bytes.Buffer
	if err := modelCmd(context.Background(), []string{"pull", "--cache", cache, "facebook/esm2-tiny-test"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	commit := hub.Commit("facebook/esm2-tiny-test")
	dir := filepath.Join(cache, "models--facebook--esm2-tiny-test", "snapshots", commit)
	if out.String() != dir+"\n" {
		t.Fatalf("stdout %q, want the snapshot directory %s and a newline", out.String(), dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "model: hf:facebook/esm2-tiny-test@main is commit "+commit) {
		t.Errorf("stderr lacks the summary:\n%s", errOut.String())
	}

	hub.Reset()
	out.Reset()
	if err := modelCmd(context.Background(), []string{"pull", "--quiet", "--revision", commit, "--cache", cache, "hf:facebook/esm2-tiny-test"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if out.String() != dir+"\n" || hub.Count("", "GET") != 0 {
		t.Fatalf("second pull: stdout %q, %d GETs; want %s and none", out.String(), hub.Count("", "GET"), dir)
	}

	out.Reset()
	if err := modelCmd(context.Background(), []string{"list", "--cache", cache}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REPO") || strings.Join(strings.Fields(lines[1])[:3], " ") != "facebook/esm2-tiny-test main "+commit {
		t.Fatalf("list:\n%s", out.String())
	}
}

// TestModelExitCodes: a missing or bad NAME, subcommand or flag exits 2, -h 0, a private
// repository without HF_TOKEN 1 (with the error naming HF_TOKEN), a bad HF_ENDPOINT 2.
func TestModelExitCodes(t *testing.T) {
	modelTestHub(t)
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, cli.ExitUsage},
		{[]string{"fetch"}, cli.ExitUsage},
		{[]string{"pull"}, cli.ExitUsage},
		{[]string{"pull", "a/b", "c/d"}, cli.ExitUsage},
		{[]string{"pull", "facebook"}, cli.ExitUsage},
		{[]string{"pull", "--revision", "v2", "org/name@v1"}, cli.ExitUsage},
		{[]string{"pull", "--revision", "../x", "org/name"}, cli.ExitUsage},
		{[]string{"pull", "--bogus", "org/name"}, cli.ExitUsage},
		{[]string{"list", "extra"}, cli.ExitUsage},
		{[]string{"-h"}, cli.ExitOK},
		{[]string{"pull", "-h"}, cli.ExitOK},
		{[]string{"list"}, cli.ExitOK},
		{[]string{"pull", "--quiet", "facebook/esm2-private-test"}, cli.ExitFailed},
		{[]string{"pull", "--quiet", "facebook/no-such-repo"}, cli.ExitFailed},
	} {
		err := runModelCmd(context.Background(), tc.args)
		if got := cli.Code(err); got != tc.code {
			t.Errorf("model %v: exit %d (%v), want %d", tc.args, got, err, tc.code)
		}
	}
	err := runModelCmd(context.Background(), []string{"pull", "--quiet", "facebook/esm2-private-test"})
	if !errors.Is(err, modelhub.ErrUnauthorized) || !strings.Contains(err.Error(), "HF_TOKEN") {
		t.Errorf("private repository: %v, want ErrUnauthorized naming HF_TOKEN", err)
	}
	t.Setenv(modelhub.EnvEndpoint, "ftp://example.com")
	if got := cli.Code(runModelCmd(context.Background(), []string{"pull", "org/name"})); got != cli.ExitUsage {
		t.Errorf("bad HF_ENDPOINT: exit %d, want %d", got, cli.ExitUsage)
	}
}
