// Package cli is the subcommand dispatch both binaries share (seqembed, seqembed-lab): a list
// of commands, usage, SIGINT/SIGTERM as context cancellation, and the exit codes: ExitOK (done,
// or -h), ExitFailed (any other error), ExitUsage (a *UsageError: the command line cannot run)
// and ExitRejected (ErrRejected or ErrIDConflicts: the job finished, but records were rejected,
// or ids came with more than one sequence).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes of Program.Main.
const (
	ExitOK       = 0 // done (every record embedded / published), or -h
	ExitFailed   = 1 // the command failed
	ExitUsage    = 2 // a usage error: missing required flag or argument, unknown flag, bad value
	ExitRejected = 3 // the job finished, but records were rejected (dead-lettered) or ids conflict
	// ExitInterrupted (128 + SIGINT, the shell's convention): a SIGINT or SIGTERM stopped a
	// command that then failed for it (a run cut short); a command that finishes cleanly on the
	// signal (the worker draining, sink closing its file) exits ExitOK.
	ExitInterrupted = 130
)

// UsageError is a command line that cannot run: a required flag or argument missing, an unknown
// flag, a value out of range. Commands return it (Usagef builds one); Main prints it with a
// pointer to the command's -h and exits ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a *UsageError formatted as fmt.Errorf would (%w wraps).
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// ErrRejected says a job ran to the end but some of its records were rejected (dead-lettered);
// commands wrap it with the counts (fmt.Errorf("%w: ...", ErrRejected)) and Main exits
// ExitRejected. A flag such as --allow-rejects turns it off.
var ErrRejected = errors.New("finished, but records were rejected")

// ErrIDConflicts says a job ran to the end but some ids came with more than one sequence (every
// sequence was embedded, one row each): commands wrap it with the counts and Main exits
// ExitRejected. A flag such as --allow-id-conflicts turns it off.
var ErrIDConflicts = errors.New("finished, but ids came with more than one sequence")

// Command is one subcommand.
type Command struct {
	Name, Summary string
	Run           func(ctx context.Context, args []string) error
}

// Program is a binary made of subcommands.
type Program struct {
	Name     string
	Commands []Command
	Footer   string // printed after the command list by Usage
	// Extra handles a first argument that is no command (e.g. --version); ok false if it is not
	// one of its own.
	Extra func(arg string) (code int, ok bool)
}

// Usage prints the command list to w, the summaries aligned after the longest name.
func (p Program) Usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", p.Name)
	width := 8
	for _, c := range p.Commands {
		width = max(width, len(c.Name))
	}
	for _, c := range p.Commands {
		fmt.Fprintf(w, "  %-*s %s\n", width, c.Name, c.Summary)
	}
	if p.Footer != "" {
		fmt.Fprintln(w, "\n"+p.Footer)
	}
}

// Main runs the subcommand args[0] with a context that SIGINT and SIGTERM cancel, and returns
// the exit code (Code): the error, if any, is printed as "NAME CMD: err" on stderr, a usage error
// followed by a pointer to "NAME CMD -h".
func (p Program) Main(args []string) int {
	if len(args) < 1 {
		p.Usage(os.Stderr)
		return ExitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		p.Usage(os.Stderr)
		return ExitOK
	}
	if p.Extra != nil {
		if code, ok := p.Extra(args[0]); ok {
			return code
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range p.Commands {
		if c.Name != args[0] {
			continue
		}
		err := c.Run(ctx, args[1:])
		code := Code(err)
		if code == ExitFailed && ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "%s %s: interrupted: %v\n", p.Name, c.Name, err)
			return ExitInterrupted
		}
		switch {
		case code == ExitUsage:
			fmt.Fprintf(os.Stderr, "%s %s: %v\nRun '%s %s -h' for its flags.\n", p.Name, c.Name, err, p.Name, c.Name)
		case code != ExitOK:
			fmt.Fprintf(os.Stderr, "%s %s: %v\n", p.Name, c.Name, err)
		}
		return code
	}
	fmt.Fprintf(os.Stderr, "%s: unknown command %q\n", p.Name, args[0])
	p.Usage(os.Stderr)
	return ExitUsage
}

// Code is the exit code for a command's error: ExitOK for nil and flag.ErrHelp, ExitUsage for a
// *UsageError, ExitRejected for ErrRejected and ErrIDConflicts, else ExitFailed.
func Code(err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, ErrRejected), errors.Is(err, ErrIDConflicts):
		return ExitRejected
	}
	return ExitFailed
}
