package batcher

import (
	"fmt"
	"strings"
)

// ESM-2 special token ids, as in fair-esm and Hugging Face EsmTokenizer
// (facebook/esm2_*).
const (
	ClsID, PadID, EosID, UnkID, MaskID int64 = 0, 1, 2, 3, 32
)

// Residues is the set of residue letters the worker accepts (uppercase
// only): the 20 standard amino acids plus X B U Z O. It is the default
// alphabet of NewTokenizer.
const Residues = "LAGVSERTIDPKQNFYMHWCXBUZO"

// esmLetters are the single-character ESM-2 tokens in vocabulary order; the
// id of esmLetters[i] is firstLetterID+i (L=4 ... O=28, '.'=29, '-'=30).
const (
	esmLetters    = Residues + ".-"
	firstLetterID = 4
)

// Tokenizer validates and encodes residue sequences with ESM-2 token ids.
//
// A Tokenizer is immutable after NewTokenizer and safe for concurrent use.
type Tokenizer struct {
	// table maps a byte to its token id, or -1 if the byte is not in the
	// alphabet. Validate uses it.
	table [256]int8
	// ids is table widened to int64 with -1 replaced by UnkID, so Encode is
	// a single branch-free load per residue.
	ids      [256]int64
	alphabet string
}

// NewTokenizer returns a Tokenizer accepting the residue letters in
// alphabet, which must be a subset of the ESM-2 single-character tokens
// (Residues plus the gap tokens '.' and '-'); "" means Residues. A letter
// outside that set, lowercase included, gives an error wrapping ErrAlphabet.
func NewTokenizer(alphabet string) (*Tokenizer, error) {
	if alphabet == "" {
		alphabet = Residues
	}
	t := &Tokenizer{alphabet: alphabet}
	for i := range t.table {
		t.table[i] = -1
		t.ids[i] = UnkID
	}
	for i := 0; i < len(alphabet); i++ {
		c := alphabet[i]
		k := strings.IndexByte(esmLetters, c)
		if k < 0 {
			return nil, fmt.Errorf("%w: %s in %q is not an ESM-2 residue token (allowed: %s)",
				ErrAlphabet, quoteByte(c), alphabet, esmLetters)
		}
		t.table[c] = int8(firstLetterID + k)
		t.ids[c] = int64(firstLetterID + k)
	}
	return t, nil
}

// Alphabet returns the accepted residue letters.
func (t *Tokenizer) Alphabet() string { return t.alphabet }

// Validate checks that seq is non-empty and made only of alphabet letters.
// It returns ErrEmpty, or a *ResidueError (wrapping ErrInvalidResidue) for
// the first bad byte, or nil. It does not allocate when seq is valid.
func (t *Tokenizer) Validate(seq []byte) error {
	if len(seq) == 0 {
		return ErrEmpty
	}
	for i, c := range seq {
		if t.table[c] < 0 {
			return &ResidueError{Byte: c, Pos: i, Hint: t.hint(c)}
		}
	}
	return nil
}

// Encode writes <cls>, the ids of seq and <eos> into dst[:len(seq)+2] and
// leaves the rest of dst untouched. It assumes Validate passed: a byte
// outside the alphabet becomes UnkID. dst must have room for len(seq)+2
// ids. Encode does not allocate.
func (t *Tokenizer) Encode(dst []int64, seq []byte) {
	n := len(seq)
	dst = dst[:n+2]
	dst[0] = ClsID
	dst[n+1] = EosID
	body := dst[1 : n+1]
	for i, c := range seq {
		body[i] = t.ids[c]
	}
}

// byteClass sorts a rejected byte into the cases that get their own
// wording in a ResidueError.
type byteClass uint8

const (
	classLower byteClass = iota
	classStop
	classGap
	classSpace
	classNonASCII
	classControl
	classUpper
	classOther
)

// classNames is how ResidueError.Error names each byteClass.
var classNames = [...]string{
	classLower:    "lowercase residue",
	classStop:     "stop codon",
	classGap:      "gap",
	classSpace:    "whitespace",
	classNonASCII: "non-ASCII byte",
	classControl:  "non-printable byte",
	classUpper:    "residue",
	classOther:    "character",
}

func classify(c byte) byteClass {
	switch {
	case c >= 'a' && c <= 'z':
		return classLower
	case c == '*':
		return classStop
	case c == '.' || c == '-':
		return classGap
	case c == ' ' || (c >= '\t' && c <= '\r'):
		return classSpace
	case c >= 0x80:
		return classNonASCII
	case c < 0x20 || c == 0x7f:
		return classControl
	case c >= 'A' && c <= 'Z':
		return classUpper
	default:
		return classOther
	}
}

// hint says what the publisher should do about a rejected byte c.
func (t *Tokenizer) hint(c byte) string {
	switch classify(c) {
	case classLower:
		return "sequences must be uppercase"
	case classStop:
		return "strip it before publishing"
	case classGap:
		return "alignment gaps are not accepted, strip them before publishing"
	case classSpace:
		return "strip whitespace before publishing"
	case classNonASCII:
		return "sequences must be ASCII (check the file encoding)"
	case classControl:
		return "sequences must be printable ASCII"
	case classUpper:
		return "not in the accepted alphabet " + t.alphabet
	default:
		return "not a residue letter, accepted: " + t.alphabet
	}
}

// describeByte names a rejected byte for ResidueError.Error, e.g.
// "lowercase residue 'a'" or "non-ASCII byte \xC3".
func describeByte(c byte) string {
	return classNames[classify(c)] + " " + quoteByte(c)
}

// quoteByte shows printable ASCII as 'c' and anything else as \xNN.
func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return "'" + string(rune(c)) + "'"
	}
	return fmt.Sprintf(`\x%02X`, c)
}
