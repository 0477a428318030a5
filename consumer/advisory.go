package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/internal/retry"
)

// maxDeliveriesPrefix is the subject prefix of the server's max-deliveries advisories; the full
// subject is <prefix><stream>.<consumer>.
const maxDeliveriesPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// MaxDeliveriesSubject is the subject on which the server announces that a record of stream has
// exhausted MaxDeliver on consumer.
func MaxDeliveriesSubject(stream, consumer string) string {
	return maxDeliveriesPrefix + stream + "." + consumer
}

// advisoryBuffer is the capacity of the hand-off between the NATS callback and the worker
// goroutine of a watcher.
const advisoryBuffer = 1024

// dlqCopyRetry is how the dead-letter copy of a max-delivered record is retried: 3 tries in all,
// waiting 250 ms then 500 ms (a leader election or a brief outage of the stream is ridden out; a
// stream that stays full is not, and the original stays in place for a later advisory or a call
// of DeadLetterMaxDelivered), each try bounded by 5 s (the JetStream API's default timeout).
// Every error is retried: the copy's Nats-Msg-Id makes a repeat of a stored copy a duplicate.
var dlqCopyRetry = retry.Policy{Initial: 250 * time.Millisecond, Max: 500 * time.Millisecond, Tries: 3, PerTry: 5 * time.Second}

// maxDeliveriesAdvisory is the part of io.nats.jetstream.advisory.v1.max_deliver that is used.
type maxDeliveriesAdvisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// AdvisoryHandle is a running max-deliveries watcher (see WatchMaxDeliveries).
type AdvisoryHandle struct {
	sub  *nats.Subscription
	ch   chan maxDeliveriesAdvisory
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Stop unsubscribes; advisories already queued are still processed (with the watcher's ctx), then
// Done is closed. It does not wait: see Done. Cancelling the watcher's ctx instead abandons the
// queued advisories.
func (h *AdvisoryHandle) Stop() {
	h.once.Do(func() {
		_ = h.sub.Unsubscribe()
		close(h.stop)
	})
}

// Done is closed when the watcher's goroutine has ended.
func (h *AdvisoryHandle) Done() <-chan struct{} { return h.done }

// WatchMaxDeliveries dead-letters the records of this consumer's model that exhaust MaxDeliver.
//
// The server announces such a record with an advisory on MaxDeliveriesSubject; on the work-queue
// stream the record itself stays (it was never acked), no longer delivered to anyone. For each
// advisory the watcher runs DeadLetterMaxDelivered: the record is read back by stream sequence,
// copied to DLQSubject(model) with reason ReasonMaxDeliveries, and only after the PubAck deleted
// from the work queue. The copy is sized to the connection's current max_payload (the body cut
// to a prefix where needed, see DeadLetterMsg). If the copy fails (stream full or unreachable)
// the original is left in place and the failure is logged; if no copy can be stored at any size
// the original is deleted anyway and counted as dropped (ErrDropped).
//
// Any number of workers may run a watcher at once: every watcher sees every advisory, the copy's
// Nats-Msg-Id ("dlq:<model>:<seq>", the scheme of DeadLetterMsg) makes the second copy a duplicate
// that the stream drops, and deleting an already-deleted original counts as success.
//
// The NATS callback only hands advisories to the watcher's goroutine through a channel of 1024.
// When that is full the callback blocks (until there is room, Stop, or ctx is cancelled); it runs
// on the subscription's own goroutine, so the connection keeps reading and further advisories
// queue in the client up to the subscription's pending limits (nats.go defaults: 512Ki messages,
// 64 MiB), past which the client drops them as a slow consumer and logs nothing here.
//
// Advisories are core NATS messages and are not stored: a record that exhausts MaxDeliver while
// no watcher runs stays in the stream undelivered until DeadLetterMaxDelivered is called for it.
//
// The stream must exist (Setup). Cancelling ctx acts as Stop but abandons queued advisories.
func (c *Consumer) WatchMaxDeliveries(ctx context.Context) (*AdvisoryHandle, error) {
	stream, err := c.js.Stream(ctx, c.opts.stream)
	if err != nil {
		return nil, fmt.Errorf("%w: stream %s for the max-deliveries watcher: %w", ErrSetup, c.opts.stream, err)
	}
	nc := c.js.Conn()
	subject := MaxDeliveriesSubject(c.opts.stream, Durable(c.model))
	h := &AdvisoryHandle{
		ch:   make(chan maxDeliveriesAdvisory, advisoryBuffer),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	log := c.opts.log.With(zap.String("advisory", subject))
	h.sub, err = nc.Subscribe(subject, func(m *nats.Msg) {
		var a maxDeliveriesAdvisory
		if err := json.Unmarshal(m.Data, &a); err != nil || a.StreamSeq == 0 {
			log.Error("unreadable max-deliveries advisory", zap.ByteString("data", m.Data), zap.Error(err))
			return
		}
		select {
		case h.ch <- a:
			return
		default:
		}
		log.Warn("max-deliveries queue full; waiting", zap.Int("queued", len(h.ch)), zap.Uint64("stream_seq", a.StreamSeq))
		select {
		case h.ch <- a:
		case <-h.stop:
			log.Error("max-deliveries advisory dropped by Stop; record stays in the stream", zap.Uint64("stream_seq", a.StreamSeq))
		case <-ctx.Done():
			log.Error("max-deliveries advisory dropped by cancel; record stays in the stream", zap.Uint64("stream_seq", a.StreamSeq))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("%w: subscribing to %s: %w", ErrSetup, subject, err)
	}
	// The subscription must be known to the server before an advisory can reach it.
	fctx, cancel := context.WithTimeout(ctx, ackFlushTimeout)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		_ = h.sub.Unsubscribe()
		return nil, fmt.Errorf("%w: subscribing to %s: flush: %w", ErrSetup, subject, err)
	}
	go func() {
		select {
		case <-ctx.Done():
			h.Stop()
		case <-h.stop:
		}
	}()
	go c.watch(ctx, h, stream, log)
	return h, nil
}

func (c *Consumer) watch(ctx context.Context, h *AdvisoryHandle, stream jetstream.Stream, log *zap.Logger) {
	defer close(h.done)
	handle := func(a maxDeliveriesAdvisory) {
		if err := c.deadLetterSeq(ctx, stream, a.StreamSeq, a.Deliveries); err != nil {
			log.Error("max-deliveries dead-letter", zap.Error(err))
		}
	}
	for {
		select {
		case <-ctx.Done():
			if n := len(h.ch); n > 0 {
				log.Error("max-deliveries advisories abandoned by cancel; records stay in the stream", zap.Int("n", n))
			}
			return
		case a := <-h.ch:
			handle(a)
		case <-h.stop:
			for {
				select {
				case a := <-h.ch:
					if ctx.Err() != nil {
						return
					}
					handle(a)
				default:
					return
				}
			}
		}
	}
}

// DeadLetterMaxDelivered dead-letters the record at stream sequence seq that was delivered
// deliveries times without success: it is read back from the stream, copied to DLQSubject(model)
// with headers Seqembed-Error, Seqembed-Reason (ReasonMaxDeliveries), Seqembed-Stream-Seq and
// Nats-Msg-Id "dlq:<model>:<seq>" (the original's other headers, Seq-Id included, are kept, except
// Nats-*), and after the PubAck deleted from the stream. A record that is already gone (dead-lettered
// by another worker, or acked late) is success. The copy is sized to the connection's current
// max_payload, cut where needed as DeadLetterMsg does. It is tried 3 times, 250 ms then 500 ms
// apart; if it still fails the original stays and the error (ErrDeadLetter) is returned. If no
// copy can be stored at any size (ErrCopyUnfit), the original is deleted anyway, counted by
// Observer.Dropped and logged, and the error wraps ErrDropped. The Observer counts only a copy
// the stream stored (not duplicates).
func (c *Consumer) DeadLetterMaxDelivered(ctx context.Context, seq, deliveries uint64) error {
	stream, err := c.js.Stream(ctx, c.opts.stream)
	if err != nil {
		return fmt.Errorf("%w: stream %s, stream seq %d: %w", ErrAdvisory, c.opts.stream, seq, err)
	}
	return c.deadLetterSeq(ctx, stream, seq, deliveries)
}

func (c *Consumer) deadLetterSeq(ctx context.Context, stream jetstream.Stream, seq, deliveries uint64) error {
	log := c.opts.log
	raw, err := stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		log.Debug("max-delivered record already gone", zap.Uint64("stream_seq", seq))
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: reading stream seq %d of %s: %w", ErrAdvisory, seq, c.opts.stream, err)
	}
	id := headerGet(raw.Header, HeaderID)
	job := JobOf(c.model, raw.Subject)
	if raw.Subject != JobSubject(c.model, job) || (job != "" && CheckJob(job) != nil) {
		return fmt.Errorf("%w: stream seq %d (record %q) is on %s, not %s or a job's subject under it: left alone",
			ErrAdvisory, seq, id, raw.Subject, Subject(c.model))
	}
	msgErr := fmt.Sprintf("delivered %d times without success (max deliver %d)", deliveries, c.opts.maxDeliver)

	var ack *jetstream.PubAck
	var fit copyFit
	pol := dlqCopyRetry
	pol.Retryable = func(err error) bool { return !errors.Is(err, ErrCopyUnfit) }
	pol.OnRetry = func(try int, err error, wait time.Duration) {
		log.Warn("max-deliveries dead-letter copy; retrying", zap.String("id", id), zap.Uint64("stream_seq", seq),
			zap.Int("try", try), zap.Duration("wait", wait), zap.Error(err))
	}
	err = retry.Do(ctx, pol, func(ctx context.Context) (err error) {
		ack, fit, err = storeCopy(ctx, c.js, JobDLQSubject(c.model, job), c.model, raw.Data, raw.Header, ReasonMaxDeliveries, msgErr, seq)
		return err
	})
	if errors.Is(err, ErrCopyUnfit) {
		// No copy can be stored: the record is deleted anyway (it would otherwise stay in the work
		// queue for ever, never delivered again) and counted; only the log keeps it.
		derr := stream.DeleteMsg(ctx, seq)
		if derr != nil && !gone(ctx, stream, seq, derr) {
			return fmt.Errorf("%w: record %q at stream seq %d, which has no dead-letter copy (%w): %w", ErrDelete, id, seq, err, derr)
		}
		if derr == nil { // another watcher's delete is its count
			c.opts.obs.Dropped(ReasonMaxDeliveries)
			log.Error("max-delivered record deleted without a dead-letter copy: none fits", zap.String("id", id),
				zap.Uint64("stream_seq", seq), zap.Int("body_bytes", fit.bodyLen), zap.Int("limit", fit.limit),
				zap.String("error", msgErr), zap.NamedError("copy_error", err))
		}
		return fmt.Errorf("%w: record %q at stream seq %d (%s): %w", ErrDropped, id, seq, ReasonMaxDeliveries, err)
	}
	if err != nil {
		return fmt.Errorf("%w: record %q at stream seq %d (%s), original left in the stream: %w",
			ErrDeadLetter, id, seq, ReasonMaxDeliveries, err)
	}
	if !ack.Duplicate {
		c.opts.obs.DeadLettered(ReasonMaxDeliveries)
		logCut(log, id, seq, fit)
		log.Info("dead-lettered", zap.String("id", id), zap.Uint64("stream_seq", seq),
			zap.String("reason", ReasonMaxDeliveries), zap.String("error", msgErr))
	} else {
		log.Debug("max-deliveries dead-letter copy was a duplicate", zap.String("id", id), zap.Uint64("stream_seq", seq))
	}
	if err := stream.DeleteMsg(ctx, seq); err != nil && !gone(ctx, stream, seq, err) {
		return fmt.Errorf("%w: record %q at stream seq %d (copy at DLQ seq %d): %w", ErrDelete, id, seq, ack.Sequence, err)
	}
	return nil
}

// gone reports whether a failed DeleteMsg of seq failed because the message is already deleted.
func gone(ctx context.Context, stream jetstream.Stream, seq uint64, err error) bool {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	s := err.Error()
	if strings.Contains(s, "no message found") || strings.Contains(s, "deleted message") ||
		strings.Contains(s, fmt.Sprintf("sequence %d not found", seq)) {
		return true
	}
	_, gerr := stream.GetMsg(ctx, seq)
	return errors.Is(gerr, jetstream.ErrMsgNotFound)
}
