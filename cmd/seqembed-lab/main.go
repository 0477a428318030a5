// Command seqembed-lab holds the tools that are not part of the production binary: the chaos
// soak and the plots of a bench report.
//
//	seqembed-lab soak [flags]   3-node JetStream cluster, `seqembed worker` children killed and
//	                            restarted, node and leader faults; prints a loss ledger
//	seqembed-lab plot DIR       draw the PNG plots of a `seqembed bench --report DIR` directory
//	                            and rewrite its summary.md with them
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

var commands = []command{
	{"soak", "chaos soak: 3-node cluster, `seqembed worker` SIGKILLs, node and leader faults; prints a loss ledger", runSoakCmd},
	{"plot", "draw the PNG plots of a `seqembed bench --report DIR` directory into it and rewrite its summary.md", runPlotCmd},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: seqembed-lab COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-6s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'seqembed-lab COMMAND -h' for a command's flags.")
}

func main() { os.Exit(realMain(os.Args[1:])) }

// realMain runs the subcommand args[0] and returns the exit code: 0 done, 1 failed, 2 usage.
func realMain(args []string) int {
	if len(args) < 1 {
		usage()
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage()
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:])
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "seqembed-lab %s: %v\n", c.name, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "seqembed-lab: unknown command %q\n", args[0])
	usage()
	return 2
}
