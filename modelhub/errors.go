package modelhub

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Sentinel errors. Every error of this package wraps one of them (errors.Is works) and says
// which repository, revision and file it is about.
var (
	// ErrBadRef: a model reference that is not "[hf:]org/name[@revision]".
	ErrBadRef = errors.New("invalid model reference")
	// ErrOption: an Option (or the environment variable that sets its default) has a bad value.
	ErrOption = errors.New("invalid option")
	// ErrUnauthorized: the hub answered 401 or 403: the repository needs a token, or the token
	// was refused.
	ErrUnauthorized = errors.New("access denied")
	// ErrNotFound: the hub answered 404: no such repository, revision or file.
	ErrNotFound = errors.New("not found")
	// ErrNoWeights: the repository has neither model.safetensors nor pytorch_model.bin.
	ErrNoWeights = errors.New("no weights file")
	// ErrChecksum: a downloaded file is not what the hub said it is (sha256, git sha1 or size);
	// the partial download is deleted.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrNotCached: offline (HF_HUB_OFFLINE, WithOffline) and the revision is not in the cache.
	ErrNotCached = errors.New("not in the cache")
	// ErrHub: an answer the hub should not give: another status, a missing header, bad JSON.
	ErrHub = errors.New("unexpected hub response")
	// ErrCache: the cache directory could not be read or written (permissions, disk full).
	ErrCache = errors.New("cache error")
	// ErrNetwork: the hub or CDN could not be reached, or a transfer dropped or stalled, and the
	// retries ran out (a partial download is kept: the next pull resumes it).
	ErrNetwork = errors.New("network error")
)

// where is what an error is about: repository, revision and (optionally) file.
type where struct{ repo, rev, file string }

func (w where) String() string {
	s := "modelhub: " + w.repo + "@" + w.rev
	if w.file != "" {
		s += ": " + w.file
	}
	return s
}

// errorf returns "modelhub: repo@rev: file: <sentinel>: <detail>", wrapping sentinel and any %w
// in format.
func (w where) errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%s: %w: %w", w, sentinel, fmt.Errorf(format, args...))
}

// transient marks an error worth another try: a network error, a dropped or stalled transfer,
// HTTP 429 or 5xx.
type transient struct{ error }

func (t transient) Unwrap() error { return t.error }

func isTransient(err error) bool {
	var t transient
	return errors.As(err, &t)
}

// errStalled is the cause of a try cancelled because no byte arrived for the stall timeout.
var errStalled = errors.New("transfer stalled")

// statusError turns a hub answer that is not a success into an error: 401/403 (ErrUnauthorized,
// one sentence naming HF_TOKEN), 404 (ErrNotFound, saying what was not found when the hub says
// so), 429 and 5xx (transient ErrHub), anything else ErrHub.
func (c *Client) statusError(w where, resp *http.Response) error {
	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		if c.token == "" {
			return w.errorf(ErrUnauthorized, "the repository is private, gated or does not exist, and no token was sent: set HF_TOKEN to a token with read access (HTTP %d)", code)
		}
		return w.errorf(ErrUnauthorized, "the token (HF_TOKEN) was refused: it is invalid or has no read access to this private or gated repository (HTTP %d)", code)
	case code == http.StatusNotFound:
		what := "no such repository, revision or file"
		switch resp.Header.Get("X-Error-Code") {
		case "RepoNotFound":
			what = "no such repository"
		case "RevisionNotFound":
			what = "no such revision"
		case "EntryNotFound":
			what = "no such file at this revision"
		}
		return w.errorf(ErrNotFound, "%s (HTTP 404)", what)
	case code == http.StatusTooManyRequests || code >= 500:
		return transient{w.errorf(ErrHub, "HTTP %d%s", code, hubMessage(resp))}
	}
	return w.errorf(ErrHub, "HTTP %d%s", code, hubMessage(resp))
}

// hubMessage is the hub's X-Error-Message, if any, as ": message" (one line, bounded).
func hubMessage(resp *http.Response) string {
	m := strings.TrimSpace(strings.ReplaceAll(resp.Header.Get("X-Error-Message"), "\n", " "))
	if m == "" {
		return ""
	}
	if len(m) > 200 {
		m = m[:200] + "…"
	}
	return ": " + m
}

// redacted hides the token in an error's text (defence in depth: no message of this package
// includes it, but an error from below might quote a header or URL); errors.Is and As still see
// the wrapped error.
type redacted struct {
	err   error
	token string
}

func (r redacted) Error() string { return strings.ReplaceAll(r.err.Error(), r.token, "[REDACTED]") }
func (r redacted) Unwrap() error { return r.err }

func (c *Client) redact(err error) error {
	if err == nil || c.token == "" || !strings.Contains(err.Error(), c.token) {
		return err
	}
	return redacted{err: err, token: c.token}
}
