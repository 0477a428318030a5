// Package ingest puts FASTA files on the work queue: one record per sequence on
// seqs.in.<model> (consumer's subject and headers), records the FASTA reader rejects on the
// dead-letter subject with the reason, so every record of a file is accounted for.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/consumer"
	"github.com/seqembed/seqembed/fasta"
	"github.com/seqembed/seqembed/internal/jspub"
	"github.com/seqembed/seqembed/internal/retry"
	"github.com/seqembed/seqembed/telemetry"
)

// Stats counts what a FASTA publish did.
type Stats struct {
	Records      int   // records read from the file
	Stored       int   // new messages stored by the input stream
	Duplicates   int   // records whose id was already published within the dedupe window
	DeadLettered int   // records the file itself could not give (no id, too large): dead-lettered here
	Residues     int64 // residues in stored records
}

// Window is how many PubAcks may be outstanding.
const Window = 1024

// publishRetry is how a record whose PubAck failed is republished (same Nats-Msg-Id, so one
// stored already is deduplicated): with backoff from 100 ms to 5 s for as long as it takes —
// while the input stream is full, say — until ctx ends (the user interrupts).
var publishRetry = retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// RecordMsg is one input record for model: the residues as the body, the id in Seq-Id and a
// Nats-Msg-Id of "<model>:<id>", so that a re-run (or a repeated id) within the stream's dedupe
// window is not stored twice.
func RecordMsg(model, id string, residues []byte) *nats.Msg {
	m := nats.NewMsg(consumer.Subject(model))
	m.Header.Set(consumer.HeaderID, id)
	m.Header.Set(nats.MsgIdHdr, model+":"+id)
	m.Data = residues
	return m
}

// PublishFASTA publishes every record of path to seqs.in.<model> (RecordMsg), up to Window
// PubAcks outstanding. Records the FASTA reader rejects are dead-lettered with the reason.
func PublishFASTA(ctx context.Context, nc *nats.Conn, path, model string, progress io.Writer, log *zap.Logger) (Stats, error) {
	var st Stats
	js, err := jetstream.New(nc)
	if err != nil {
		return st, fmt.Errorf("ingest: JetStream: %w", err)
	}
	total := int64(-1)
	if n, err := fasta.Count(path); err == nil {
		total = int64(n)
	}
	bar := telemetry.NewProgress(total, "publish", progress, progress != nil)
	defer bar.Finish()
	retries := 0
	pub, err := jspub.New(nc, jspub.WithWindow(Window), jspub.WithAckTimeout(30*time.Second), jspub.WithRetry(publishRetry),
		jspub.WithOnRetry(func(m *nats.Msg, err error) {
			if retries++; retries == 1 || retries%100 == 0 {
				log.Warn("publish retry (the input stream may be full; waiting)", zap.String("id", m.Header.Get(consumer.HeaderID)),
					zap.Int("retries", retries), zap.Error(err))
			}
		}),
		jspub.WithOnAck(func(a jspub.Ack) {
			// A duplicate PubAck on a republish (Tries > 1) is most likely this record's own
			// earlier try, stored before its PubAck was lost: count it stored.
			if a.PubAck.Duplicate && a.Tries == 1 {
				st.Duplicates++
			} else {
				st.Stored++
				st.Residues += int64(len(a.Msg.Data))
			}
			bar.Add(1)
		}))
	if err != nil {
		return st, fmt.Errorf("ingest: %w", err)
	}
	defer pub.Close()
	r, closer, err := fasta.Open(path)
	if err != nil {
		return st, err
	}
	defer closer.Close()
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
		if err := pub.Publish(ctx, RecordMsg(model, rec.ID, append([]byte(nil), rec.Seq...))); err != nil {
			return st, fmt.Errorf("publishing %s record %q: %w", path, rec.ID, err)
		}
	}
	if err := pub.Flush(ctx); err != nil {
		return st, fmt.Errorf("publishing %s: %w", path, err)
	}
	if st.Duplicates > 0 {
		log.Warn("duplicate ids not stored again", zap.String("file", path), zap.Int("records", st.Duplicates))
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
