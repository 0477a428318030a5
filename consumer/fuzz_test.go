package consumer_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/seqembed/seqembed/consumer"
)

// fuzzMaxRecordBytes is small enough that the fuzzer reaches the too_large path.
const fuzzMaxRecordBytes = 256

// reasonErr maps each reason code to the error value its RejectError must wrap.
var reasonErr = map[string]error{
	consumer.ReasonMissingID: consumer.ErrMissingID,
	consumer.ReasonBadID:     consumer.ErrBadID,
	consumer.ReasonEmpty:     consumer.ErrEmpty,
	consumer.ReasonTooLarge:  consumer.ErrTooLarge,
	consumer.ReasonTooLong:   consumer.ErrTooLong,
	consumer.ReasonInvalid:   consumer.ErrInvalid,
	consumer.ReasonBadHeader: consumer.ErrBadHeader,
}

func isBodySpace(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\n', '\v', '\f':
		return true
	}
	return false
}

// FuzzDecode checks Decode's contract on arbitrary ids, bodies and limits: it never panics; a
// record holds only valid letters, at most MaxResidues of them, flagged Truncated exactly when the
// body had more; anything else is a *RejectError with a known reason.
func FuzzDecode(f *testing.F) {
	f.Add("P1", []byte("MKTAY"), uint16(10), false)
	f.Add("P2", []byte(" MK\nTA\r\n Y\t"), uint16(3), false)
	f.Add("P3", []byte("MKTAYIAKQRQ"), uint16(10), true)
	f.Add("", []byte("MKT"), uint16(0), false)
	f.Add("a b", []byte("MKT"), uint16(0), false)
	f.Add("P4", []byte("mk*\xc3\x28"), uint16(5), false)
	f.Add("P5", []byte("\v\f"), uint16(1), true)
	f.Add("P6", bytes.Repeat([]byte("A"), fuzzMaxRecordBytes+1), uint16(0), false)
	f.Fuzz(func(t *testing.T, id string, body []byte, maxResidues uint16, reject bool) {
		p := consumer.Policy{MaxRecordBytes: fuzzMaxRecordBytes, MaxResidues: int(maxResidues), Validate: validate}
		if reject {
			p.Overlength = consumer.Reject
		}
		orig := bytes.Clone(body)
		rec, err := consumer.Decode(hdr(id), body, 7, p)
		if !bytes.Equal(body, orig) {
			t.Fatalf("Decode modified the body: %q -> %q", orig, body)
		}
		if err != nil {
			var rej *consumer.RejectError
			if !errors.As(err, &rej) {
				t.Fatalf("error %v (%T) is not a *RejectError", err, err)
			}
			want, ok := reasonErr[rej.Reason]
			if !ok {
				t.Fatalf("unknown reason %q in %v", rej.Reason, err)
			}
			if !errors.Is(err, want) {
				t.Fatalf("reason %s but error %v does not wrap %v", rej.Reason, err, want)
			}
			if rej.StreamSeq != 7 || rej.Error() == "" {
				t.Fatalf("reject %+v", rej)
			}
			return
		}
		var stripped []byte
		for _, c := range body {
			if !isBodySpace(c) {
				stripped = append(stripped, c)
			}
		}
		if rec.ID != id || id == "" {
			t.Fatalf("ID %q, want %q", rec.ID, id)
		}
		if len(body) > fuzzMaxRecordBytes {
			t.Fatalf("%d-byte body accepted over the %d-byte limit", len(body), fuzzMaxRecordBytes)
		}
		if len(rec.Residues) == 0 {
			t.Fatal("empty record accepted")
		}
		for i, c := range rec.Residues {
			if isBodySpace(c) || !bytes.ContainsRune([]byte("LAGVSERTIDPKQNFYMHWCXBUZO"), rune(c)) {
				t.Fatalf("residue %q at %d in %q", c, i, rec.Residues)
			}
		}
		over := maxResidues > 0 && len(stripped) > int(maxResidues)
		if over && reject {
			t.Fatalf("%d residues over max %d accepted under reject", len(stripped), maxResidues)
		}
		if rec.Truncated != over {
			t.Fatalf("Truncated %v with %d residues, max %d", rec.Truncated, len(stripped), maxResidues)
		}
		if maxResidues > 0 && len(rec.Residues) > int(maxResidues) {
			t.Fatalf("%d residues over max %d", len(rec.Residues), maxResidues)
		}
		if rec.Length != len(stripped) || !bytes.HasPrefix(stripped, rec.Residues) ||
			(!over && len(rec.Residues) != len(stripped)) {
			t.Fatalf("residues %q (length %d) from body %q", rec.Residues, rec.Length, body)
		}
		if rec.StreamSeq != 7 {
			t.Fatalf("stream seq %d", rec.StreamSeq)
		}
		if rec.SeqSHA256 != consumer.SeqSHA256(stripped) || rec.InputIndex != -1 || rec.StopStripped || rec.Description != "" {
			t.Fatalf("identity %q index %d stripped %v description %q for %q", rec.SeqSHA256, rec.InputIndex, rec.StopStripped,
				rec.Description, stripped)
		}
		if len(body) > 0 && len(rec.Residues) > 0 && &rec.Residues[0] == &body[0] {
			t.Fatal("Residues aliases the body")
		}
	})
}
