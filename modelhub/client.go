// Package modelhub downloads ESM-2 checkpoints from the Hugging Face hub into a local cache and
// resolves "hf:org/name[@revision]" references against it, with no Python.
//
// It speaks the hub's file protocol as huggingface_hub does (file_download.py): a file is at
// {endpoint}/{repo}/resolve/{revision}/{filename}; a HEAD there, without following redirects to
// another host, gives the commit (X-Repo-Commit), the file's identity (X-Linked-Etag, the sha256
// of an LFS file, else ETag, the git blob sha1) and size (X-Linked-Size, else Content-Length),
// and for an LFS file a redirect (Location) to the CDN that serves it. The repository's file
// list is {endpoint}/api/models/{repo}/revision/{commit} (siblings[].rfilename).
//
// The cache has huggingface_hub's layout, so either tool can read what the other wrote:
//
//	{cache}/models--{org}--{name}/blobs/{sha256 or git sha1}   the files' bytes
//	{cache}/models--{org}--{name}/snapshots/{commit}/{file}     symlinks to ../../blobs/...
//	{cache}/models--{org}--{name}/refs/{revision}               the commit a branch or tag was at
//
// A pull fetches config.json, the weights (model.safetensors if the repository has it, else
// pytorch_model.bin) and, when present, the small vocab.txt and special_tokens_map.json. Each
// file downloads into blobs/{id}.incomplete; a dropped or stalled transfer resumes from the bytes
// already written (Range), through internal/retry, and so does the next pull after a cancelled
// or killed one. A finished file is checked (sha256 for LFS files, git blob sha1 for the others,
// and the size) before it becomes a blob; the snapshot links and the ref are written only once
// every file is in, so a failed pull leaves no half snapshot. A lock file per blob (under .locks,
// as huggingface_hub does) keeps two processes sharing a cache from writing the same file.
package modelhub

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults of the options, and the environment variables that override them.
const (
	DefaultEndpoint = "https://huggingface.co"
	EnvEndpoint     = "HF_ENDPOINT"    // WithEndpoint's default
	EnvToken        = "HF_TOKEN"       // WithToken's default
	EnvOffline      = "HF_HUB_OFFLINE" // WithOffline's default: 1, true, yes or on
	EnvCache        = "SEQEMBED_CACHE" // WithCacheDir's default
	cacheSubdir     = "seqembed/hub"   // under os.UserCacheDir() when EnvCache is unset
	defaultTries    = 5                // tries in a row without progress
	defaultInitial  = time.Second      // first wait between tries
	defaultMaxWait  = 30 * time.Second // longest wait between tries
	defaultStall    = 60 * time.Second // no byte for this long: the transfer is retried
	headerTimeout   = 30 * time.Second // response headers on the default transport
	maxListingBytes = 16 << 20         // the revision listing is small; refuse a huge answer
	userAgent       = "seqembed-modelhub/1"
)

// Client downloads from one hub into one cache. It is safe for concurrent use.
type Client struct {
	endpoint *url.URL
	token    string
	cacheDir string
	offline  bool
	progress io.Writer // nil: no progress, no log lines

	head *http.Client // follows no redirect (HEAD metadata)
	get  *http.Client // follows redirects, dropping the token on another host

	tries            int
	initial, maxWait time.Duration
	stall            time.Duration
}

// Option configures New.
type Option func(*Client) error

// New returns a client. Defaults, each overridden by its option: the endpoint is $HF_ENDPOINT or
// DefaultEndpoint; the token $HF_TOKEN (none if unset); the cache $SEQEMBED_CACHE or
// os.UserCacheDir()/seqembed/hub; offline if $HF_HUB_OFFLINE is 1, true, yes or on; no progress
// output; an HTTP client with a 30 s response-header timeout; 5 tries in a row without progress,
// waits from 1 s to 30 s; a transfer that receives nothing for 60 s is retried.
// A bad option or environment value is ErrOption.
func New(opts ...Option) (*Client, error) {
	c := &Client{tries: defaultTries, initial: defaultInitial, maxWait: defaultMaxWait, stall: defaultStall}
	env := []Option{WithEndpoint(DefaultEndpoint)}
	if v := os.Getenv(EnvEndpoint); v != "" {
		env = append(env, envOption(EnvEndpoint, WithEndpoint(v)))
	}
	if v := os.Getenv(EnvToken); v != "" {
		env = append(env, envOption(EnvToken, WithToken(v)))
	}
	env = append(env, WithOffline(isTrue(os.Getenv(EnvOffline))))
	if v := os.Getenv(EnvCache); v != "" {
		env = append(env, envOption(EnvCache, WithCacheDir(v)))
	}
	for _, o := range append(env, opts...) {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.cacheDir == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("modelhub: %w: no cache directory (set %s or use WithCacheDir): %w", ErrOption, EnvCache, err)
		}
		c.cacheDir = filepath.Join(dir, filepath.FromSlash(cacheSubdir))
	}
	if c.get == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = headerTimeout
		c.setHTTPClient(&http.Client{Transport: tr})
	}
	return c, nil
}

func envOption(name string, o Option) Option {
	return func(c *Client) error {
		if err := o(c); err != nil {
			return fmt.Errorf("%w (from $%s)", err, name)
		}
		return nil
	}
}

func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

// WithEndpoint sets the hub's base URL (default $HF_ENDPOINT or https://huggingface.co): an
// absolute http or https URL, optionally with a path prefix, no query or fragment.
func WithEndpoint(endpoint string) Option {
	return func(c *Client) error {
		u, err := url.Parse(strings.TrimRight(endpoint, "/"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			shown := endpoint
			if err == nil {
				shown = u.Redacted()
			}
			return fmt.Errorf("modelhub: %w: endpoint %q is not an http(s) URL without query", ErrOption, shown)
		}
		c.endpoint = u
		return nil
	}
}

// WithToken sets the token sent as "Authorization: Bearer" to the endpoint's host, never to
// another (the CDN), and never printed (default $HF_TOKEN; "" sends none).
func WithToken(token string) Option {
	return func(c *Client) error {
		if strings.ContainsAny(token, " \t\r\n") {
			return fmt.Errorf("modelhub: %w: the token contains white space", ErrOption)
		}
		c.token = token
		return nil
	}
}

// WithCacheDir sets the cache directory, the one holding models--{org}--{name} (default
// $SEQEMBED_CACHE or os.UserCacheDir()/seqembed/hub). Point it at ~/.cache/huggingface/hub to
// share huggingface_hub's cache.
func WithCacheDir(dir string) Option {
	return func(c *Client) error {
		if strings.TrimSpace(dir) == "" {
			return fmt.Errorf("modelhub: %w: empty cache directory", ErrOption)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("modelhub: %w: cache directory %q: %w", ErrOption, dir, err)
		}
		c.cacheDir = abs
		return nil
	}
}

// WithHTTPClient sets the HTTP client (default: one with a 30 s response-header timeout). Its
// Transport, Jar and Timeout are used; modelhub sets its own redirect policy on copies of it (a
// CheckRedirect it has is still consulted first). Leave Timeout 0: it would cut large downloads;
// stalls are handled by WithStallTimeout.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) error {
		if hc == nil {
			return fmt.Errorf("modelhub: %w: nil HTTP client", ErrOption)
		}
		c.setHTTPClient(hc)
		return nil
	}
}

// WithProgress writes download progress and log lines (resumes, retries) to w, typically
// os.Stderr: a bar on a terminal, else a line every few seconds (telemetry.NewProgress). Default
// nil: silent.
func WithProgress(w io.Writer) Option {
	return func(c *Client) error { c.progress = w; return nil }
}

// WithOffline makes Pull and Resolve use the cache only: refs/{revision} gives the commit, and
// a revision not in the cache is ErrNotCached (default: $HF_HUB_OFFLINE).
func WithOffline(offline bool) Option {
	return func(c *Client) error { c.offline = offline; return nil }
}

// WithRetry sets how transient failures (network errors, dropped transfers, HTTP 429 and 5xx)
// are retried: up to tries in a row that make no progress (a try that wrote bytes starts the
// count again), waiting initial after the first, doubling up to maxWait (defaults 5, 1 s, 30 s).
func WithRetry(tries int, initial, maxWait time.Duration) Option {
	return func(c *Client) error {
		if tries < 1 || initial <= 0 || maxWait < initial {
			return fmt.Errorf("modelhub: %w: retry wants tries ≥ 1 and 0 < initial ≤ max (got %d, %s, %s)", ErrOption, tries, initial, maxWait)
		}
		c.tries, c.initial, c.maxWait = tries, initial, maxWait
		return nil
	}
}

// WithStallTimeout sets how long a transfer may receive nothing before it is dropped and
// resumed (default 60 s).
func WithStallTimeout(d time.Duration) Option {
	return func(c *Client) error {
		if d <= 0 {
			return fmt.Errorf("modelhub: %w: stall timeout %s is not positive", ErrOption, d)
		}
		c.stall = d
		return nil
	}
}

// CacheDir is the cache directory in use.
func (c *Client) CacheDir() string { return c.cacheDir }

// setHTTPClient derives the two clients modelhub uses from hc: head follows no redirect (the
// metadata request reads the redirect itself, as huggingface_hub does); get follows redirects
// but drops the Authorization header on a host other than the first request's.
func (c *Client) setHTTPClient(hc *http.Client) {
	user := hc.CheckRedirect
	head, get := *hc, *hc
	head.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	get.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if user != nil {
			if err := user(req, via); err != nil {
				return err
			}
		} else if len(via) >= 10 {
			return fmt.Errorf("stopped after %d redirects", len(via))
		}
		if req.URL.Host != via[0].URL.Host {
			req.Header.Del("Authorization")
		}
		return nil
	}
	c.head, c.get = &head, &get
}

// newRequest is a request with modelhub's headers: the token only for the endpoint's host, and
// Accept-Encoding identity so that sizes and ranges are those of the file itself.
func (c *Client) newRequest(ctx context.Context, method, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept-Encoding", "identity")
	if c.token != "" && req.URL.Host == c.endpoint.Host {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// logf writes one log line to the progress writer, if any.
func (c *Client) logf(format string, args ...any) {
	if c.progress == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if c.token != "" {
		msg = strings.ReplaceAll(msg, c.token, "[REDACTED]")
	}
	if !strings.HasPrefix(msg, "modelhub: ") {
		msg = "modelhub: " + msg
	}
	_, _ = fmt.Fprintln(c.progress, msg)
}
