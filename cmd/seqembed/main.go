// Command seqembed turns protein sequences into ESM-2 embeddings: JetStream in, length-bucketed
// batches, ONNX Runtime, Arrow IPC out.
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
	"strings"
	"syscall"
)

var version = "dev"

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

var commands = []command{
	{"worker", "pull records from JetStream, embed them, publish Arrow, ack", runWorkerCmd},
	{"publish", "publish a FASTA file (.gz too) as records", runPublishCmd},
	{"sink", "write the embeddings stream to a Parquet file", runSinkCmd},
	{"run", "embed a FASTA file end to end with an embedded JetStream server", runRunCmd},
	{"streams", "create or update the streams and a model's consumer (idempotent) and print their state", runStreamsCmd},
	{"soak", "chaos soak: 3-node cluster, worker SIGKILLs, node and leader faults; prints a loss ledger", runSoakCmd},
	{"bench", "measure throughput end to end (or --raw: ONNX Runtime alone) on a FASTA file", runBenchCmd},
	{"version", "print the version", func(context.Context, []string) error { fmt.Println("seqembed", version); return nil }},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: seqembed COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'seqembed COMMAND -h' for a command's flags. Every flag can also be set as an\nenvironment variable SEQEMBED_<FLAG> (upper case, '-' as '_').")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name == os.Args[1] {
			err := c.run(ctx, os.Args[2:])
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "seqembed %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	if os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		return
	}
	fmt.Fprintf(os.Stderr, "seqembed: unknown command %q\n", os.Args[1])
	usage()
	os.Exit(2)
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
