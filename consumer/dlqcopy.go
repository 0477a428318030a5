package consumer

import (
	"context"
	"fmt"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/seqembed/seqembed/internal/natsconn"
)

// Dead-letter copy limits.
const (
	// maxCopyErrorBytes bounds Seqembed-Error once a copy's headers alone do not fit.
	maxCopyErrorBytes = 1024
	// copyTimeout bounds storing one copy (waiting for the connection included) when the
	// caller's ctx has no deadline.
	copyTimeout = 10 * time.Second
	// copyAttempts is how many sizes storeCopy tries when the server refuses a copy as too large.
	copyAttempts = 3
)

// ownHeaders are the headers a dead-letter copy sets itself; a record's own headers of these
// names (in any case: a dead letter re-queued by hand) are replaced, not kept.
var ownHeaders = []string{HeaderError, HeaderReason, HeaderStreamSeq, HeaderBodyTruncated, HeaderHeadersDropped}

// copyFit says what dlqCopy had to cut for the copy to fit.
type copyFit struct {
	limit       int  // the size limit the copy was made under (headers + body)
	bodyLen     int  // the record's body length
	bodyCut     bool // Data is a prefix of the body (HeaderBodyTruncated set)
	errorCut    bool // Seqembed-Error is a prefix of the error message
	headersLeft int  // record headers left out (HeaderHeadersDropped set)
	idCut       bool // Seq-Id cut to MaxIDBytes, or its extra values left out
}

func (f copyFit) cut() bool { return f.bodyCut || f.errorCut || f.headersLeft > 0 || f.idCut }

// headerSize is the size nats.go gives the encoded header block of h, as counted against
// max_payload together with the body: "NATS/1.0\r\n", "<key>: <value>\r\n" per value (the value
// trimmed of surrounding white space), "\r\n"; 0 without headers.
func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(textproto.TrimString(v)) + len(": \r\n")
		}
	}
	return n
}

// dlqCopy builds the dead-letter copy of a record so that its headers and body together take
// at most limit bytes (the connection's max_payload): the record's body and headers (Seq-Id
// under its canonical name; Nats-* headers dropped: they are server-set or publish controls such
// as expected-sequence checks), Seqembed-Error, Seqembed-Reason, Seqembed-Stream-Seq, and the
// Nats-Msg-Id "dlq:<model>:<seq>" that makes a repeated copy of the same input a duplicate.
//
// What does not fit is cut, in this order, until it does: the body, to a prefix, with
// Seqembed-Body-Truncated giving its full length; Seqembed-Error to 1 KiB; the record's other
// headers, left out with Seqembed-Headers-Dropped giving how many; Seq-Id to MaxIDBytes and one
// value; Seqembed-Error altogether. A copy that still does not fit (a limit of a few hundred
// bytes) is an error wrapping ErrCopyUnfit.
func dlqCopy(subject, model string, data []byte, hdr nats.Header, reason, errText string, seq uint64, limit int) (*nats.Msg, copyFit, error) {
	out := nats.NewMsg(subject)
	var ids []string
	others := 0
	for k, v := range hdr {
		switch {
		case strings.HasPrefix(strings.ToLower(k), "nats-"), isOwnHeader(k):
		case strings.EqualFold(k, HeaderID):
			ids = append(ids, v...)
		default:
			out.Header[k] = v
			others++
		}
	}
	if len(ids) > 0 {
		out.Header[HeaderID] = ids
	}
	out.Header.Set(HeaderError, errText)
	out.Header.Set(HeaderReason, reason)
	out.Header.Set(HeaderStreamSeq, strconv.FormatUint(seq, 10))
	out.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq:%s:%d", model, seq))

	fit := copyFit{limit: limit, bodyLen: len(data)}
	// fits tries the whole body, then a prefix of it.
	fits := func() bool {
		out.Header.Del(HeaderBodyTruncated)
		if headerSize(out.Header)+len(data) <= limit {
			out.Data, fit.bodyCut = data, false
			return true
		}
		out.Header.Set(HeaderBodyTruncated, strconv.Itoa(len(data)))
		if room := limit - headerSize(out.Header); room >= 0 {
			out.Data, fit.bodyCut = data[:room], true
			return true
		}
		return false
	}
	cutError := func(n int) {
		if len(errText) > n {
			out.Header.Set(HeaderError, truncateUTF8(errText, n))
			fit.errorCut = true
		}
	}
	steps := []func(){
		func() { cutError(maxCopyErrorBytes) },
		func() {
			if others == 0 {
				return
			}
			for k := range out.Header {
				if k != HeaderID && k != nats.MsgIdHdr && !isOwnHeader(k) {
					delete(out.Header, k)
				}
			}
			out.Header.Set(HeaderHeadersDropped, strconv.Itoa(others))
			fit.headersLeft = others
		},
		func() {
			if len(ids) > 1 || (len(ids) == 1 && len(ids[0]) > MaxIDBytes) {
				out.Header.Set(HeaderID, truncateUTF8(ids[0], MaxIDBytes))
				fit.idCut = true
			}
		},
		func() {
			if errText != "" {
				out.Header.Del(HeaderError)
				fit.errorCut = true
			}
		},
	}
	if fits() {
		return out, fit, nil
	}
	for _, step := range steps {
		step()
		if fits() {
			return out, fit, nil
		}
	}
	return nil, fit, fmt.Errorf("%w: the copy's headers alone take %d bytes, over the %d-byte limit",
		ErrCopyUnfit, headerSize(out.Header), limit)
}

func isOwnHeader(k string) bool {
	for _, h := range ownHeaders {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	return false
}

// storeCopy stores the dead-letter copy of a record of model (see dlqCopy) on subject (its job's
// JobDLQSubject) and
// returns its PubAck. The copy is sized at the time of the call to the connection's current
// max_payload; it is published only while the connection is up (a copy buffered for a
// reconnect could reach a server with a smaller max_payload, which closes the connection for
// good). If the copy is refused for its size, the limit is read again (the connection's
// max_payload and the stream's max_msg_size), halved when neither is smaller, and the copy
// rebuilt, up to copyAttempts times. ErrCopyUnfit (permanent: no copy of this record can be
// stored) is returned when no size works; any other error is transient. Without a deadline on
// ctx the call is bounded by copyTimeout.
func storeCopy(ctx context.Context, js jetstream.JetStream, subject, model string, data []byte, hdr nats.Header,
	reason, errText string, seq uint64) (*jetstream.PubAck, copyFit, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, copyTimeout)
		defer cancel()
	}
	nc := js.Conn()
	limit := natsconn.MaxStored(nc)
	var fit copyFit
	var last error
	used := limit
	for range copyAttempts {
		used = limit
		out, f, err := dlqCopy(subject, model, data, hdr, reason, errText, seq, limit)
		fit = f
		if err != nil {
			return nil, fit, err
		}
		if err := natsconn.AwaitConnected(ctx, nc); err != nil {
			return nil, fit, fmt.Errorf("waiting for the NATS connection: %w", err)
		}
		ack, err := js.PublishMsg(ctx, out)
		if err == nil {
			return ack, fit, nil
		}
		if !natsconn.TooLarge(err) {
			return nil, fit, err
		}
		last = err
		next := natsconn.MaxStored(nc)
		if name, serr := js.StreamNameBySubject(ctx, subject); serr == nil {
			if s, serr := js.Stream(ctx, name); serr == nil {
				if m := int(s.CachedInfo().Config.MaxMsgSize); m > 0 {
					next = min(next, m)
				}
			}
		}
		if next >= limit {
			next = limit / 2
		}
		limit = next
	}
	return nil, fit, fmt.Errorf("%w: refused for its size %d times, last under a %d-byte limit: %w",
		ErrCopyUnfit, copyAttempts, used, last)
}
