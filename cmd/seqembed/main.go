// Command seqembed turns protein sequences into ESM-2 embeddings: JetStream in, length-bucketed
// batches, ONNX Runtime, Arrow IPC out. It turns flags into a pipeline.Config and runs it; the
// worker itself is package pipeline.
//
//	seqembed worker  --nats URL --model DIR      pull records, embed, publish, ack
//	seqembed publish --nats URL --model NAME F   publish a FASTA file as records
//	seqembed sink    --nats URL --out F.parquet  write the embeddings stream to Parquet
//	seqembed run     F.fasta --out F.parquet     all of it in one process (embedded JetStream)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/seqembed/seqembed/pipeline"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

// commandList is every subcommand; hooks reach the worker's pipeline (tests only: the crash tests
// run this binary's test build as a child with hooks set).
func commandList(hooks pipeline.Hooks) []command {
	return []command{
		{"worker", "pull records from JetStream, embed them, publish Arrow, ack",
			func(ctx context.Context, args []string) error { return runWorkerCmd(ctx, args, hooks) }},
		{"publish", "publish a FASTA file (.gz too) as records", runPublishCmd},
		{"sink", "write the embeddings stream to a Parquet file", runSinkCmd},
		{"run", "embed a FASTA file end to end with an embedded JetStream server", runRunCmd},
		{"streams", "create or update the streams and a model's consumer (idempotent) and print their state", runStreamsCmd},
		{"bench", "measure throughput end to end (or --raw: ONNX Runtime alone) on a FASTA file", runBenchCmd},
		{"version", "print the version", func(context.Context, []string) error { fmt.Println("seqembed", version()); return nil }},
	}
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v
}

func usage(cmds []command) {
	fmt.Fprintln(os.Stderr, "usage: seqembed COMMAND [flags]\n\ncommands:")
	for _, c := range cmds {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'seqembed COMMAND -h' for a command's flags. Every flag can also be set as an\nenvironment variable SEQEMBED_<FLAG> (upper case, '-' as '_').")
}

func main() { os.Exit(realMain(os.Args[1:], pipeline.Hooks{})) }

// realMain runs the subcommand args[0] and returns the exit code: 0 done, 1 failed, 2 usage.
func realMain(args []string, hooks pipeline.Hooks) int {
	cmds := commandList(hooks)
	if len(args) < 1 {
		usage(cmds)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(cmds)
		return 0
	case "--version", "-version":
		fmt.Println("seqembed", version())
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range cmds {
		if c.name == args[0] {
			err := c.run(ctx, args[1:])
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "seqembed %s: %v\n", c.name, err)
				return 1
			}
			return 0
		}
	}
	fmt.Fprintf(os.Stderr, "seqembed: unknown command %q\n", args[0])
	usage(cmds)
	return 2
}

// parseFlags parses args, first taking defaults from SEQEMBED_<NAME> environment variables.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "SEQEMBED_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(key); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", key, v, err)
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	return fs.Parse(args)
}
