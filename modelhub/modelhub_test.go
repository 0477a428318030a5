package modelhub_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seqembed/seqembed/internal/testutil"
	"github.com/seqembed/seqembed/modelhub"
	"github.com/seqembed/seqembed/modelhub/hubtest"
)

const (
	tinyID      = "facebook/esm2-tiny-test"
	weightsName = "model.safetensors"
	weightsSize = 1<<20 + 300_000 // over 1 MiB: the progress indicator is shown
)

// randomBytes is n reproducible random bytes.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// tinyRepo is the fake ESM-2 repository: config, tokenizer files, the weights in both formats
// (safetensors must win), files a pull does not need.
func tinyRepo() hubtest.Repo {
	return hubtest.Repo{ID: tinyID, Tags: []string{"v1.0"}, Files: []hubtest.File{
		{Name: ".gitattributes", Data: []byte("*.bin filter=lfs\n")},
		{Name: "README.md", Data: []byte("# tiny\n")},
		{Name: "config.json", Data: []byte(`{"architectures":["EsmForMaskedLM"],"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":33}`)},
		{Name: "special_tokens_map.json", Data: []byte(`{"cls_token":"<cls>","eos_token":"<eos>","mask_token":"<mask>","pad_token":"<pad>","unk_token":"<unk>"}`)},
		{Name: "tokenizer_config.json", Data: []byte(`{"model_max_length":1026}`)},
		{Name: "vocab.txt", Data: []byte("<cls>\n<pad>\n<eos>\n<unk>\nL\nA\nG\nV\n")},
		{Name: weightsName, Data: randomBytes(1, weightsSize), LFS: true},
		{Name: "pytorch_model.bin", Data: randomBytes(2, 200_000), LFS: true},
	}}
}

func file(r hubtest.Repo, name string) hubtest.File {
	for _, f := range r.Files {
		if f.Name == name {
			return f
		}
	}
	panic("no file " + name)
}

// newClient is a client of hub with a cache of its own, fast retries and no environment.
func newClient(t *testing.T, hub *hubtest.Hub, opts ...modelhub.Option) *modelhub.Client {
	t.Helper()
	base := []modelhub.Option{modelhub.WithEndpoint(hub.URL), modelhub.WithToken(""), modelhub.WithOffline(false),
		modelhub.WithCacheDir(t.TempDir()), modelhub.WithRetry(5, time.Millisecond, 10*time.Millisecond)}
	c, err := modelhub.New(append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func sha256Of(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// cdnGETs are the CDN's GETs so far.
func cdnGETs(hub *hubtest.Hub) []hubtest.Request {
	var out []hubtest.Request
	for _, r := range hub.Requests() {
		if r.Server == "cdn" && r.Method == "GET" {
			out = append(out, r)
		}
	}
	return out
}

func incompleteFiles(t *testing.T, cache string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(cache, "models--*", "blobs", "*.incomplete"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPullWritesHubCacheLayout: a pull fetches config.json, the tokenizer's small files and
// model.safetensors (not pytorch_model.bin, not the rest) into huggingface_hub's layout: blobs
// named by sha256 (LFS) or git sha1, snapshot symlinks to them, refs/main; the token goes to the
// hub and never to the CDN the weights are redirected to.
func TestPullWritesHubCacheLayout(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	c := newClient(t, hub, modelhub.WithToken("hf_public_token_123"))
	s, err := c.Pull(context.Background(), "hf:"+tinyID)
	if err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(c.CacheDir(), "models--facebook--esm2-tiny-test")
	commit := hub.Commit(tinyID)
	if s.Repo != tinyID || s.Revision != "main" || s.Commit != commit || s.Dir != filepath.Join(repoDir, "snapshots", commit) || s.Weights != weightsName {
		t.Fatalf("snapshot %+v, want repo %s, revision main, commit %s in %s with %s", s, tinyID, commit, repoDir, weightsName)
	}
	want := []string{"config.json", "special_tokens_map.json", "vocab.txt", weightsName}
	if !slices.Equal(s.Files, want) {
		t.Fatalf("files %v, want %v", s.Files, want)
	}
	var size int64
	for _, name := range want {
		f := file(repo, name)
		size += int64(len(f.Data))
		target, err := os.Readlink(s.Path(name))
		if err != nil || target != filepath.Join("..", "..", "blobs", hubtest.ID(f)) {
			t.Errorf("%s links to %q (%v), want ../../blobs/%s", name, target, err, hubtest.ID(f))
		}
		if got, err := os.ReadFile(s.Path(name)); err != nil || !bytes.Equal(got, f.Data) {
			t.Errorf("%s: content differs (%v)", name, err)
		}
	}
	if s.Size != size {
		t.Errorf("size %d, want %d", s.Size, size)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s", got)
	}
	if ref, err := os.ReadFile(filepath.Join(repoDir, "refs", "main")); err != nil || string(ref) != commit {
		t.Errorf("refs/main = %q (%v), want %s", ref, err, commit)
	}
	if n := hub.Served("pytorch_model.bin") + hub.Served("README.md") + hub.Served("tokenizer_config.json"); n != 0 {
		t.Errorf("%d bytes of files a pull does not need were served", n)
	}
	if inc := incompleteFiles(t, c.CacheDir()); len(inc) > 0 {
		t.Errorf(".incomplete files left: %v", inc)
	}
	for _, r := range hub.Requests() {
		switch {
		case r.Server == "cdn" && r.Authorization != "":
			t.Errorf("the token was sent to the CDN: %s %s", r.Method, r.Path)
		case r.Server == "hub" && r.Authorization != "Bearer hf_public_token_123":
			t.Errorf("no token on the hub's %s %s", r.Method, r.Path)
		}
	}
	if n := len(cdnGETs(hub)); n != 1 {
		t.Errorf("%d CDN GETs, want 1", n)
	}
}

// TestPullAgainMakesNoGET: with the revision's snapshot in the cache a second pull makes one
// HEAD and no GET; Resolve makes no request at all; a tag at the same commit reuses it.
func TestPullAgainMakesNoGET(t *testing.T) {
	hub := hubtest.New(t, tinyRepo())
	c := newClient(t, hub)
	first, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	hub.Reset()
	second, err := c.Pull(context.Background(), tinyID+"@main")
	if err != nil {
		t.Fatal(err)
	}
	if gets, heads := hub.Count("", "GET"), hub.Count("", "HEAD"); gets != 0 || heads != 1 || second.Dir != first.Dir {
		t.Fatalf("second pull: %d GETs, %d HEADs, dir %s; want 0, 1, %s (requests %v)", gets, heads, second.Dir, first.Dir, hub.Requests())
	}
	hub.Reset()
	if s, err := c.Resolve(context.Background(), "hf:"+tinyID); err != nil || s.Dir != first.Dir {
		t.Fatalf("Resolve: %v, %+v", err, s)
	}
	if s, err := c.Pull(context.Background(), tinyID+"@v1.0"); err != nil || s.Dir != first.Dir || s.Revision != "v1.0" {
		t.Fatalf("pull of a tag at the same commit: %v, %+v", err, s)
	}
	if gets := hub.Count("", "GET"); gets != 0 {
		t.Fatalf("Resolve and the tag made %d GETs: %v", gets, hub.Requests())
	}
}

// TestPullResumesDroppedTransfer: the CDN drops the connection part-way through the weights;
// the retry (internal/retry) asks for the rest with Range and the server sends only the rest, so
// the file's bytes are served once in all, and the result has the right sha256.
func TestPullResumesDroppedTransfer(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	const cut = 300_000
	hub.Drop(weightsName, cut)
	var log bytes.Buffer
	c := newClient(t, hub, modelhub.WithProgress(&log))
	s, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	gets := cdnGETs(hub)
	if len(gets) != 2 || gets[0].Range != "" || gets[1].Range != "bytes=300000-" {
		t.Fatalf("CDN GETs %+v, want one without Range, then Range bytes=300000-", gets)
	}
	if got := hub.Served(weightsName); got != weightsSize {
		t.Errorf("%d bytes served for %d-byte weights, want each byte once", got, weightsSize)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s after the resume", got)
	}
	for _, want := range []string{"transfer dropped at 300000 of", "trying again", weightsName + " (MiB): 2/2"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

// TestPullRestartsWhenRangeIgnored: a server that answers the resumed request with 200 and the
// whole file (Range ignored) is written from the start, not appended.
func TestPullRestartsWhenRangeIgnored(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	hub.Drop(weightsName, 300_000)
	hub.IgnoreRange(weightsName)
	c := newClient(t, hub)
	s, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	if gets := cdnGETs(hub); len(gets) != 2 || gets[1].Range != "bytes=300000-" {
		t.Fatalf("CDN GETs %+v", gets)
	}
	if got := hub.Served(weightsName); got != 300_000+weightsSize {
		t.Errorf("served %d bytes, want %d (the cut, then all of it)", got, 300_000+weightsSize)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s", got)
	}
}

// TestPullRefusesBadSHA256: weights whose bytes do not hash to the X-Linked-Etag are refused with
// ErrChecksum naming the file, the expected and the actual sha256; the partial download is
// deleted and no snapshot file or ref is written.
func TestPullRefusesBadSHA256(t *testing.T) {
	repo := tinyRepo()
	for i := range repo.Files {
		if repo.Files[i].Name == weightsName {
			repo.Files[i].WrongID = true
		}
	}
	hub := hubtest.New(t, repo)
	c := newClient(t, hub)
	_, err := c.Pull(context.Background(), tinyID)
	want := hubtest.ID(file(repo, weightsName))
	got := sha256Of(file(repo, weightsName).Data)
	if !errors.Is(err, modelhub.ErrChecksum) || !strings.Contains(err.Error(), weightsName) ||
		!strings.Contains(err.Error(), "expected "+want) || !strings.Contains(err.Error(), "got "+got) {
		t.Fatalf("err = %v, want ErrChecksum naming %s, expected %s and got %s", err, weightsName, want, got)
	}
	repoDir := filepath.Join(c.CacheDir(), "models--facebook--esm2-tiny-test")
	for _, p := range []string{filepath.Join(repoDir, "snapshots"), filepath.Join(repoDir, "refs"), filepath.Join(repoDir, "blobs", want)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused download (%v)", p, err)
		}
	}
	if inc := incompleteFiles(t, c.CacheDir()); len(inc) > 0 {
		t.Errorf(".incomplete files left: %v", inc)
	}
	if _, err := c.Resolve(context.Background(), tinyID); err == nil {
		t.Error("Resolve found a snapshot after the refused download")
	}
}

// TestPullPrivateRepo: a private repository without a token is a one-sentence ErrUnauthorized
// naming HF_TOKEN; a wrong token is "refused", and appears in no message or log line; the right
// token pulls it, still without sending the token to the CDN.
func TestPullPrivateRepo(t *testing.T) {
	repo := tinyRepo()
	repo.ID, repo.Token = "facebook/esm2-private-test", "hf_s3cret_token_value"
	hub := hubtest.New(t, repo)

	_, err := newClient(t, hub).Pull(context.Background(), repo.ID)
	if !errors.Is(err, modelhub.ErrUnauthorized) || !strings.Contains(err.Error(), "HF_TOKEN") ||
		!strings.Contains(err.Error(), "HTTP 401") || strings.Contains(err.Error(), ". ") {
		t.Fatalf("no token: err = %v, want one sentence: ErrUnauthorized naming HF_TOKEN and HTTP 401", err)
	}
	t.Log(err)

	var log bytes.Buffer
	wrong := "hf_wrong_token_value"
	_, err = newClient(t, hub, modelhub.WithToken(wrong), modelhub.WithProgress(&log)).Pull(context.Background(), repo.ID)
	if !errors.Is(err, modelhub.ErrUnauthorized) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("wrong token: err = %v, want ErrUnauthorized saying the token was refused", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(log.String(), wrong) {
		t.Fatalf("the token appears in the error or log: %v\n%s", err, log.String())
	}
	t.Log(err)

	s, err := newClient(t, hub, modelhub.WithToken(repo.Token)).Pull(context.Background(), repo.ID)
	if err != nil || s.Weights != weightsName {
		t.Fatalf("right token: %v, %+v", err, s)
	}
	for _, r := range hub.Requests() {
		if r.Server == "cdn" && r.Authorization != "" {
			t.Fatalf("the token was sent to the CDN: %+v", r)
		}
	}
}

// TestTokenNotForwardedOnRedirect: when the GET itself is redirected to the CDN (a mirror whose
// HEAD gives no Location), the redirected request carries no token, though Go would forward it
// to another port of the same host or to a subdomain (cdn-lfs.huggingface.co).
func TestTokenNotForwardedOnRedirect(t *testing.T) {
	repo := tinyRepo()
	repo.RedirectOnGETOnly = true
	hub := hubtest.New(t, repo)
	s, err := newClient(t, hub, modelhub.WithToken("hf_public_token_123")).Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s", got)
	}
	gets := cdnGETs(hub)
	if len(gets) != 1 || gets[0].Authorization != "" {
		t.Fatalf("CDN GETs %+v, want one without Authorization", gets)
	}
	if n := hub.Count("hub", "GET"); n < 2 {
		t.Fatalf("%d hub GETs: the weights were not fetched through the hub's redirect", n)
	}
}

// TestPullNotFound: an unknown repository, revision or file is ErrNotFound saying which; a
// repository without weights is ErrNoWeights; a bad reference is ErrBadRef.
func TestPullNotFound(t *testing.T) {
	noWeights := hubtest.Repo{ID: "facebook/esm2-noweights-test", Files: []hubtest.File{{Name: "config.json", Data: []byte("{}")}}}
	noConfig := hubtest.Repo{ID: "facebook/esm2-noconfig-test", Files: []hubtest.File{{Name: weightsName, Data: []byte("x"), LFS: true}}}
	hub := hubtest.New(t, tinyRepo(), noWeights, noConfig)
	c := newClient(t, hub)
	for _, tc := range []struct {
		ref      string
		sentinel error
		says     string
	}{
		{"facebook/no-such-repo", modelhub.ErrNotFound, "no such repository"},
		{tinyID + "@no-such-branch", modelhub.ErrNotFound, "no such revision"},
		{noConfig.ID, modelhub.ErrNotFound, "config.json: not found: no such file at this revision"},
		{noWeights.ID, modelhub.ErrNoWeights, "neither model.safetensors nor pytorch_model.bin"},
		{"facebook", modelhub.ErrBadRef, "not org/name"},
	} {
		_, err := c.Pull(context.Background(), tc.ref)
		if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want %v saying %q", tc.ref, err, tc.sentinel, tc.says)
		}
	}
}

// TestPullWithoutListingProbesFiles: an endpoint without the revision listing (404) is probed
// with HEADs, and the same files are fetched.
func TestPullWithoutListingProbesFiles(t *testing.T) {
	repo := tinyRepo()
	repo.NoListing = true
	hub := hubtest.New(t, repo)
	s, err := newClient(t, hub).Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"config.json", "special_tokens_map.json", "vocab.txt", weightsName}; !slices.Equal(s.Files, want) {
		t.Fatalf("files %v, want %v", s.Files, want)
	}
}

// TestPullUsesCacheWhenHubUnreachable: when the hub cannot be reached, a pull of a cached
// revision returns the cached snapshot (and says so); an uncached one fails with ErrNetwork.
func TestPullUsesCacheWhenHubUnreachable(t *testing.T) {
	hub := hubtest.New(t, tinyRepo())
	online := newClient(t, hub)
	want, err := online.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there any more
	var log bytes.Buffer
	c := newClient(t, hub, modelhub.WithEndpoint(gone.URL), modelhub.WithCacheDir(online.CacheDir()), modelhub.WithProgress(&log))
	if s, err := c.Pull(context.Background(), tinyID); err != nil || s.Dir != want.Dir {
		t.Fatalf("pull with the hub gone: %v, %+v", err, s)
	}
	if !strings.Contains(log.String(), "using the cached snapshot "+want.Commit) {
		t.Errorf("log does not say the cache was used:\n%s", log.String())
	}
	if _, err := c.Pull(context.Background(), "facebook/other"); !errors.Is(err, modelhub.ErrNetwork) || !strings.Contains(err.Error(), "gave up after 5 tries") {
		t.Errorf("uncached pull with the hub gone: err = %v, want ErrNetwork after 5 tries", err)
	}
}

// TestPullFallsBackToPytorchBin: a repository without model.safetensors gives pytorch_model.bin.
func TestPullFallsBackToPytorchBin(t *testing.T) {
	repo := tinyRepo()
	repo.ID = "facebook/esm2-bin-test"
	repo.Files = slices.DeleteFunc(repo.Files, func(f hubtest.File) bool { return f.Name == weightsName })
	hub := hubtest.New(t, repo)
	s, err := newClient(t, hub).Pull(context.Background(), repo.ID)
	if err != nil || s.Weights != "pytorch_model.bin" || sha256File(t, s.Path(s.Weights)) != sha256Of(file(repo, "pytorch_model.bin").Data) {
		t.Fatalf("%v, %+v; want pytorch_model.bin", err, s)
	}
}

// TestOfflineResolvesFromCache: offline (WithOffline or HF_HUB_OFFLINE=1) a pull or resolve of a
// cached revision (by branch through refs/, or by commit) makes no request; an uncached one is
// ErrNotCached.
func TestOfflineResolvesFromCache(t *testing.T) {
	hub := hubtest.New(t, tinyRepo())
	online := newClient(t, hub)
	want, err := online.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	hub.Reset()
	offline := newClient(t, hub, modelhub.WithCacheDir(online.CacheDir()), modelhub.WithOffline(true))
	for _, ref := range []string{tinyID, "hf:" + tinyID + "@" + want.Commit} {
		if s, err := offline.Pull(context.Background(), ref); err != nil || s.Dir != want.Dir || s.Weights != weightsName {
			t.Errorf("offline pull %s: %v, %+v", ref, err, s)
		}
		if s, err := offline.Resolve(context.Background(), ref); err != nil || s.Dir != want.Dir {
			t.Errorf("offline resolve %s: %v, %+v", ref, err, s)
		}
	}
	if _, err := offline.Pull(context.Background(), tinyID+"@v1.0"); !errors.Is(err, modelhub.ErrNotCached) {
		t.Errorf("offline pull of a revision never pulled: err = %v, want ErrNotCached", err)
	}
	t.Setenv(modelhub.EnvOffline, "1")
	t.Setenv(modelhub.EnvCache, online.CacheDir())
	t.Setenv(modelhub.EnvEndpoint, hub.URL)
	fromEnv, err := modelhub.New()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := fromEnv.Pull(context.Background(), tinyID); err != nil || s.Dir != want.Dir {
		t.Errorf("HF_HUB_OFFLINE=1 pull: %v, %+v", err, s)
	}
	if _, err := fromEnv.Resolve(context.Background(), "facebook/other"); !errors.Is(err, modelhub.ErrNotCached) {
		t.Errorf("HF_HUB_OFFLINE=1 resolve of an uncached repo: err = %v, want ErrNotCached", err)
	}
	if n := len(hub.Requests()); n != 0 {
		t.Errorf("offline made %d requests: %v", n, hub.Requests())
	}
}

// TestCancelMidFileLeavesResumableFile: cancelling a pull while the weights download stops it
// promptly with context.Canceled and keeps blobs/{sha256}.incomplete with the bytes received;
// the next pull asks only for the rest.
func TestCancelMidFileLeavesResumableFile(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	const cut = 400_000
	reached := hub.Stall(weightsName, cut)
	c := newClient(t, hub)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := c.Pull(ctx, tinyID); done <- err }()
	<-reached
	inc := filepath.Join(c.CacheDir(), "models--facebook--esm2-tiny-test", "blobs", hubtest.ID(file(repo, weightsName))+".incomplete")
	size := func() int64 {
		fi, err := os.Stat(inc)
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	testutil.Eventually(t, 10*time.Second, func() (bool, string) {
		return size() == cut, "the .incomplete file at the stall point"
	})
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Pull did not return after ctx was cancelled")
	}
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), weightsName) {
		t.Fatalf("err = %v, want context.Canceled naming %s", err, weightsName)
	}
	if n := size(); n != cut {
		t.Fatalf(".incomplete has %d bytes after the cancel, want %d", n, cut)
	}
	s, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	gets := cdnGETs(hub)
	if len(gets) != 2 || gets[1].Range != "bytes=400000-" {
		t.Fatalf("CDN GETs %+v, want the second with Range bytes=400000-", gets)
	}
	if got := hub.Served(weightsName); got != weightsSize {
		t.Errorf("served %d bytes, want %d", got, weightsSize)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s", got)
	}
}

// TestStalledTransferResumes: a transfer that receives nothing for the stall timeout is dropped
// and resumed from the bytes written.
func TestStalledTransferResumes(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	hub.Stall(weightsName, 200_000)
	c := newClient(t, hub, modelhub.WithStallTimeout(100*time.Millisecond))
	s, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	if gets := cdnGETs(hub); len(gets) != 2 || gets[1].Range != "bytes=200000-" {
		t.Fatalf("CDN GETs %+v", gets)
	}
	if got := sha256File(t, s.Path(weightsName)); got != sha256Of(file(repo, weightsName).Data) {
		t.Errorf("weights sha256 %s", got)
	}
}

// TestConcurrentPullsDownloadOnce: two pulls of one model into one cache at once download each
// byte once (the blob's lock) and both succeed.
func TestConcurrentPullsDownloadOnce(t *testing.T) {
	repo := tinyRepo()
	hub := hubtest.New(t, repo)
	a := newClient(t, hub)
	b := newClient(t, hub, modelhub.WithCacheDir(a.CacheDir()))
	errs := make(chan error, 2)
	for _, c := range []*modelhub.Client{a, b} {
		go func() { _, err := c.Pull(context.Background(), tinyID); errs <- err }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := hub.Served(weightsName); got != weightsSize {
		t.Fatalf("served %d bytes of the weights, want %d (once)", got, weightsSize)
	}
}

// TestList: List reports each snapshot with its refs, files, size and completeness.
func TestList(t *testing.T) {
	bin := tinyRepo()
	bin.ID = "facebook/esm2-bin-test"
	bin.Files = slices.DeleteFunc(bin.Files, func(f hubtest.File) bool { return f.Name == weightsName })
	hub := hubtest.New(t, tinyRepo(), bin)
	c := newClient(t, hub)
	if got, err := c.List(context.Background()); err != nil || len(got) != 0 {
		t.Fatalf("empty cache: %v, %v", got, err)
	}
	tiny, err := c.Pull(context.Background(), tinyID)
	if err != nil {
		t.Fatal(err)
	}
	binSnap, err := c.Pull(context.Background(), bin.ID+"@"+hub.Commit(bin.ID))
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("List = %+v, want 2 snapshots", got)
	}
	// Sorted by folder: models--facebook--esm2-bin-test first.
	if m := got[0]; m.Repo != bin.ID || m.Commit != binSnap.Commit || len(m.Revisions) != 0 || !m.Complete || m.Size != binSnap.Size {
		t.Errorf("bin: %+v, want %+v without revisions", m, binSnap)
	}
	if m := got[1]; m.Repo != tinyID || m.Commit != tiny.Commit || !slices.Equal(m.Revisions, []string{"main"}) || !m.Complete || m.Size != tiny.Size || m.Dir != tiny.Dir {
		t.Errorf("tiny: %+v, want %+v at main", m, tiny)
	}
}

// TestParseRef: references with and without hf: and @revision; invalid ones are ErrBadRef.
func TestParseRef(t *testing.T) {
	for in, want := range map[string]modelhub.Ref{
		"hf:facebook/esm2_t6_8M_UR50D":                    {Repo: "facebook/esm2_t6_8M_UR50D", Revision: "main"},
		"facebook/esm2_t36_3B_UR50D@v1.0":                 {Repo: "facebook/esm2_t36_3B_UR50D", Revision: "v1.0"},
		"hf:org/name@refs/pr/1":                           {Repo: "org/name", Revision: "refs/pr/1"},
		"  a/b@0123456789abcdef0123456789abcdef01234567 ": {Repo: "a/b", Revision: "0123456789abcdef0123456789abcdef01234567"},
	} {
		got, err := modelhub.ParseRef(in)
		if err != nil || got != want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if again, err := modelhub.ParseRef(got.String()); err != nil || again != got {
			t.Errorf("ParseRef(%q.String()) = %+v, %v", in, again, err)
		}
	}
	for _, in := range []string{"", "hf:", "facebook", "a/b/c", "a/b@", "a/b@../x", "a/b@x//y", "-a/b", "a--b/c", "a/b c", "a/b@x y", "a/.b"} {
		if got, err := modelhub.ParseRef(in); !errors.Is(err, modelhub.ErrBadRef) {
			t.Errorf("ParseRef(%q) = %+v, %v; want ErrBadRef", in, got, err)
		}
	}
}

// TestNewOptions: bad options and environment values are ErrOption; HF_ENDPOINT, HF_TOKEN and
// SEQEMBED_CACHE give the defaults.
func TestNewOptions(t *testing.T) {
	for name, o := range map[string]modelhub.Option{
		"ftp endpoint":     modelhub.WithEndpoint("ftp://example.com"),
		"no host":          modelhub.WithEndpoint("https://"),
		"query":            modelhub.WithEndpoint("https://example.com/?a=b"),
		"empty cache":      modelhub.WithCacheDir(" "),
		"nil client":       modelhub.WithHTTPClient(nil),
		"token with space": modelhub.WithToken("a b"),
		"no tries":         modelhub.WithRetry(0, time.Second, time.Second),
		"max < initial":    modelhub.WithRetry(3, time.Second, time.Millisecond),
		"zero stall":       modelhub.WithStallTimeout(0),
	} {
		if _, err := modelhub.New(o); !errors.Is(err, modelhub.ErrOption) {
			t.Errorf("%s: err = %v, want ErrOption", name, err)
		}
	}
	t.Setenv(modelhub.EnvEndpoint, "not a url")
	if _, err := modelhub.New(); !errors.Is(err, modelhub.ErrOption) || !strings.Contains(err.Error(), modelhub.EnvEndpoint) {
		t.Errorf("bad HF_ENDPOINT: err = %v, want ErrOption naming it", err)
	}

	repo := tinyRepo()
	repo.ID, repo.Token = "facebook/esm2-private-test", "hf_env_token_value"
	hub := hubtest.New(t, repo)
	dir := t.TempDir()
	t.Setenv(modelhub.EnvEndpoint, hub.URL+"/")
	t.Setenv(modelhub.EnvToken, repo.Token)
	t.Setenv(modelhub.EnvCache, dir)
	t.Setenv(modelhub.EnvOffline, "")
	c, err := modelhub.New()
	if err != nil {
		t.Fatal(err)
	}
	if c.CacheDir() != dir {
		t.Errorf("cache %s, want %s from %s", c.CacheDir(), dir, modelhub.EnvCache)
	}
	if s, err := c.Pull(context.Background(), repo.ID); err != nil || !strings.HasPrefix(s.Dir, dir) {
		t.Errorf("pull with the environment's endpoint and token: %v, %+v", err, s)
	}
}
