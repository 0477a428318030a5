package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

func runRunCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg pipeline.Config
	registerConfig(fs, &cfg)
	out := fs.String("out", "embeddings.parquet", "file to write: an Arrow IPC file if it ends in .arrow, .arrows, .feather or .ipc, else Parquet")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	quiet := fs.Bool("quiet", false, "no progress bars")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: seqembed run [flags] FILE.fasta[.gz]\n\nEmbeds a FASTA file end to end in one process: embedded JetStream, worker, sink.")
		fs.PrintDefaults()
	}
	// Accept the FASTA file before or after the flags.
	var file string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		file, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	}
	if file == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	log, err := telemetry.NewLogger(*logLevel, "console")
	if err != nil {
		return err
	}
	defer log.Sync()
	var bar io.Writer = os.Stderr
	if *quiet {
		bar = nil
	}
	sum, err := localrun.Run(ctx, file, *out, cfg, bar, log)
	if err != nil {
		return err
	}
	sum.Print(os.Stdout, *out)
	return nil
}
