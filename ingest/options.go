package ingest

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"

	"github.com/seqembed/seqembed/consumer"
)

// HeaderStopStripped is set, to "1", on a record whose trailing stop codon ('*', as prodigal and
// transeq write it) was removed at publish time (StopStrip), so that downstream can flag it (the
// output's stop_stripped column). It is consumer.HeaderStopStripped.
const HeaderStopStripped = consumer.HeaderStopStripped

// StopCodon says what Publish does with a sequence whose last residue is a stop codon '*'. A '*'
// anywhere else is left for the worker, which dead-letters the record (invalid_residue).
type StopCodon int

const (
	// StopStrip removes exactly one trailing '*' and sets HeaderStopStripped (the default).
	StopStrip StopCodon = iota
	// StopReject refuses the record at publish time: dead-lettered with reason invalid_residue,
	// the message naming the file, line and 1-based position.
	StopReject
)

// ParseStopCodon reads a --stop-codon value: "strip" or "reject".
func ParseStopCodon(s string) (StopCodon, error) {
	switch s {
	case "strip":
		return StopStrip, nil
	case "reject":
		return StopReject, nil
	}
	return 0, fmt.Errorf("%w: stop codon policy %q: want strip or reject", ErrOption, s)
}

// String is the --stop-codon value: strip or reject.
func (s StopCodon) String() string {
	if s == StopReject {
		return "reject"
	}
	return "strip"
}

// Options are a Publish's settings.
type Options struct {
	Model     string      // required: the records go to seqs.in.<Model>
	Job       string      // the records go to seqs.in.<Model>.<Job> (consumer.JobSubject); "" = seqs.in.<Model>
	StopCodon StopCodon   // a trailing '*': StopStrip (the default) or StopReject
	Progress  io.Writer   // where the progress is drawn (telemetry.NewProgress); nil: nowhere
	Log       *zap.Logger // nil: no logging
	// OnReject is called for each record refused at publish time, once it is dead-lettered
	// (nil: none), e.g. RejectsFile.Write; an error stops the publish.
	OnReject func(Reject) error
}

// check validates the options and the input files before anything is published: every file must
// exist and not be a directory, and "-" (standard input) may come once.
func (o Options) check(files []string) error {
	if o.Model == "" {
		return fmt.Errorf("%w: no model name", ErrOption)
	}
	if o.Job != "" {
		if err := consumer.CheckJob(o.Job); err != nil {
			return err
		}
	}
	if o.StopCodon != StopStrip && o.StopCodon != StopReject {
		return fmt.Errorf("%w: stop codon policy %d", ErrOption, o.StopCodon)
	}
	if len(files) == 0 {
		return fmt.Errorf("%w: no input files", ErrOption)
	}
	return CheckInputs(files)
}

// Rereadable reports whether the FASTA input path can be read twice: a regular file, not
// standard input ("-") or a pipe such as bash's <(zcat f.gz), which the first reading consumes.
func Rereadable(path string) bool {
	if path == "-" {
		return false
	}
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// CheckInputs checks FASTA input paths before any work: each exists and is no directory, and
// "-" (standard input) comes at most once.
func CheckInputs(files []string) error {
	stdin := 0
	for _, f := range files {
		if f == "-" {
			if stdin++; stdin > 1 {
				return fmt.Errorf("%w: standard input (-) given more than once", ErrOption)
			}
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("ingest: input file: %w", err)
		}
		if fi.IsDir() {
			return fmt.Errorf("ingest: input %s is a directory, not a FASTA file", f)
		}
	}
	return nil
}
