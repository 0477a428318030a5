package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/telemetry"
)

// publishStats counts what a FASTA publish did.
type publishStats struct {
	Records      int   // records read from the file
	Stored       int   // new messages stored by the input stream
	Duplicates   int   // records whose id was already published within the dedupe window
	DeadLettered int   // records the file itself could not give (no id, too large): dead-lettered here
	Residues     int64 // residues in stored records
}

// publishWindow is how many PubAcks may be outstanding.
const publishWindow = 1024

// publishFASTA publishes every record of path to seqs.in.<model> with its id in Seq-Id and a
// Nats-Msg-Id of "<model>:<id>", so that a re-run (or a repeated id) within the stream's dedupe
// window is not stored twice. Records the FASTA reader rejects are dead-lettered with the reason.
func publishFASTA(ctx context.Context, nc *nats.Conn, path, model string, progress io.Writer, log *zap.Logger) (publishStats, error) {
	var st publishStats
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(publishWindow),
		jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		return st, err
	}
	total := int64(-1)
	if n, err := fasta.Count(path); err == nil {
		total = int64(n)
	}
	bar := telemetry.NewProgress(total, "publish", progress, progress != nil)
	defer bar.Finish()
	r, closer, err := fasta.Open(path)
	if err != nil {
		return st, err
	}
	defer closer.Close()

	type pending struct {
		msg *nats.Msg
		fut jetstream.PubAckFuture
	}
	var window []pending
	settle := func(p pending) error {
		var ack *jetstream.PubAck
		var err error
		select {
		case ack = <-p.fut.Ok():
		case err = <-p.fut.Err():
		case <-ctx.Done():
			return ctx.Err()
		}
		// A failed or timed-out future may still have been stored: republishing with the same
		// Nats-Msg-Id is safe, the stream deduplicates it.
		for try := 0; err != nil && try < 3; try++ {
			log.Warn("publish retry", zap.String("id", p.msg.Header.Get(consumer.HeaderID)), zap.Error(err))
			ack, err = js.PublishMsg(ctx, p.msg)
		}
		if err != nil {
			return fmt.Errorf("publishing %q: %w", p.msg.Header.Get(consumer.HeaderID), err)
		}
		if ack.Duplicate {
			st.Duplicates++
			log.Warn("duplicate id not stored again", zap.String("id", p.msg.Header.Get(consumer.HeaderID)))
		} else {
			st.Stored++
			st.Residues += int64(len(p.msg.Data))
		}
		bar.Add(1)
		return nil
	}
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if !fasta.Recoverable(err) {
				return st, err
			}
			st.Records++
			if err := deadLetterParseError(ctx, js, model, path, err); err != nil {
				return st, err
			}
			st.DeadLettered++
			log.Warn("FASTA record dead-lettered", zap.Error(err))
			bar.Add(1)
			continue
		}
		st.Records++
		m := nats.NewMsg(consumer.Subject(model))
		m.Header.Set(consumer.HeaderID, rec.ID)
		m.Header.Set(nats.MsgIdHdr, model+":"+rec.ID)
		m.Data = append([]byte(nil), rec.Seq...)
		fut, err := js.PublishMsgAsync(m)
		if err != nil {
			return st, fmt.Errorf("publishing %q: %w", rec.ID, err)
		}
		window = append(window, pending{m, fut})
		if len(window) >= publishWindow {
			if err := settle(window[0]); err != nil {
				return st, err
			}
			window = window[1:]
		}
	}
	for _, p := range window {
		if err := settle(p); err != nil {
			return st, err
		}
	}
	return st, nil
}

// deadLetterParseError puts a record the FASTA reader could not return (no id, too large) on the
// dead-letter subject, so it is accounted for like any other bad record.
func deadLetterParseError(ctx context.Context, js jetstream.JetStream, model, path string, perr error) error {
	var pe *fasta.ParseError
	if !errors.As(perr, &pe) {
		return perr
	}
	reason := consumer.ReasonTooLarge
	if errors.Is(perr, fasta.ErrEmptyID) {
		reason = consumer.ReasonMissingID
	}
	m := nats.NewMsg(consumer.DLQSubject(model))
	if pe.ID != "" {
		m.Header.Set(consumer.HeaderID, pe.ID)
	}
	m.Header.Set(consumer.HeaderError, fmt.Sprintf("%s line %d: %v", path, pe.Line, perr))
	m.Header.Set(consumer.HeaderReason, reason)
	m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq:%s:%s:%d", model, path, pe.Line))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("dead-lettering %s line %d: %w", path, pe.Line, err)
	}
	return nil
}

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
	st, err := publishFASTA(ctx, nc, fs.Arg(0), *model, bar, log)
	fmt.Fprintf(os.Stderr, "published %d records (%d stored, %d duplicate ids, %d dead-lettered) in %s\n",
		st.Records, st.Stored, st.Duplicates, st.DeadLettered, time.Since(start).Round(time.Millisecond))
	return err
}
