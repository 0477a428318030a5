package batcher

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// hfIDs is the facebook/esm2_* vocabulary as Hugging Face EsmTokenizer and
// fair-esm number it, written out independently of the implementation.
var hfIDs = map[byte]int64{
	'L': 4, 'A': 5, 'G': 6, 'V': 7, 'S': 8, 'E': 9, 'R': 10, 'T': 11, 'I': 12,
	'D': 13, 'P': 14, 'K': 15, 'Q': 16, 'N': 17, 'F': 18, 'Y': 19, 'M': 20,
	'H': 21, 'W': 22, 'C': 23, 'X': 24, 'B': 25, 'U': 26, 'Z': 27, 'O': 28,
	'.': 29, '-': 30,
}

func mustTokenizer(t testing.TB, alphabet string) *Tokenizer {
	t.Helper()
	tok, err := NewTokenizer(alphabet)
	if err != nil {
		t.Fatalf("NewTokenizer(%q): %v", alphabet, err)
	}
	return tok
}

func encode(tok *Tokenizer, seq string) []int64 {
	dst := make([]int64, len(seq)+2)
	tok.Encode(dst, []byte(seq))
	return dst
}

func TestSpecialIDs(t *testing.T) {
	got := []int64{ClsID, PadID, EosID, UnkID, MaskID}
	if want := []int64{0, 1, 2, 3, 32}; !slices.Equal(got, want) {
		t.Fatalf("special ids = %v, want %v", got, want)
	}
}

func TestEncodeMatchesHF(t *testing.T) {
	tok := mustTokenizer(t, "")
	for _, tc := range []struct {
		seq  string
		want []int64
	}{
		// EsmTokenizer.from_pretrained("facebook/esm2_t6_8M_UR50D")("MKTAYIAK")
		{"MKTAYIAK", []int64{0, 20, 15, 11, 5, 19, 12, 5, 15, 2}},
		{"A", []int64{0, 5, 2}},
		{"LAGVSERTIDPKQNFYMHWCXBUZO", []int64{0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 2}},
	} {
		if got := encode(tok, tc.seq); !slices.Equal(got, tc.want) {
			t.Errorf("Encode(%q) = %v, want %v", tc.seq, got, tc.want)
		}
	}
}

func TestEveryResidueID(t *testing.T) {
	tok := mustTokenizer(t, "")
	if len(Residues) != 25 {
		t.Fatalf("len(Residues) = %d, want 25", len(Residues))
	}
	for i := 0; i < len(Residues); i++ {
		c := Residues[i]
		want, ok := hfIDs[c]
		if !ok {
			t.Fatalf("Residues has %q, not an ESM-2 letter", c)
		}
		if got := encode(tok, string(c)); got[1] != want {
			t.Errorf("%c -> %d, want %d", c, got[1], want)
		}
		if err := tok.Validate([]byte{c}); err != nil {
			t.Errorf("Validate(%q) = %v", c, err)
		}
	}
}

func TestGapTokensWhenAllowed(t *testing.T) {
	tok := mustTokenizer(t, Residues+".-")
	if err := tok.Validate([]byte("AC-.D")); err != nil {
		t.Fatalf("Validate with gaps allowed: %v", err)
	}
	if got, want := encode(tok, "A-."), []int64{0, 5, 30, 29, 2}; !slices.Equal(got, want) {
		t.Fatalf("Encode = %v, want %v", got, want)
	}
}

func TestEncodeUnknownAndBounds(t *testing.T) {
	tok := mustTokenizer(t, "ACD") // restricted: 'K' is an ESM letter but not accepted
	dst := slices.Repeat([]int64{-7}, 10)
	tok.Encode(dst, []byte{'A', 'J', 0xC3, 'K', 'a'})
	want := []int64{0, 5, UnkID, UnkID, UnkID, UnkID, 2, -7, -7, -7}
	if !slices.Equal(dst, want) {
		t.Fatalf("Encode = %v, want %v (unknown -> UnkID, tail untouched)", dst, want)
	}
}

func TestEncodeAllocFree(t *testing.T) {
	tok := mustTokenizer(t, "")
	seq := []byte(strings.Repeat("MKTAYIAKQR", 100))
	dst := make([]int64, len(seq)+2)
	if n := testing.AllocsPerRun(100, func() { tok.Encode(dst, seq) }); n != 0 {
		t.Fatalf("Encode allocates %v times per run", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = tok.Validate(seq) }); n != 0 {
		t.Fatalf("Validate of a valid sequence allocates %v times per run", n)
	}
}

func TestValidate(t *testing.T) {
	tok := mustTokenizer(t, "")
	for _, tc := range []struct {
		name string
		seq  string
		pos  int
		msg  string // exact Error(), "" for valid
	}{
		{name: "valid", seq: "MKTAYIAKQRQISFVKSHFSRQ"},
		{name: "lowercase", seq: "MKTAYIAKQRQa", pos: 11, msg: "lowercase residue 'a' at position 12: sequences must be uppercase"},
		{name: "stop codon", seq: "MKT*", pos: 3, msg: "stop codon '*' at position 4: strip it before publishing"},
		{name: "gap dash", seq: "MK-T", pos: 2, msg: "gap '-' at position 3: alignment gaps are not accepted, strip them before publishing"},
		{name: "gap dot", seq: ".MKT", pos: 0, msg: "gap '.' at position 1: alignment gaps are not accepted, strip them before publishing"},
		{name: "non-ASCII", seq: "MK\xc3\xa9", pos: 2, msg: `non-ASCII byte \xC3 at position 3: sequences must be ASCII (check the file encoding)`},
		{name: "space", seq: "MK T", pos: 2, msg: "whitespace ' ' at position 3: strip whitespace before publishing"},
		{name: "newline", seq: "MKT\n", pos: 3, msg: `whitespace \x0A at position 4: strip whitespace before publishing`},
		{name: "NUL", seq: "M\x00", pos: 1, msg: `non-printable byte \x00 at position 2: sequences must be printable ASCII`},
		{name: "not a residue", seq: "MKJ", pos: 2, msg: "residue 'J' at position 3: not in the accepted alphabet " + Residues},
		{name: "digit", seq: "M1", pos: 1, msg: "character '1' at position 2: not a residue letter, accepted: " + Residues},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tok.Validate([]byte(tc.seq))
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("Validate(%q) = %v, want nil", tc.seq, err)
				}
				return
			}
			var re *ResidueError
			if !errors.As(err, &re) {
				t.Fatalf("Validate(%q) = %v, want *ResidueError", tc.seq, err)
			}
			if !errors.Is(err, ErrInvalidResidue) {
				t.Errorf("error does not wrap ErrInvalidResidue")
			}
			if re.Pos != tc.pos || re.Byte != tc.seq[tc.pos] {
				t.Errorf("Byte, Pos = %q, %d, want %q, %d", re.Byte, re.Pos, tc.seq[tc.pos], tc.pos)
			}
			if got := err.Error(); got != tc.msg {
				t.Errorf("Error() = %q\nwant      %q", got, tc.msg)
			}
		})
	}
}

func TestValidateEmpty(t *testing.T) {
	tok := mustTokenizer(t, "")
	for _, seq := range [][]byte{nil, {}} {
		if err := tok.Validate(seq); !errors.Is(err, ErrEmpty) {
			t.Errorf("Validate(%v) = %v, want ErrEmpty", seq, err)
		}
	}
}

func TestValidateRestrictedAlphabet(t *testing.T) {
	tok := mustTokenizer(t, "LAGVSERTIDPKQNFYMHWC") // the 20 standard amino acids
	if tok.Alphabet() != "LAGVSERTIDPKQNFYMHWC" {
		t.Fatalf("Alphabet() = %q", tok.Alphabet())
	}
	err := tok.Validate([]byte("MKXA"))
	var re *ResidueError
	if !errors.As(err, &re) || re.Byte != 'X' || re.Pos != 2 {
		t.Fatalf("Validate(MKXA) = %v, want ResidueError for 'X' at 2", err)
	}
}

func TestNewTokenizerAlphabet(t *testing.T) {
	for _, good := range []string{"", Residues, "ACD", "X", Residues + ".-"} {
		if _, err := NewTokenizer(good); err != nil {
			t.Errorf("NewTokenizer(%q) = %v", good, err)
		}
	}
	for _, bad := range []string{"ACDj", "AC1", "J", "A*", "A ", "<cls>", "\xc3"} {
		_, err := NewTokenizer(bad)
		if !errors.Is(err, ErrAlphabet) {
			t.Errorf("NewTokenizer(%q) = %v, want ErrAlphabet", bad, err)
		}
	}
}
