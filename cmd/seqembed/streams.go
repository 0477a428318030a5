package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/pipeline"
)

// ensureStreams creates or updates the input stream, model's durable consumer and the output
// stream (idempotent), with the settings a worker would use, and writes their state to w.
func ensureStreams(ctx context.Context, js jetstream.JetStream, model string, cfg pipeline.Config, w io.Writer) error {
	overlength, err := consumer.ParseOverlength(cfg.Overlength)
	if err != nil {
		return err
	}
	// Setup only uses the stream and consumer settings; records are validated by workers.
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithStream(cfg.InStream),
		consumer.WithAckWait(cfg.AckWait), consumer.WithMaxAckPending(cfg.MaxAckPending),
		consumer.WithMaxDeliver(cfg.MaxDeliver), consumer.WithOverlength(overlength), consumer.WithUpdateStream(true))
	if err != nil {
		return err
	}
	if err := cons.Setup(ctx); err != nil {
		return err
	}
	out, err := arrowout.EnsureStream(ctx, js, arrowout.StreamConfig{Name: cfg.OutStream})
	if err != nil {
		return err
	}
	in, err := js.Stream(ctx, cfg.InStream)
	if err != nil {
		return err
	}
	info, err := in.Info(ctx, jetstream.WithSubjectFilter("seqs.>"))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "stream %s: %d messages, %s of %s, subjects %v, %s retention\n", info.Config.Name, info.State.Msgs,
		bytesString(info.State.Bytes), bytesString(uint64(max(0, info.Config.MaxBytes))), info.Config.Subjects, info.Config.Retention)
	fmt.Fprintf(w, "  %s: %d waiting, %s: %d dead letters\n", consumer.Subject(model), info.State.Subjects[consumer.Subject(model)],
		consumer.DLQSubject(model), info.State.Subjects[consumer.DLQSubject(model)])
	c, err := js.Consumer(ctx, cfg.InStream, consumer.Durable(model))
	if err != nil {
		return err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "consumer %s: %d pending, %d unacked, %d redelivered, %d pulls waiting; ack wait %s, max deliver %d, max ack pending %d\n",
		ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Config.AckWait, ci.Config.MaxDeliver, ci.Config.MaxAckPending)
	oi, err := out.Info(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "stream %s: %d messages, %s, subjects %v\n", oi.Config.Name, oi.State.Msgs, bytesString(oi.State.Bytes), oi.Config.Subjects)
	return nil
}

func bytesString(n uint64) string {
	switch {
	case n == 0:
		return "0 B"
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func runStreamsCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("streams", flag.ContinueOnError)
	var cfg pipeline.Config
	registerWorkerFlags(fs, &cfg, streamFlags...)
	var nf natsFlags
	nf.register(fs)
	model := fs.String("name", "", "model name (model.json's name) whose consumer to create (required)")
	setUsage(fs, "usage: seqembed streams --name MODEL [flags]\n\n"+
		"Creates or updates the input stream, MODEL's durable consumer and the output stream (idempotent), with the\n"+
		"settings below, and prints their state.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *model == "" {
		return cli.Usagef("--name MODEL is required")
	}
	nc, js, err := nf.dial("seqembed streams")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return ensureStreams(ctx, js, *model, cfg, os.Stdout)
}
