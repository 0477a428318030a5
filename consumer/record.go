package consumer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names of the record format. NATS header names are case-sensitive on the wire and in
// nats.Header (Get and Set do not canonicalise), so every name is matched here in any case:
// "seq-id" and "SEQ-ID" are HeaderID.
const (
	// HeaderID carries the record's id (required).
	HeaderID = "Seq-Id"
	// HeaderError carries a dead-lettered record's error message.
	HeaderError = "Seqembed-Error"
	// HeaderReason carries a dead-lettered record's reason code.
	HeaderReason = "Seqembed-Reason"
	// HeaderStreamSeq carries a dead-lettered record's input stream sequence.
	HeaderStreamSeq = "Seqembed-Stream-Seq"
	// HeaderBodyTruncated is set on a dead-letter copy whose body is only a prefix of the
	// record's (the whole would not fit under max_payload); it holds the original body length.
	HeaderBodyTruncated = "Seqembed-Body-Truncated"
	// HeaderHeadersDropped is set on a dead-letter copy that had to leave out the record's own
	// headers (other than Seq-Id) to fit under max_payload; it holds how many were left out.
	HeaderHeadersDropped = "Seqembed-Headers-Dropped"
	// MaxIDBytes is the longest id accepted.
	MaxIDBytes = 512
)

// Overlength says what happens to a sequence longer than the model's max length.
type Overlength int

const (
	// Truncate keeps the first max-length residues and flags the record truncated (fair-esm's way).
	Truncate Overlength = iota
	// Reject dead-letters the record with reason too_long.
	Reject
)

// ParseOverlength reads "truncate" or "reject".
func ParseOverlength(s string) (Overlength, error) {
	switch s {
	case "truncate":
		return Truncate, nil
	case "reject":
		return Reject, nil
	}
	return 0, fmt.Errorf("%w: overlength %q: want truncate or reject", ErrOption, s)
}

// Record is one valid input record. Residues has no whitespace and at most the max length.
type Record struct {
	ID        string
	Residues  []byte
	Length    int // residues before truncation
	Truncated bool
	StreamSeq uint64
	Delivered uint64        // delivery count (1 on first delivery)
	Msg       jetstream.Msg // ack/nak it through Ack/Nak once its output is stored (or not)
}

// Policy is how records are checked. Validate checks residues against the model's alphabet.
type Policy struct {
	MaxRecordBytes int
	MaxResidues    int
	Overlength     Overlength
	Validate       func(residues []byte) error
}

// Decode turns one message's headers and body into a Record, or a *RejectError saying why not.
// Whitespace (space, tab, CR, LF, VT, FF) anywhere in the body is ignored. The returned Residues
// is a fresh slice (the body is not retained).
func Decode(h nats.Header, body []byte, seq uint64, p Policy) (Record, error) {
	rej := func(reason string, err error, id string) (Record, error) {
		return Record{}, &RejectError{Reason: reason, ID: id, StreamSeq: seq, Err: err}
	}
	id, err := recordID(h)
	if err != nil {
		return rej(ReasonMissingID, err, "")
	}
	if id == "" { // several different values
		return rej(ReasonBadID, fmt.Errorf("%w: %s headers disagree: %s", ErrBadID, HeaderID, quoteValues(headerValues(h, HeaderID))), "")
	}
	if err := checkID(id); err != nil {
		return rej(ReasonBadID, err, "")
	}
	if p.MaxRecordBytes > 0 && len(body) > p.MaxRecordBytes {
		return rej(ReasonTooLarge, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(body), p.MaxRecordBytes), id)
	}
	res := make([]byte, 0, len(body))
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n', '\v', '\f':
		default:
			res = append(res, c)
		}
	}
	if len(res) == 0 {
		return rej(ReasonEmpty, ErrEmpty, id)
	}
	if p.Validate != nil {
		if err := p.Validate(res); err != nil {
			return rej(ReasonInvalid, fmt.Errorf("%w: %w", ErrInvalid, err), id)
		}
	}
	r := Record{ID: id, Residues: res, Length: len(res), StreamSeq: seq}
	if p.MaxResidues > 0 && len(res) > p.MaxResidues {
		if p.Overlength == Reject {
			return rej(ReasonTooLong, fmt.Errorf("%w: %d residues > %d (overlength policy reject)", ErrTooLong, len(res), p.MaxResidues), id)
		}
		r.Residues, r.Truncated = res[:p.MaxResidues:p.MaxResidues], true
	}
	return r, nil
}

func checkID(id string) error {
	if len(id) > MaxIDBytes {
		return fmt.Errorf("%w: %d bytes > %d", ErrBadID, len(id), MaxIDBytes)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrBadID, id)
	}
	for _, r := range id {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q contains whitespace or control characters", ErrBadID, id)
		}
	}
	return nil
}

// recordID returns the record's id: the value of its Seq-Id header, the name matched in any
// case. A missing or empty header is an error wrapping ErrMissingID that lists the header names
// the record had; several headers or values that disagree return "" and nil (a bad id).
func recordID(h nats.Header) (string, error) {
	vals := headerValues(h, HeaderID)
	id := ""
	for _, v := range vals {
		switch {
		case v == "":
		case id == "":
			id = v
		case v != id:
			return "", nil
		}
	}
	if id != "" {
		return id, nil
	}
	if len(vals) > 0 {
		return "", fmt.Errorf("%w: the %s header is empty; ids are required and never synthesised", ErrMissingID, HeaderID)
	}
	return "", fmt.Errorf("%w: ids are required and never synthesised (%s)", ErrMissingID, seenHeaders(h))
}

// headerValues returns the values of every header of h named name in any case, exact-case
// name first.
func headerValues(h nats.Header, name string) []string {
	vals := slices.Clone(h[name])
	for k, v := range h {
		if k != name && strings.EqualFold(k, name) {
			vals = append(vals, v...)
		}
	}
	return vals
}

// headerGet returns the first value of the header named name in any case ("" if none).
func headerGet(h nats.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, name) {
			return v[0]
		}
	}
	return ""
}

// Bounds of the header list in a missing-id message, so a record with many or long header
// names cannot blow up an error message, a log line or a dead-letter header.
const (
	maxSeenHeaders    = 16
	maxSeenHeaderName = 64
)

// seenHeaders describes the header names of h for an error message: "no headers" or
// "headers seen: "A", "b"" (sorted, quoted, at most maxSeenHeaders names of at most
// maxSeenHeaderName bytes each, then how many more).
func seenHeaders(h nats.Header) string {
	if len(h) == 0 {
		return "no headers"
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("headers seen: ")
	for i, k := range names {
		if i == maxSeenHeaders {
			fmt.Fprintf(&b, " and %d more", len(names)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		if len(k) > maxSeenHeaderName {
			k = truncateUTF8(k, maxSeenHeaderName) + "..."
		}
		b.WriteString(strconv.Quote(k))
	}
	return b.String()
}

// quoteValues renders header values for an error message, each quoted and cut like names.
func quoteValues(vals []string) string {
	out := make([]string, 0, min(len(vals), maxSeenHeaders))
	for i, v := range vals {
		if i == maxSeenHeaders {
			out = append(out, fmt.Sprintf("and %d more", len(vals)-i))
			break
		}
		if len(v) > maxSeenHeaderName {
			v = truncateUTF8(v, maxSeenHeaderName) + "..."
		}
		out = append(out, strconv.Quote(v))
	}
	return strings.Join(out, ", ")
}

// truncateUTF8 returns the longest prefix of s of at most n bytes that does not cut a valid
// UTF-8 sequence in two (it backs off at most utf8.UTFMax-1 bytes; invalid bytes are kept).
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	cut := n
	for i := 0; i < utf8.UTFMax-1 && cut > 0 && !utf8.RuneStart(s[cut]); i++ {
		cut--
	}
	return s[:cut]
}
