package consumer

import (
	"crypto/sha256"
	"encoding/hex"
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
	// HeaderDescription carries the record's description (optional): the FASTA header text after
	// the id. The worker keeps at most MaxDescriptionBytes of it (CleanDescription).
	HeaderDescription = "Seq-Description"
	// HeaderIndex carries the record's 0-based position in its input (optional), in decimal:
	// `seqembed publish` and `run` count the records of their input files one after another, in
	// the order given. A record without it has index -1.
	HeaderIndex = "Seq-Index"
	// HeaderStopStripped is set to "1" on a record whose trailing stop codon '*' the publisher
	// removed ("1" or "true" reads as set; "0", "false" or absent as not).
	HeaderStopStripped = "Seqembed-Stop-Stripped"
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
	// MaxDescriptionBytes is the most of a description a record carries: a longer one is cut
	// (at a UTF-8 character boundary), so that a record's headers stay small (dead-letter
	// copies must fit under max_payload).
	MaxDescriptionBytes = 1024
)

// Overlength says what happens to a sequence longer than the model's max length.
type Overlength int

const (
	// Truncate keeps the first max-length residues and flags the record truncated (fair-esm's way).
	Truncate Overlength = iota
	// Reject dead-letters the record with reason too_long.
	Reject
	// Chunk keeps every residue and flags the record Chunk: the pipeline embeds it in
	// overlapping windows and merges them into one row (batcher.Windows, batcher.Merger).
	Chunk
)

// ParseOverlength reads "truncate", "reject" or "chunk".
func ParseOverlength(s string) (Overlength, error) {
	switch s {
	case "truncate":
		return Truncate, nil
	case "reject":
		return Reject, nil
	case "chunk":
		return Chunk, nil
	}
	return 0, fmt.Errorf("%w: overlength %q: want truncate, reject or chunk", ErrOption, s)
}

// Record is one valid input record. Residues has no whitespace and at most the max length,
// unless Chunk is set.
type Record struct {
	ID          string
	Description string // HeaderDescription, cleaned and capped (CleanDescription); "" when absent
	Residues    []byte
	Length      int // residues before truncation
	// SeqSHA256 is the hex SHA-256 of the whole sequence as received (SeqSHA256): the body with
	// whitespace removed, before truncation. With ID it is the record's identity.
	SeqSHA256 string
	Truncated bool
	// Chunk: the record is longer than the max length and the policy is Chunk; Residues holds
	// every residue (Length of them), to be embedded in windows.
	Chunk        bool
	StopStripped bool  // HeaderStopStripped: the publisher removed a trailing '*'
	InputIndex   int64 // HeaderIndex; -1 when absent
	StreamSeq    uint64
	Delivered    uint64        // delivery count (1 on first delivery)
	Msg          jetstream.Msg // ack/nak it through Ack/Nak once its output is stored (or not)
}

// SeqSHA256 is the lowercase hex SHA-256 of residues: exactly the bytes given, no case folding
// or other normalisation. The worker hashes the record's body with its whitespace removed and
// before truncation (the residues it validated); `seqembed publish` hashes the same bytes (the
// FASTA sequence without whitespace, after removing one trailing stop codon), so both agree.
func SeqSHA256(residues []byte) string {
	sum := sha256.Sum256(residues)
	return hex.EncodeToString(sum[:])
}

// CleanDescription makes a FASTA description safe to carry as a header value and as a UTF-8
// column: invalid UTF-8 becomes U+FFFD, control characters (tab, CR, LF, ...) become spaces,
// surrounding spaces are trimmed, and the result is cut to at most MaxDescriptionBytes bytes at
// a character boundary.
func CleanDescription(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(truncateUTF8(strings.TrimSpace(s), MaxDescriptionBytes))
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
// is a fresh slice (the body is not retained). Besides Seq-Id (required) it reads, by name in
// any case, Seq-Description (cleaned and capped, never a reason to refuse a record), Seq-Index
// and Seqembed-Stop-Stripped (an unreadable value is ReasonBadHeader), and hashes the residues
// (Record.SeqSHA256).
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
	r := Record{ID: id, Residues: res, Length: len(res), StreamSeq: seq, InputIndex: -1}
	if r.InputIndex, r.StopStripped, err = recordMeta(h); err != nil {
		return rej(ReasonBadHeader, err, id)
	}
	r.Description = CleanDescription(headerGet(h, HeaderDescription))
	r.SeqSHA256 = SeqSHA256(res)
	if p.MaxResidues > 0 && len(res) > p.MaxResidues {
		switch p.Overlength {
		case Reject:
			return rej(ReasonTooLong, fmt.Errorf("%w: %d residues > %d (overlength policy reject)", ErrTooLong, len(res), p.MaxResidues), id)
		case Chunk:
			r.Chunk = true
		default:
			r.Residues, r.Truncated = res[:p.MaxResidues:p.MaxResidues], true
		}
	}
	return r, nil
}

// recordMeta reads a record's optional Seq-Index and Seqembed-Stop-Stripped headers (names in
// any case): the index -1 when absent. A value that is not a non-negative decimal index (or not
// 1, true, 0 or false), or several values that disagree, is an error wrapping ErrBadHeader.
func recordMeta(h nats.Header) (index int64, stripped bool, err error) {
	index = -1
	v, err := oneValue(h, HeaderIndex)
	if err != nil {
		return index, false, err
	}
	if v != "" {
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < 0 {
			return index, false, fmt.Errorf("%w: %s %s: want a 0-based decimal index", ErrBadHeader, HeaderIndex, quoteValues([]string{v}))
		}
		index = n
	}
	if v, err = oneValue(h, HeaderStopStripped); err != nil {
		return index, false, err
	}
	switch strings.ToLower(v) {
	case "1", "true":
		stripped = true
	case "", "0", "false":
	default:
		return index, false, fmt.Errorf("%w: %s %s: want 1 or 0", ErrBadHeader, HeaderStopStripped, quoteValues([]string{v}))
	}
	return index, stripped, nil
}

// oneValue is the value of the header named name in any case: "" when absent or empty; an
// error wrapping ErrBadHeader when non-empty values disagree.
func oneValue(h nats.Header, name string) (string, error) {
	v := ""
	for _, x := range headerValues(h, name) {
		switch x = strings.TrimSpace(x); {
		case x == "":
		case v == "":
			v = x
		case x != v:
			return "", fmt.Errorf("%w: %s headers disagree: %s", ErrBadHeader, name, quoteValues(headerValues(h, name)))
		}
	}
	return v, nil
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
