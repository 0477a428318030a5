package modelhub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/seqembed/seqembed/internal/retry"
)

// fileMeta is what a HEAD on a file's resolve URL says about it.
type fileMeta struct {
	name     string
	location string // where to GET it: the resolve URL, or the CDN URL it redirects to
	commit   string // X-Repo-Commit
	id       string // blob name: X-Linked-Etag (sha256) for LFS files, else ETag (git sha1)
	size     int64  // X-Linked-Size, else Content-Length
	lfs      bool   // X-Linked-Etag was set
}

// safeID is an ETag usable as a file name in blobs/.
var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$`)

// Pull makes sure the cache holds ref ("[hf:]org/name[@revision]"; see ParseRef) and returns its
// snapshot. It asks the hub which commit the revision is at (one HEAD) and downloads nothing
// more when the cache has that commit's snapshot; otherwise it lists the revision's files and
// downloads config.json, the weights and the optional files, resuming partial downloads. If the
// hub cannot be reached (after the retries) and the cache has the revision, the cached snapshot
// is returned (with a log line). Offline, Pull is Resolve.
func (c *Client) Pull(ctx context.Context, ref string) (Snapshot, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Snapshot{}, err
	}
	s, err := c.pull(ctx, r)
	return s, c.redact(err)
}

// Resolve returns ref's snapshot from the cache without touching the network when the cache
// has it (refs/{revision} and a complete snapshot: a branch is not checked for new commits, so
// a worker starts on what was pulled), and otherwise pulls it (offline: ErrNotCached).
func (c *Client) Resolve(ctx context.Context, ref string) (Snapshot, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Snapshot{}, err
	}
	if s, err := c.fromCache(r); err == nil || c.offline {
		return s, err
	}
	s, err := c.pull(ctx, r)
	return s, c.redact(err)
}

func (c *Client) pull(ctx context.Context, r Ref) (Snapshot, error) {
	if c.offline {
		return c.fromCache(r)
	}
	cfg, err := c.fileMeta(ctx, r, r.Revision, fileConfig)
	if err != nil {
		if isTransient(err) && ctx.Err() == nil {
			if s, cerr := c.fromCache(r); cerr == nil {
				c.logf("%s: the hub cannot be reached (%v); using the cached snapshot %s", r, err, s.Commit)
				return s, nil
			}
		}
		return Snapshot{}, err
	}
	commit := cfg.commit
	if s, ok := c.cachedSnapshot(r, commit); ok {
		return s, c.writeRef(r, commit)
	}
	names, err := c.listFiles(ctx, r, commit)
	if err != nil {
		return Snapshot{}, err
	}
	metas := []fileMeta{cfg}
	for _, name := range names[1:] {
		m, err := c.fileMeta(ctx, r, commit, name)
		if err != nil {
			return Snapshot{}, err
		}
		metas = append(metas, m)
	}
	// Every blob first, then the links and the ref: a pull that fails leaves no snapshot.
	blobs := make([]string, len(metas))
	for i, m := range metas {
		if blobs[i], err = c.ensureBlob(ctx, where{repo: r.Repo, rev: r.Revision, file: m.name}, m); err != nil {
			return Snapshot{}, err
		}
	}
	dir := c.snapshotDir(r.Repo, commit)
	for i, m := range metas {
		if err := linkFile(blobs[i], filepath.Join(dir, m.name)); err != nil {
			return Snapshot{}, where{repo: r.Repo, rev: r.Revision, file: m.name}.errorf(ErrCache, "linking the snapshot file: %w", err)
		}
	}
	if err := c.writeRef(r, commit); err != nil {
		return Snapshot{}, err
	}
	s, ok := c.cachedSnapshot(r, commit)
	if !ok {
		return Snapshot{}, where{repo: r.Repo, rev: r.Revision}.errorf(ErrCache, "snapshot %s incomplete after the pull", dir)
	}
	return s, nil
}

// do runs fn through retry.Do until it succeeds, fails for good (an error that is not
// transient), ctx ends, or c.tries tries in a row fail without progress; progressed (nil: never)
// says whether the try that just failed made some (wrote bytes), which starts the count again.
func (c *Client) do(ctx context.Context, progressed func() bool, fn func(context.Context) error) error {
	failures, gaveUp := 0, false
	p := retry.Policy{Initial: c.initial, Max: c.maxWait,
		Retryable: func(err error) bool {
			if !isTransient(err) {
				return false
			}
			if progressed != nil && progressed() {
				failures = 0
			}
			failures++
			gaveUp = failures >= c.tries
			return !gaveUp
		},
		OnRetry: func(_ int, err error, wait time.Duration) {
			c.logf("%v; trying again in %s", err, wait.Round(time.Millisecond))
		}}
	err := retry.Do(ctx, p, fn)
	if gaveUp {
		return fmt.Errorf("%w (gave up after %d tries in a row)", err, failures)
	}
	return err
}

// resolveURL is {endpoint}/{repo}/resolve/{revision}/{file}.
func (c *Client) resolveURL(repo, rev, name string) string {
	return c.endpoint.String() + "/" + repo + "/resolve/" + url.PathEscape(rev) + "/" + url.PathEscape(name)
}

// fileMeta HEADs a file's resolve URL at rev, following redirects on the same host only (a
// renamed repository) as huggingface_hub does, and reads the commit, identity, size and download
// location. Transient failures are retried.
func (c *Client) fileMeta(ctx context.Context, r Ref, rev, name string) (fileMeta, error) {
	w := where{repo: r.Repo, rev: r.Revision, file: name}
	var m fileMeta
	err := c.do(ctx, nil, func(ctx context.Context) error {
		var err error
		m, err = c.headOnce(ctx, w, c.resolveURL(r.Repo, rev, name))
		return err
	})
	if err != nil {
		return fileMeta{}, err
	}
	m.name = name
	return m, nil
}

func (c *Client) headOnce(ctx context.Context, w where, u string) (fileMeta, error) {
	for hops := 0; ; hops++ {
		req, err := c.newRequest(ctx, http.MethodHead, u)
		if err != nil {
			return fileMeta{}, w.errorf(ErrHub, "%w", err)
		}
		resp, err := c.head.Do(req)
		if err != nil {
			return fileMeta{}, netErr(ctx, w, "HEAD", err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fileMeta{}, c.statusError(w, resp)
		}
		location := u
		if resp.StatusCode >= 300 {
			next, err := req.URL.Parse(resp.Header.Get("Location"))
			if err != nil || resp.Header.Get("Location") == "" {
				return fileMeta{}, w.errorf(ErrHub, "HTTP %d without a usable Location", resp.StatusCode)
			}
			if next.Host == req.URL.Host && hops < 10 {
				u = next.String()
				continue
			}
			location = next.String()
		}
		return readMeta(w, resp, location)
	}
}

func readMeta(w where, resp *http.Response, location string) (fileMeta, error) {
	h := resp.Header
	m := fileMeta{location: location, commit: h.Get("X-Repo-Commit")}
	if !isCommit(m.commit) {
		return fileMeta{}, w.errorf(ErrHub, "no commit sha in X-Repo-Commit (got %q): is the endpoint a Hugging Face hub?", m.commit)
	}
	etag := h.Get("X-Linked-Etag")
	m.lfs = etag != ""
	if !m.lfs {
		etag = h.Get("ETag")
	}
	m.id = strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
	if !safeID.MatchString(m.id) {
		return fileMeta{}, w.errorf(ErrHub, "no usable ETag (got %q)", etag)
	}
	size := h.Get("X-Linked-Size")
	if size == "" {
		size = h.Get("Content-Length")
	}
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil || n < 0 {
		return fileMeta{}, w.errorf(ErrHub, "no file size in X-Linked-Size or Content-Length (got %q)", size)
	}
	m.size = n
	return m, nil
}

// listing is the part of {endpoint}/api/models/{repo}/revision/{rev} that modelhub reads.
type listing struct {
	Siblings []sibling `json:"siblings"`
}

type sibling struct {
	RFilename string `json:"rfilename"`
}

// listFiles returns the files to fetch at commit: config.json, the optional files the
// repository has, then the weights. It reads the revision listing; an endpoint without the API
// (404 on the listing, after config.json was found) is probed with HEADs instead.
func (c *Client) listFiles(ctx context.Context, r Ref, commit string) ([]string, error) {
	w := where{repo: r.Repo, rev: r.Revision}
	var l listing
	err := c.do(ctx, nil, func(ctx context.Context) error {
		var err error
		l, err = c.listOnce(ctx, w, c.endpoint.String()+"/api/models/"+r.Repo+"/revision/"+url.PathEscape(commit))
		return err
	})
	var have func(string) (bool, error)
	switch {
	case err == nil:
		have = func(name string) (bool, error) {
			return slices.Contains(l.Siblings, sibling{RFilename: name}), nil
		}
	case errors.Is(err, ErrNotFound):
		c.logf("%s: no revision listing at this endpoint; probing files", r)
		have = func(name string) (bool, error) {
			_, err := c.fileMeta(ctx, r, commit, name)
			if errors.Is(err, ErrNotFound) {
				return false, nil
			}
			return err == nil, err
		}
	default:
		return nil, err
	}
	names := []string{fileConfig}
	for _, name := range optionalFiles {
		ok, err := have(name)
		if err != nil {
			return nil, err
		}
		if ok {
			names = append(names, name)
		}
	}
	for _, name := range weightFiles {
		ok, err := have(name)
		if err != nil {
			return nil, err
		}
		if ok {
			return append(names, name), nil
		}
	}
	hint := ""
	for _, idx := range []string{"model.safetensors.index.json", "pytorch_model.bin.index.json"} {
		if ok, _ := have(idx); ok {
			hint = "; sharded checkpoints (" + idx + ") are not supported"
		}
	}
	return nil, w.errorf(ErrNoWeights, "the repository has neither %s nor %s at commit %s%s", fileSafetensors, fileBin, commit, hint)
}

func (c *Client) listOnce(ctx context.Context, w where, u string) (listing, error) {
	req, err := c.newRequest(ctx, http.MethodGet, u)
	if err != nil {
		return listing{}, w.errorf(ErrHub, "%w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.get.Do(req)
	if err != nil {
		return listing{}, netErr(ctx, w, "listing", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return listing{}, c.statusError(w, resp)
	}
	var l listing
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListingBytes+1))
	switch {
	case err != nil:
		return listing{}, netErr(ctx, w, "listing", err)
	case len(body) > maxListingBytes:
		return listing{}, w.errorf(ErrHub, "revision listing larger than %d bytes", maxListingBytes)
	}
	if err := json.Unmarshal(body, &l); err != nil {
		return listing{}, w.errorf(ErrHub, "revision listing: %w", err)
	}
	return l, nil
}

// netErr wraps a failed request or read: ctx's error when ctx ended, else a transient ErrHub.
func netErr(ctx context.Context, w where, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %s: %w", w, what, context.Cause(ctx))
	}
	return transient{w.errorf(ErrNetwork, "%s: %w", what, err)}
}
