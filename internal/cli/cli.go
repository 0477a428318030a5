// Package cli is the subcommand dispatch both binaries share (seqembed, seqembed-lab): a list
// of commands, usage, SIGINT/SIGTERM as context cancellation, and exit codes 0 (done), 1
// (failed) and 2 (usage).
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

// Usage prints the command list to w.
func (p Program) Usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", p.Name)
	for _, c := range p.Commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.Name, c.Summary)
	}
	if p.Footer != "" {
		fmt.Fprintln(w, "\n"+p.Footer)
	}
}

// Main runs the subcommand args[0] with a context that SIGINT and SIGTERM cancel, and returns
// the exit code: 0 done (or -h), 1 failed (the error printed as "NAME CMD: err"), 2 usage.
func (p Program) Main(args []string) int {
	if len(args) < 1 {
		p.Usage(os.Stderr)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		p.Usage(os.Stderr)
		return 0
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
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s %s: %v\n", p.Name, c.Name, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "%s: unknown command %q\n", p.Name, args[0])
	p.Usage(os.Stderr)
	return 2
}
