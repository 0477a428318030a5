package consumer

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestHeaderSizeMatchesNATS: headerSize is what nats.go counts against max_payload (Msg.Size
// is subject + reply + encoded headers + body), values with surrounding blanks and line breaks
// included.
func TestHeaderSizeMatchesNATS(t *testing.T) {
	for _, h := range []nats.Header{
		{},
		{"A": {"1"}},
		{"Seq-Id": {"P1", "P2"}, "X": {"  padded \t"}, "Multi-Line": {"a\r\nb"}, "Empty": {""}},
	} {
		m := &nats.Msg{Subject: "s.t", Header: h, Data: []byte("body")}
		if got, want := headerSize(h)+len(m.Data), m.Size()-len(m.Subject); got != want {
			t.Errorf("headerSize(%v) + body = %d, nats.go counts %d", h, got, want)
		}
	}
}

func TestDLQCopyFits(t *testing.T) {
	body := bytes.Repeat([]byte("a"), 10_000)
	hdr := nats.Header{"Seq-Id": {"P1"}, "Producer": {"loader"}, "Nats-Msg-Id": {"orig"}, "seqembed-reason": {"old"}}
	errText := strings.Repeat("e", 3000)
	size := func(m *nats.Msg) int { return headerSize(m.Header) + len(m.Data) }

	// Everything fits: the copy is whole, Nats-* and stale Seqembed-* headers replaced.
	m, fit, err := dlqCopy(DLQSubject("m"), "m", body, hdr, ReasonInvalid, "short", 7, 1<<20)
	if err != nil || fit.cut() || !bytes.Equal(m.Data, body) {
		t.Fatalf("roomy copy: fit %+v, err %v", fit, err)
	}
	if m.Header.Get(nats.MsgIdHdr) != "dlq:m:7" || m.Header.Get("Producer") != "loader" || len(m.Header["seqembed-reason"]) != 0 ||
		m.Header.Get(HeaderReason) != ReasonInvalid || m.Header.Get(HeaderStreamSeq) != "7" || m.Subject != DLQSubject("m") {
		t.Fatalf("roomy copy headers %v", m.Header)
	}

	// The body is cut first, to exactly the room left.
	limit := 6000
	m, fit, err = dlqCopy(DLQSubject("m"), "m", body, hdr, ReasonInvalid, errText, 7, limit)
	if err != nil || !fit.bodyCut || fit.errorCut || size(m) != limit || !bytes.HasPrefix(body, m.Data) ||
		m.Header.Get(HeaderBodyTruncated) != strconv.Itoa(len(body)) || m.Header.Get(HeaderError) != errText {
		t.Fatalf("limit %d: size %d, fit %+v, err %v", limit, size(m), fit, err)
	}

	// Headers alone over the limit: the error text is cut to 1 KiB first...
	limit = 1200
	m, fit, err = dlqCopy(DLQSubject("m"), "m", body, hdr, ReasonInvalid, errText, 7, limit)
	if err != nil || !fit.errorCut || fit.headersLeft != 0 || !fit.bodyCut || size(m) != limit ||
		len(m.Header.Get(HeaderError)) != maxCopyErrorBytes || m.Header.Get("Producer") != "loader" {
		t.Fatalf("limit %d: size %d, fit %+v, err %v", limit, size(m), fit, err)
	}
	// ... then the record's own headers go, then the error text.
	limit = 1000
	m, fit, err = dlqCopy(DLQSubject("m"), "m", body, hdr, ReasonInvalid, errText, 7, limit)
	if err != nil || !fit.errorCut || fit.headersLeft != 1 || size(m) != limit || len(m.Header[HeaderError]) != 0 ||
		m.Header.Get(HeaderHeadersDropped) != "1" || m.Header.Get(HeaderID) != "P1" || m.Header.Get(HeaderReason) != ReasonInvalid {
		t.Fatalf("limit %d: size %d, fit %+v, headers %v, err %v", limit, size(m), fit, m.Header, err)
	}

	// A huge Seq-Id (a bad id) is cut to MaxIDBytes, then the error text dropped.
	long := nats.Header{"seq-id": {strings.Repeat("i", 5000)}}
	m, fit, err = dlqCopy(DLQSubject("m"), "m", []byte("x"), long, ReasonBadID, errText, 7, 800)
	if err != nil || !fit.idCut || size(m) > 800 || len(m.Header.Get(HeaderID)) != MaxIDBytes || len(m.Header["seq-id"]) != 0 {
		t.Fatalf("long id: size %d, fit %+v, err %v", size(m), fit, err)
	}

	// Nothing fits a limit below the copy's own headers.
	if _, _, err := dlqCopy(DLQSubject("m"), "m", body, hdr, ReasonInvalid, errText, 7, 60); !errors.Is(err, ErrCopyUnfit) {
		t.Fatalf("tiny limit: err %v, want ErrCopyUnfit", err)
	}
	// Large header values in the record, small body: dropping the headers lets the whole body in.
	big := nats.Header{"Seq-Id": {"P1"}, "Trace": {strings.Repeat("t", 4000)}}
	m, fit, err = dlqCopy(DLQSubject("m"), "m", []byte("MKT"), big, ReasonInvalid, "e", 7, 1000)
	if err != nil || fit.bodyCut || fit.headersLeft != 1 || string(m.Data) != "MKT" || m.Header.Get(HeaderBodyTruncated) != "" {
		t.Fatalf("big record header: fit %+v, headers %v, err %v", fit, m.Header, err)
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"abc", 5, "abc"}, {"abc", 2, "ab"}, {"abc", 0, ""}, {"aé", 2, "a"}, {"aé", 3, "aé"},
		{"a😀", 4, "a"}, {"a😀", 5, "a😀"}, {"\xff\xff\xff\xff\xff", 3, "\xff\xff\xff"},
	} {
		if got := truncateUTF8(c.s, c.n); got != c.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}
