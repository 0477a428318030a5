package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/telemetry"
)

func runPublishCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	var nf natsFlags
	nf.register(fs)
	model := fs.String("model", "", "model name the records are for (the worker's model.json name)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: seqembed publish --model NAME [flags] FILE.fasta[.gz]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *model == "" {
		fs.Usage()
		return flag.ErrHelp
	}
	log, err := telemetry.NewLogger("warn", "console")
	if err != nil {
		return err
	}
	nc, err := nf.connect("seqembed publish", log)
	if err != nil {
		return err
	}
	defer nc.Drain()
	var bar io.Writer = os.Stderr
	if *quiet {
		bar = nil
	}
	start := time.Now()
	st, err := ingest.PublishFASTA(ctx, nc, fs.Arg(0), *model, bar, log)
	fmt.Fprintf(os.Stderr, "published %d records (%d stored, %d duplicate ids, %d dead-lettered) in %s\n",
		st.Records, st.Stored, st.Duplicates, st.DeadLettered, time.Since(start).Round(time.Millisecond))
	return err
}
