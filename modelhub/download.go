package modelhub

import (
	"context"
	"crypto/sha1" //nolint:gosec // git's blob id, an identity check, not security
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/telemetry"
)

const (
	copyBuffer  = 256 << 10 // bytes read per Read of a transfer
	mib         = 1 << 20   // the progress unit
	progressMin = mib       // smaller files get no progress indicator
)

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ensureBlob makes sure blobs/{m.id} holds the file m, downloading it if needed (under the
// blob's lock, resuming blobs/{m.id}.incomplete), and returns the blob's path.
func (c *Client) ensureBlob(ctx context.Context, w where, m fileMeta) (string, error) {
	blob := c.blobPath(w.repo, m.id)
	if n, ok := isFile(blob); ok && n == m.size {
		return blob, nil
	}
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return "", w.errorf(ErrCache, "%w", err)
	}
	unlock, err := c.lock(ctx, w, m.id)
	if err != nil {
		return "", err
	}
	defer unlock()
	if n, ok := isFile(blob); ok { // another process may have finished it while we waited
		if n == m.size {
			return blob, nil
		}
		c.logf("%s: cached blob %s has %d bytes, not %d: downloading it again", w, blob, n, m.size)
		if err := os.Remove(blob); err != nil {
			return "", w.errorf(ErrCache, "%w", err)
		}
	}
	inc := blob + ".incomplete"
	if err := c.download(ctx, w, m, inc); err != nil {
		return "", err
	}
	if err := os.Rename(inc, blob); err != nil {
		return "", w.errorf(ErrCache, "%w", err)
	}
	return blob, nil
}

// partial is a download in progress: the .incomplete file, the bytes in it and their hash.
type partial struct {
	f    *os.File
	m    fileMeta
	n    int64
	h    hash.Hash // nil: the hub gave an id that is no hash of ours; only the size is checked
	algo string
}

// newHash starts the hash the file's id is: sha256 for an LFS file, the git blob sha1 ("blob
// SIZE\0" then the bytes) for the others.
func (p *partial) newHash() {
	switch {
	case p.m.lfs && sha256Hex.MatchString(p.m.id):
		p.h, p.algo = sha256.New(), "sha256"
	case !p.m.lfs && isCommit(p.m.id): // 40 hex: a git object id
		p.h, p.algo = sha1.New(), "git blob sha1" //nolint:gosec // see the import
		fmt.Fprintf(p.h, "blob %d\x00", p.m.size)
	default:
		p.h, p.algo = nil, ""
	}
}

// reset empties the file: the download starts over.
func (p *partial) reset() error {
	p.n = 0
	p.newHash()
	if err := p.f.Truncate(0); err != nil {
		return err
	}
	_, err := p.f.Seek(0, io.SeekStart)
	return err
}

// load hashes what an earlier download left in the file (starting over if it is longer than
// the file can be) and leaves the offset at its end.
func (p *partial) load() error {
	p.newHash()
	fi, err := p.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > p.m.size {
		return p.reset()
	}
	if p.h != nil {
		if _, err := io.Copy(p.h, io.NewSectionReader(p.f, 0, fi.Size())); err != nil {
			return err
		}
	}
	p.n = fi.Size()
	_, err = p.f.Seek(p.n, io.SeekStart)
	return err
}

func (p *partial) write(b []byte) error {
	k, err := p.f.Write(b)
	if p.h != nil {
		p.h.Write(b[:k])
	}
	p.n += int64(k)
	return err
}

// download fetches m into inc, resuming what is there, retrying dropped and stalled transfers
// from the bytes written (c.do), and checks the result. On ctx's end or a transfer that keeps
// failing inc stays, for the next pull to resume; on a checksum mismatch it is deleted.
func (c *Client) download(ctx context.Context, w where, m fileMeta, inc string) error {
	f, err := os.OpenFile(inc, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return w.errorf(ErrCache, "%w", err)
	}
	defer f.Close()
	p := &partial{f: f, m: m}
	if err := p.load(); err != nil {
		return w.errorf(ErrCache, "reading %s: %w", inc, err)
	}
	if p.n > 0 {
		c.logf("%s: resuming at %s of %s", w, byteSize(p.n), byteSize(m.size))
	}
	bar := c.newBar(w.file, m.size, p.n)
	tryStart := p.n
	err = c.do(ctx, func() bool { return p.n > tryStart }, func(tctx context.Context) error {
		tryStart = p.n
		return c.fetchOnce(tctx, ctx, w, p, bar)
	})
	bar.finish(err == nil)
	if errors.Is(err, ErrChecksum) {
		_ = f.Close()
		_ = os.Remove(inc)
	}
	if err != nil {
		return err
	}
	if p.h != nil {
		if got := hex.EncodeToString(p.h.Sum(nil)); got != m.id {
			_ = f.Close()
			_ = os.Remove(inc)
			return w.errorf(ErrChecksum, "%s expected %s, got %s (%d bytes); the download was deleted", p.algo, m.id, got, p.n)
		}
	}
	if err := f.Sync(); err != nil {
		return w.errorf(ErrCache, "%w", err)
	}
	return nil
}

// fetchOnce is one try of a download: a GET of the rest (Range from p.n), appended to p. ctx is
// the try's, parent the pull's (its end is no network error).
func (c *Client) fetchOnce(ctx, parent context.Context, w where, p *partial, bar *bar) error {
	if p.n == p.m.size {
		return nil
	}
	tctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.stall, func() { cancel(errStalled) })
	defer stall.Stop()
	req, err := c.newRequest(tctx, http.MethodGet, p.m.location)
	if err != nil {
		return w.errorf(ErrHub, "%w", err)
	}
	if p.n > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(p.n, 10)+"-")
	}
	resp, err := c.get.Do(req)
	if err != nil {
		return c.transferErr(parent, tctx, w, p, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != p.n {
			if err := p.reset(); err != nil {
				return w.errorf(ErrCache, "%w", err)
			}
			return transient{w.errorf(ErrHub, "asked for bytes from %d, got Content-Range %q: starting over", p.n, resp.Header.Get("Content-Range"))}
		}
	case http.StatusOK:
		if p.n > 0 {
			c.logf("%s: the server ignored the Range request; downloading from the start", w)
			if err := p.reset(); err != nil {
				return w.errorf(ErrCache, "%w", err)
			}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		if err := p.reset(); err != nil {
			return w.errorf(ErrCache, "%w", err)
		}
		return transient{w.errorf(ErrHub, "HTTP 416 for the rest of the file: starting over")}
	default:
		return c.statusError(w, resp)
	}
	buf := make([]byte, copyBuffer)
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			stall.Reset(c.stall)
			if p.n+int64(k) > p.m.size {
				return w.errorf(ErrChecksum, "the server sent more than the %d bytes the hub announced", p.m.size)
			}
			if err := p.write(buf[:k]); err != nil {
				return w.errorf(ErrCache, "writing %s: %w", p.f.Name(), err)
			}
			bar.set(p.n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return c.transferErr(parent, tctx, w, p, rerr)
		}
	}
	if p.n < p.m.size {
		return transient{w.errorf(ErrNetwork, "the transfer ended at %d of %d bytes", p.n, p.m.size)}
	}
	return nil
}

// transferErr is the error of a request or read that failed at p.n bytes: the pull's own end
// (not retried; the .incomplete stays), a stall, or a dropped connection (both transient).
func (c *Client) transferErr(parent, tctx context.Context, w where, p *partial, err error) error {
	if parent.Err() != nil {
		return fmt.Errorf("%s: download stopped at %d of %d bytes (%s kept, the next pull resumes it): %w",
			w, p.n, p.m.size, filepath.Base(p.f.Name()), context.Cause(parent))
	}
	if errors.Is(context.Cause(tctx), errStalled) {
		return transient{w.errorf(ErrNetwork, "no data for %s at %d of %d bytes: %w", c.stall, p.n, p.m.size, errStalled)}
	}
	return transient{w.errorf(ErrNetwork, "transfer dropped at %d of %d bytes: %w", p.n, p.m.size, err)}
}

// rangeStart reads the first byte position of a Content-Range "bytes START-END/TOTAL".
func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil && n >= 0
}

// lock takes the blob's lock file (.locks/models--org--name/{id}.lock), waiting while another
// process holds it; the returned func releases it.
func (c *Client) lock(ctx context.Context, w where, id string) (func(), error) {
	dir := c.lockDir(w.repo)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, w.errorf(ErrCache, "%w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, id+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, w.errorf(ErrCache, "%w", err)
	}
	err = retry.Do(ctx, retry.Policy{Initial: 50 * time.Millisecond, Max: 2 * time.Second,
		Retryable: func(err error) bool { return errors.Is(err, errLocked) },
		OnRetry: func(try int, _ error, _ time.Duration) {
			if try == 1 {
				c.logf("%s: another download of this file is under way; waiting for it", w)
			}
		}}, func(context.Context) error { return tryLock(f) })
	if err != nil {
		_ = f.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: waiting for another download of this file: %w", w, context.Cause(ctx))
		}
		return nil, w.errorf(ErrCache, "locking %s: %w", f.Name(), err)
	}
	return func() { unlockFile(f); _ = f.Close() }, nil
}

// errLocked is tryLock's answer when another process holds the lock.
var errLocked = errors.New("locked by another process")

// bar is a file's progress in MiB (telemetry.Progress counts items).
type bar struct {
	p     *telemetry.Progress
	shown int64 // MiB added so far
	total int64
}

func (c *Client) newBar(name string, size, start int64) *bar {
	total := (size + mib - 1) / mib
	b := &bar{total: total, p: telemetry.NewProgress(total, name+" (MiB)", c.progress, c.progress != nil && size >= progressMin)}
	b.set(start)
	return b
}

// set shows n bytes done.
func (b *bar) set(n int64) {
	if d := n/mib - b.shown; d > 0 {
		b.p.Add(int(d))
		b.shown += d
	}
}

// finish completes the indicator (full when the download is done).
func (b *bar) finish(done bool) {
	if done && b.total > b.shown {
		b.p.Add(int(b.total - b.shown))
		b.shown = b.total
	}
	b.p.Finish()
}

// byteSize is n for a human: "812 B", "1.5 MB", "2.6 GB".
func byteSize(n int64) string {
	const unit = 1000
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
