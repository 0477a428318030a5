package batcher

import (
	"errors"
	"fmt"
)

var (
	// ErrEmpty is returned for a sequence with no residues.
	ErrEmpty = errors.New("batcher: empty sequence")
	// ErrInvalidResidue is wrapped by every *ResidueError.
	ErrInvalidResidue = errors.New("batcher: invalid residue")
	// ErrTooLong is returned by Add for a sequence longer than the maxLen
	// given to New; callers truncate before adding.
	ErrTooLong = errors.New("batcher: sequence longer than maxLen")
	// ErrAlphabet is returned by NewTokenizer for an alphabet containing a
	// letter that is not an ESM-2 residue token.
	ErrAlphabet = errors.New("batcher: invalid alphabet")
	// ErrClosed is returned by Add once the batcher has been drained or
	// stopped.
	ErrClosed = errors.New("batcher: closed")
	// ErrOption is wrapped by every option validation error; the message
	// names the option and the rejected value.
	ErrOption = errors.New("batcher: invalid option")
	// ErrAlloc is wrapped by Batch.Err when the Allocator could not supply
	// a batch's buffers (it failed, or returned slices of the wrong length).
	ErrAlloc = errors.New("batcher: buffer allocation failed")
)

// ResidueError describes the first byte of a sequence that the Tokenizer
// does not accept. It wraps ErrInvalidResidue.
type ResidueError struct {
	Byte byte   // the offending byte
	Pos  int    // its 0-based position in the sequence
	Hint string // what the publisher should do about it
}

// Error returns e.g. "lowercase residue 'a' at position 13: sequences must be
// uppercase". Non-ASCII and non-printable bytes are shown as \xNN.
func (e *ResidueError) Error() string {
	msg := fmt.Sprintf("%s at position %d", describeByte(e.Byte), e.Pos+1) // 1-based for people
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

// Unwrap returns ErrInvalidResidue.
func (e *ResidueError) Unwrap() error { return ErrInvalidResidue }

// optionError builds the error an Option returns for a rejected value.
func optionError(option string, value any, why string) error {
	return fmt.Errorf("%w: %s(%v): %s", ErrOption, option, value, why)
}
