// Package ingest puts FASTA files on the work queue: one record per sequence on
// seqs.in.<model> (consumer's subject and headers: the id, the description, the record's index in
// the inputs), a trailing stop codon stripped (and the record flagged, HeaderStopStripped) or
// refused; records refused here (the FASTA reader's, or
// a stop codon under StopReject) go on the dead-letter subject with the reason, and to a rejects
// file (RejectsFile) if the caller keeps one, so every record of a file is accounted for.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
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
	Files        int   // input files read
	Records      int   // records read from the files
	FileRecords  []int // records read from each file, in order (a record's Seq-Index counts across them)
	Stored       int   // new messages stored by the input stream
	Duplicates   int   // records whose id and sequence (a refused record: file, line and id) were already published within the dedupe window
	DeadLettered int   // records refused here (no id, too large, a stop codon under StopReject): dead-lettered here
	StopStripped int   // records published without their trailing stop codon (StopStrip)
	Residues     int64 // residues in stored records
	// Reasons counts the records dead-lettered here by reason code (consumer.Reason*).
	Reasons map[string]int
	// IDConflicts counts the records published although an earlier record of this Publish had
	// the same id with another sequence: both are stored and embedded, and the sinks keep both
	// rows. Conflicts with the records of an earlier Publish are for the sinks to find.
	IDConflicts int
	// ConflictExamples names up to 5 of the ids of IDConflicts.
	ConflictExamples []string
}

// Window is how many PubAcks may be outstanding.
const Window = 1024

// publishRetry is how a record whose PubAck failed is republished (same Nats-Msg-Id, so one
// stored already is deduplicated): with backoff from 100 ms to 5 s for as long as it takes —
// while the input stream is full, say — until ctx ends (the user interrupts).
var publishRetry = retry.Policy{Initial: 100 * time.Millisecond, Max: 5 * time.Second}

// CheckStream fails with ErrNoStream when no stream captures the subject of model's job
// (consumer.JobSubject): a publish would otherwise wait for ever for PubAcks that never come.
func CheckStream(ctx context.Context, js jetstream.JetStream, model, job string) error {
	subject := consumer.JobSubject(model, job)
	if _, err := js.StreamNameBySubject(ctx, subject); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("%w: no stream captures %s: start a worker for model %s or run `seqembed streams --name %s` first",
				ErrNoStream, subject, model, model)
		}
		return fmt.Errorf("ingest: looking up the stream of %s: %w", subject, err)
	}
	return nil
}

// RecordMsg is one input record for model: the residues as the body, the id in Seq-Id and a
// Nats-Msg-Id of "<model>:<id>:<h>", h the first MsgIDHashHex hex digits of the residues'
// SHA-256 (consumer.SeqSHA256), so that a re-run (or the same record twice) within the stream's
// dedupe window is not stored twice, while another sequence under a reused id is.
func RecordMsg(model, id string, residues []byte) *nats.Msg {
	return recordMsg(model, "", id, residues, consumer.SeqSHA256(residues))
}

// recordMsg is RecordMsg for residues whose SeqSHA256 is sha, in job (consumer.JobSubject; ""
// = none): a job's records have the Nats-Msg-Id "<model>.<job>:<id>:<h>", so that the same file
// published as two jobs is stored (and embedded) for each.
func recordMsg(model, job, id string, residues []byte, sha string) *nats.Msg {
	m := nats.NewMsg(consumer.JobSubject(model, job))
	m.Header.Set(consumer.HeaderID, id)
	prefix := model
	if job != "" {
		prefix += "." + job
	}
	m.Header.Set(nats.MsgIdHdr, prefix+":"+id+":"+sha[:MsgIDHashHex])
	m.Data = residues
	return m
}

// MsgIDHashHex is how many hex digits of the sequence's SHA-256 a record's Nats-Msg-Id carries:
// 16 (64 bits), so two sequences under one id are mistaken for one another with a probability
// of about 2^-64, while the stream's dedupe table stays small.
const MsgIDHashHex = 16

// PublishFASTA publishes every record of path to seqs.in.<model> (RecordMsg), up to Window
// PubAcks outstanding; it is Publish of one file with the default options.
func PublishFASTA(ctx context.Context, nc *nats.Conn, path, model string, progress io.Writer, log *zap.Logger) (Stats, error) {
	return Publish(ctx, nc, []string{path}, Options{Model: model, Progress: progress, Log: log})
}

// Publish publishes every record of files, in order ("-" is standard input, at most once), to
// seqs.in.<model> (RecordMsg) with up to Window PubAcks outstanding, and returns once every one is
// stored. A trailing stop codon is stripped or refused (o.StopCodon). Records refused here (the
// FASTA reader's: no id, too large; a trailing '*' under StopReject) are dead-lettered with their
// reason and a message naming the file, line and (for a '*') 1-based position, and passed to
// o.OnReject with those as fields. Every file is checked to
// exist before anything is published; a file that cannot be read to its end (I/O error,
// truncated, not FASTA) stops the publish with an error naming it and the line.
func Publish(ctx context.Context, nc *nats.Conn, files []string, o Options) (Stats, error) {
	st := Stats{Reasons: map[string]int{}}
	if err := o.check(files); err != nil {
		return st, err
	}
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return st, fmt.Errorf("ingest: JetStream: %w", err)
	}
	if err := CheckStream(ctx, js, o.Model, o.Job); err != nil {
		return st, err
	}
	total := int64(0)
	for _, f := range files {
		if !Rereadable(f) { // counting would consume it
			total = -1
			break
		}
		n, err := fasta.Count(f)
		if err != nil {
			total = -1 // unreadable: Next reports it
			break
		}
		total += int64(n)
	}
	bar := telemetry.NewProgress(total, "publish", o.Progress, o.Progress != nil)
	defer bar.Finish()
	retries := 0
	var dupIDs []string
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
				if st.Duplicates++; len(dupIDs) < maxExamples {
					dupIDs = append(dupIDs, a.Msg.Header.Get(consumer.HeaderID))
				}
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
	p := publisher{js: js, pub: pub, o: o, st: &st, bar: bar, log: log, seen: map[string]uint64{}, others: map[string][]uint64{}}
	for _, f := range files {
		before := st.Records
		err := p.file(ctx, f)
		st.FileRecords = append(st.FileRecords, st.Records-before)
		if err != nil {
			return st, err
		}
		st.Files++
	}
	if err := pub.Flush(ctx); err != nil {
		return st, fmt.Errorf("ingest: publishing: %w", err)
	}
	if st.Duplicates > 0 {
		// One line for all of them: a file of repeated records must not print a line per record.
		log.Warn("duplicate records (same id and sequence) not stored again", zap.Int("records", st.Duplicates),
			zap.Strings("examples", dupIDs))
	}
	if st.IDConflicts > 0 {
		log.Warn("ids reused with another sequence: every sequence is published and embedded", zap.Int("records", st.IDConflicts),
			zap.Strings("examples", st.ConflictExamples))
	}
	return st, nil
}

// maxExamples bounds the example ids a summary log line names.
const maxExamples = 5

// publisher publishes the files of one Publish.
type publisher struct {
	js  jetstream.JetStream
	pub *jspub.Publisher
	o   Options
	st  *Stats
	bar *telemetry.Progress
	log *zap.Logger
	// seen maps each id published so far to 64 bits of its first sequence's SHA-256, to count
	// the ids reused with another sequence (Stats.IDConflicts).
	seen   map[string]uint64
	others map[string][]uint64 // the further sequences of the ids in conflict
}

// file publishes the records of one file.
func (p *publisher) file(ctx context.Context, path string) error {
	r, closer, err := fasta.Open(path)
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	defer closer.Close()
	name := fasta.DisplayName(path)
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		// The record's index: its position among every record of the inputs so far, refused
		// ones included (so that it is the position in the files).
		index := int64(p.st.Records)
		if err != nil {
			if !fasta.Recoverable(err) {
				return fmt.Errorf("ingest: %w", err)
			}
			p.st.Records++
			if err := p.reject(ctx, parseReject(name, err), nil); err != nil {
				return err
			}
			continue
		}
		p.st.Records++
		seq := rec.Seq
		stripped := false
		if n := len(seq); n > 0 && seq[n-1] == '*' {
			if p.o.StopCodon == StopReject {
				rej := Reject{ID: rec.ID, Reason: consumer.ReasonInvalid, File: name, Line: rec.Line, Position: n,
					Message: fmt.Sprintf("ingest: %s line %d (record %q): stop codon '*' at position %d, the last residue "+
						"(--stop-codon reject; strip, the default, removes one trailing '*')", name, rec.Line, rec.ID, n)}
				if err := p.reject(ctx, rej, seq); err != nil {
					return err
				}
				continue
			}
			seq, stripped = seq[:n-1], true
		}
		sha := consumer.SeqSHA256(seq)
		m := recordMsg(p.o.Model, p.o.Job, rec.ID, append([]byte(nil), seq...), sha)
		if desc := consumer.CleanDescription(rec.Desc); desc != "" {
			m.Header.Set(consumer.HeaderDescription, desc)
		}
		m.Header.Set(consumer.HeaderIndex, strconv.FormatInt(index, 10))
		if stripped {
			m.Header.Set(HeaderStopStripped, "1")
			p.st.StopStripped++
		}
		p.conflicts(rec.ID, sha)
		if err := p.pub.Publish(ctx, m); err != nil {
			return fmt.Errorf("ingest: publishing %s line %d record %q: %w", name, rec.Line, rec.ID, err)
		}
	}
}

// conflicts counts a record of id and sequence hash sha (hex) as an id conflict
// (Stats.IDConflicts) when id was published before, in this Publish, with another sequence.
func (p *publisher) conflicts(id, sha string) {
	h, _ := strconv.ParseUint(sha[:16], 16, 64)
	first, ok := p.seen[id]
	switch {
	case !ok:
		p.seen[id] = h
		return
	case first == h || slices.Contains(p.others[id], h): // the same record again: a duplicate
		return
	}
	p.others[id] = append(p.others[id], h)
	if p.st.IDConflicts++; len(p.st.ConflictExamples) < maxExamples && !slices.Contains(p.st.ConflictExamples, id) {
		p.st.ConflictExamples = append(p.st.ConflictExamples, id)
	}
}

// parseReject is the Reject for a recoverable FASTA error (no id, too large) in file.
func parseReject(file string, err error) Reject {
	rej := Reject{Reason: consumer.ReasonTooLarge, Message: err.Error(), File: file}
	if errors.Is(err, fasta.ErrEmptyID) {
		rej.Reason = consumer.ReasonMissingID
	}
	var pe *fasta.ParseError
	if errors.As(err, &pe) {
		rej.ID, rej.Line = pe.ID, pe.Line
	}
	return rej
}

// reject dead-letters a record refused here (body: its residues, if any were read) and reports
// it to OnReject.
func (p *publisher) reject(ctx context.Context, rej Reject, body []byte) error {
	dup, err := deadLetter(ctx, p.js, p.o.Model, p.o.Job, rej, body)
	if err != nil {
		return err
	}
	p.bar.Add(1)
	if dup { // the same file and line refused before (the file given twice, or a re-run)
		p.st.Duplicates++
		return nil
	}
	p.st.DeadLettered++
	p.st.Reasons[rej.Reason]++
	p.log.Debug("record refused at publish time and dead-lettered", zap.String("reason", rej.Reason), zap.String("error", rej.Message))
	if p.o.OnReject != nil {
		if err := p.o.OnReject(rej); err != nil {
			return fmt.Errorf("ingest: %w", err)
		}
	}
	return nil
}

// maxDeadLetterBody is the most of a refused record's residues its dead-letter copy carries; a
// longer body is cut, with consumer.HeaderBodyTruncated holding its length (consumer's
// convention), so that the copy fits any server's max_payload.
const maxDeadLetterBody = 64 << 10

// deadLetter puts a record refused here on the dead-letter subject with the reason and message,
// so it is accounted for like any other bad record. Its Nats-Msg-Id derives from the file, line
// and id: publishing the same file again does not store it twice (dup reports that).
func deadLetter(ctx context.Context, js jetstream.JetStream, model, job string, rej Reject, body []byte) (dup bool, err error) {
	m := nats.NewMsg(consumer.JobDLQSubject(model, job))
	if rej.ID != "" {
		m.Header.Set(consumer.HeaderID, rej.ID)
	}
	m.Header.Set(consumer.HeaderError, rej.Message)
	m.Header.Set(consumer.HeaderReason, rej.Reason)
	m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq:%s:%s:%s:%d:%s", model, job, rej.File, rej.Line, rej.ID))
	if len(body) > maxDeadLetterBody {
		m.Header.Set(consumer.HeaderBodyTruncated, strconv.Itoa(len(body)))
		body = body[:maxDeadLetterBody]
	}
	m.Data = append([]byte(nil), body...)
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		return false, fmt.Errorf("ingest: dead-lettering %s line %d: %w", rej.File, rej.Line, err)
	}
	return ack.Duplicate, nil
}
