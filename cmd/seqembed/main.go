// Command seqembed turns protein sequences into ESM-2 embeddings: JetStream in, length-bucketed
// batches, ONNX Runtime, Arrow IPC out. It turns flags into a pipeline.Config and runs it; the
// worker itself is package pipeline.
//
//	seqembed worker  --nats URL --model DIR      pull records, embed, publish, ack
//	seqembed publish --nats URL --model NAME F...  publish FASTA files as records
//	seqembed sink    --nats URL --out F.parquet    write the embeddings stream to Parquet
//	seqembed run     F.fasta... --out F.parquet    all of it in one process (embedded JetStream)
//	seqembed check-precision --model DIR --against DIR|golden.json  a model against a reference
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/pipeline"
)

// program is seqembed's subcommands; hooks reach the worker's pipeline (tests only: the crash
// tests run this binary's test build as a child with hooks set).
func program(hooks pipeline.Hooks) cli.Program {
	return cli.Program{
		Name: "seqembed",
		Commands: []cli.Command{
			{Name: "worker", Summary: "pull records from JetStream, embed them, publish Arrow, ack",
				Run: func(ctx context.Context, args []string) error { return runWorkerCmd(ctx, args, hooks) }},
			{Name: "publish", Summary: "publish FASTA files (plain, .gz, .xz, .zst, .bz2 or - for stdin) as records", Run: runPublishCmd},
			{Name: "sink", Summary: "write the embeddings stream to a Parquet or Arrow IPC file", Run: runSinkCmd},
			{Name: "run", Summary: "embed FASTA files end to end with an embedded JetStream server", Run: runRunCmd},
			{Name: "streams", Summary: "create or update the streams and a model's consumer (idempotent) and print their state", Run: runStreamsCmd},
			{Name: "model", Summary: "real weights: pull an ESM-2 checkpoint from the Hugging Face hub, build its graph in Go (no Python), list the cache", Run: runModelCmd},
			{Name: "bench", Summary: "measure throughput end to end (or --raw: ONNX Runtime alone) on a FASTA file", Run: runBenchCmd},
			{Name: "check-precision", Summary: "compare a model's embeddings with a reference model's or golden file's (cosine per sequence, top-10 neighbour overlap)", Run: runCheckPrecisionCmd},
			{Name: "version", Summary: "print the version", Run: func(context.Context, []string) error { fmt.Println("seqembed", version()); return nil }},
		},
		Footer: "Run 'seqembed COMMAND -h' for a command's flags. Every flag can also be set as an\nenvironment variable SEQEMBED_<FLAG> (upper case, '-' as '_').",
		Extra: func(arg string) (int, bool) {
			if arg == "--version" || arg == "-version" {
				fmt.Println("seqembed", version())
				return 0, true
			}
			return 0, false
		},
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

func main() { os.Exit(realMain(os.Args[1:], pipeline.Hooks{})) }

// realMain runs the subcommand args[0] and returns the exit code: 0 done, 1 failed, 2 usage, 3
// finished with records rejected (see cli.Code and README's "Exit codes").
func realMain(args []string, hooks pipeline.Hooks) int { return program(hooks).Main(args) }

// parseFlags parses a command line of flags only, first taking defaults from SEQEMBED_<NAME>
// environment variables. An unknown flag, a bad value or a positional argument is a
// *cli.UsageError; -h prints the usage and returns flag.ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return cli.Usagef("unexpected argument %q: seqembed %s takes flags only", pos[0], fs.Name())
	}
	return nil
}
