package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/pipeline"
)

// ensureStreams creates the input stream, model's durable consumer and the output stream where
// they are missing, with cfg's settings, and on existing ones changes only the settings whose
// flags were given (set, by flag name: ack-wait, max-ack-pending, max-deliver, replicas), so limits
// another client set (max bytes, max age, an operator's max ack pending) are never reset. It then
// writes their state to w.
func ensureStreams(ctx context.Context, js jetstream.JetStream, model string, cfg pipeline.Config, set map[string]bool, w io.Writer) error {
	overlength, err := consumer.ParseOverlength(cfg.Overlength)
	if err != nil {
		return err
	}
	replicas := pipeline.StreamReplicas(cfg.Replicas, js.Conn())
	// The consumer package's stream and consumer settings, for what has to be created.
	cons, err := consumer.New(js, model, func([]byte) error { return nil }, consumer.WithStream(cfg.InStream),
		consumer.WithAckWait(cfg.AckWait), consumer.WithMaxAckPending(cfg.MaxAckPending),
		consumer.WithMaxDeliver(cfg.MaxDeliver), consumer.WithOverlength(overlength), consumer.WithReplicas(replicas),
		consumer.WithStreamMaxBytes(cfg.InMaxBytes))
	if err != nil {
		return err
	}
	if err := ensureStream(ctx, js, cons.StreamConfig(), streamChanges{replicas: set["replicas"], maxBytes: set["in-max-bytes"]}, w); err != nil {
		return err
	}
	outCfg, err := cfg.OutStreamConfig(replicas).JetStream()
	if err != nil {
		return err
	}
	if err := ensureStream(ctx, js, outCfg, streamChanges{replicas: set["replicas"], maxBytes: set["out-max-bytes"], maxAge: set["max-age"]}, w); err != nil {
		return err
	}
	want := cons.ConsumerConfig()
	in, err := js.Stream(ctx, cfg.InStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", cfg.InStream, err)
	}
	want.Replicas = in.CachedInfo().Config.Replicas // the stream's, explicitly (consumer.Setup says why)
	c, err := js.Consumer(ctx, cfg.InStream, want.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		if _, err := js.CreateConsumer(ctx, cfg.InStream, want); err != nil {
			return fmt.Errorf("creating consumer %s: %w", want.Durable, err)
		}
		fmt.Fprintf(w, "created consumer %s\n", want.Durable)
	case err != nil:
		return fmt.Errorf("consumer %s: %w", want.Durable, err)
	default:
		cur := c.CachedInfo().Config
		var changed []string
		if set["ack-wait"] && cur.AckWait != want.AckWait {
			cur.AckWait, changed = want.AckWait, append(changed, "ack wait")
		}
		if set["max-ack-pending"] && cur.MaxAckPending != want.MaxAckPending {
			cur.MaxAckPending, changed = want.MaxAckPending, append(changed, "max ack pending")
		}
		if set["max-deliver"] && cur.MaxDeliver != want.MaxDeliver {
			cur.MaxDeliver, changed = want.MaxDeliver, append(changed, "max deliver")
		}
		if !slices.Equal(cur.FilterSubjects, want.FilterSubjects) || cur.FilterSubject != "" {
			// The model's subjects are seqembed's own routing (a durable made before jobs
			// existed filtered on seqs.in.MODEL alone), not a limit anyone tunes.
			cur.FilterSubject, cur.FilterSubjects = "", want.FilterSubjects
			changed = append(changed, "subjects "+strings.Join(want.FilterSubjects, ", "))
		}
		if cur.Replicas != want.Replicas {
			cur.Replicas, changed = want.Replicas, append(changed, fmt.Sprintf("%d replicas", want.Replicas))
		}
		if len(changed) > 0 {
			// Right after the stream's replicas changed, the server refuses the consumer's new
			// count until the stream's scaling is applied (~10 s in a 3-node test cluster).
			err := retry.Do(ctx, retry.Policy{Initial: 500 * time.Millisecond, Max: 2 * time.Second, Tries: 30, Retryable: consumer.ReplicasRefused},
				func(ctx context.Context) error { _, err := js.UpdateConsumer(ctx, cfg.InStream, cur); return err })
			if err != nil {
				return fmt.Errorf("updating consumer %s (%s): %w", want.Durable, strings.Join(changed, ", "), err)
			}
			fmt.Fprintf(w, "updated consumer %s: %s\n", want.Durable, strings.Join(changed, ", "))
		}
	}
	return printState(ctx, js, model, cfg, w)
}

// streamChanges names the settings of an existing stream that ensureStream changes (their flags
// were given).
type streamChanges struct{ replicas, maxBytes, maxAge bool }

// ensureStream creates the stream of want where it is missing; on an existing one it changes only
// the settings that change names.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, change streamChanges, w io.Writer) error {
	s, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if _, err := js.CreateStream(ctx, want); err != nil {
			return fmt.Errorf("creating stream %s: %w", want.Name, err)
		}
		fmt.Fprintf(w, "created stream %s (%d replicas)\n", want.Name, want.Replicas)
		return nil
	case err != nil:
		return fmt.Errorf("stream %s: %w", want.Name, err)
	}
	cur := s.CachedInfo().Config
	var changed []string
	if change.replicas && cur.Replicas != want.Replicas {
		cur.Replicas, changed = want.Replicas, append(changed, fmt.Sprintf("%d replicas", want.Replicas))
	}
	if change.maxBytes && cur.MaxBytes != want.MaxBytes {
		cur.MaxBytes, changed = want.MaxBytes, append(changed, "max bytes "+bytesString(uint64(max(want.MaxBytes, 0))))
	}
	if change.maxAge && cur.MaxAge != want.MaxAge {
		cur.MaxAge, changed = want.MaxAge, append(changed, "max age "+want.MaxAge.String())
	}
	if len(changed) > 0 {
		if _, err := js.UpdateStream(ctx, cur); err != nil {
			return fmt.Errorf("stream %s (%s): %w", want.Name, strings.Join(changed, ", "), err)
		}
		fmt.Fprintf(w, "updated stream %s: %s\n", want.Name, strings.Join(changed, ", "))
	}
	return nil
}

// printState writes the streams' and the consumer's state to w.
func printState(ctx context.Context, js jetstream.JetStream, model string, cfg pipeline.Config, w io.Writer) error {
	out, err := js.Stream(ctx, cfg.OutStream)
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
		bytesString(info.State.Bytes), bytesLimit(info.Config.MaxBytes), info.Config.Subjects, info.Config.Retention)
	fmt.Fprintf(w, "  %s: %d waiting, %s: %d dead letters\n", consumer.Subject(model), info.State.Subjects[consumer.Subject(model)],
		consumer.DLQSubject(model), info.State.Subjects[consumer.DLQSubject(model)])
	var jobLines []string
	for subj, n := range info.State.Subjects {
		if job := consumer.JobOf(model, subj); job != "" {
			dlq := consumer.JobDLQSubject(model, job)
			jobLines = append(jobLines, fmt.Sprintf("  job %s: %d waiting, %d dead letters", job, n, info.State.Subjects[dlq]))
		}
	}
	slices.Sort(jobLines)
	for _, l := range jobLines {
		fmt.Fprintln(w, l)
	}
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
	age := "for ever"
	if oi.Config.MaxAge > 0 {
		age = oi.Config.MaxAge.String()
	}
	fmt.Fprintf(w, "stream %s: %d messages, %s of %s, kept %s, subjects %v\n", oi.Config.Name, oi.State.Msgs, bytesString(oi.State.Bytes),
		bytesLimit(oi.Config.MaxBytes), age, oi.Config.Subjects)
	return nil
}

// bytesLimit is a stream's max bytes: "no limit" for -1 or 0.
func bytesLimit(n int64) string {
	if n <= 0 {
		return "no limit"
	}
	return bytesString(uint64(n))
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
		"Creates the input stream, MODEL's durable consumer and the output stream where they are missing, with the\n"+
		"settings below; on existing ones changes only the settings whose flags are given (limits set by other\n"+
		"clients stay); prints their state.")
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
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return ensureStreams(ctx, js, *model, cfg, set, os.Stdout)
}
