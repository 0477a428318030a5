// Package jspub is seqembed's windowed asynchronous JetStream publisher: the one loop that keeps
// up to a window of PubAcks outstanding, settles them oldest first and republishes a message
// whose PubAck failed or timed out until it is stored.
//
// A message is republished as it is, with the same Nats-Msg-Id header (required), so one that
// was stored but whose PubAck was lost (a timeout, a disconnect, a leader change) is dropped by
// the stream's duplicate window and acknowledged as a duplicate: within that window nothing is
// stored twice and, until Flush returns nil, nothing accepted is lost.
//
//	p, err := jspub.New(nc, jspub.WithWindow(1024), jspub.WithOnAck(func(a jspub.Ack) { ... }))
//	for each message m {
//		if err := p.Publish(ctx, m); err != nil { ... }
//	}
//	if err := p.Flush(ctx); err != nil { ... }
//	p.Close()
package jspub

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/seqembed/seqembed/internal/retry"
)

// Defaults of the options.
const (
	// DefaultWindow is how many PubAcks may be outstanding (WithWindow).
	DefaultWindow = 1024
	// DefaultAckTimeout bounds the wait for one PubAck (WithAckTimeout).
	DefaultAckTimeout = 10 * time.Second
)

// DefaultRetry is the republish policy (WithRetry): 5 tries, waiting 100 ms, 200 ms, 400 ms and
// 800 ms between them (enough to ride out a reconnect or a stream leader election, about 1.5 s
// plus the tries themselves), each try bounded by the ack timeout.
var DefaultRetry = retry.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second, Tries: 5}

// Ack is what the OnAck callback gets for each stored message.
type Ack struct {
	// Msg is the message as given to Publish.
	Msg *nats.Msg
	// PubAck is the stream's acknowledgement. PubAck.Duplicate is true when the stream already
	// held a message with Msg's Nats-Msg-Id: published before (a repeated id), or, when Tries > 1,
	// possibly stored by an earlier try whose PubAck was lost.
	PubAck *jetstream.PubAck
	// Tries is how many times Msg was sent: 1 when its first, asynchronous publish was acked.
	Tries int
}

// Option configures a Publisher.
type Option func(*options) error

type options struct {
	window     int
	ackTimeout time.Duration
	policy     retry.Policy
	onAck      func(Ack)
	onRetry    func(m *nats.Msg, err error)
}

// WithWindow sets how many messages may await their PubAck at once (n >= 1); Publish blocks
// while that many are outstanding. Default DefaultWindow (1024).
func WithWindow(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("%w: WithWindow(%d): must be >= 1", ErrOption, n)
		}
		o.window = n
		return nil
	}
}

// WithAckTimeout bounds the wait for each PubAck (d > 0): an asynchronous publish unanswered
// for d fails (jetstream.ErrAsyncPublishTimeout) and is republished, so no wait can hang on a
// server that went away. It is also each republish try's timeout when the retry policy sets no
// PerTry. Default DefaultAckTimeout (10 s).
func WithAckTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: WithAckTimeout(%s): must be > 0", ErrOption, d)
		}
		o.ackTimeout = d
		return nil
	}
}

// WithRetry sets how a message whose PubAck failed is republished (synchronously, with the same
// Nats-Msg-Id): p.Tries republishes at most (0: until ctx ends), p.Initial doubling to p.Max
// between them, each bounded by p.PerTry (0: the ack timeout). p.Retryable may stop early on
// errors it rejects; errors no retry can help (connection closed, message over max_payload,
// invalid subject) stop at once regardless. p.OnRetry, if set, is called as retry.Do does.
// Durations and Tries must be >= 0. Default DefaultRetry.
func WithRetry(p retry.Policy) Option {
	return func(o *options) error {
		if p.Tries < 0 || p.Initial < 0 || p.Max < 0 || p.PerTry < 0 {
			return fmt.Errorf("%w: WithRetry: negative Tries, Initial, Max or PerTry in %+v", ErrOption, p)
		}
		o.policy = p
		return nil
	}
}

// WithOnAck sets the callback called once for each stored message (including duplicates), in
// the order the messages were given to Publish, on the goroutine calling Publish or Flush. It
// must not call the Publisher. Default: none.
func WithOnAck(fn func(Ack)) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithOnAck(nil)", ErrOption)
		}
		o.onAck = fn
		return nil
	}
}

// WithOnRetry sets the callback called before each republish of m with the error of the send
// that failed before it (to log it); each call counts one in Retries. It runs on the goroutine
// calling Publish or Flush and must not call the Publisher. Default: none.
func WithOnRetry(fn func(m *nats.Msg, err error)) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithOnRetry(nil)", ErrOption)
		}
		o.onRetry = fn
		return nil
	}
}

// pending is a message accepted by Publish and not yet acked.
type pending struct {
	msg   *nats.Msg
	fut   jetstream.PubAckFuture // nil once it failed: the message must be republished
	err   error                  // why the last send failed (fut == nil)
	tries int                    // sends so far
}

// Publisher publishes messages asynchronously with at most a window of PubAcks outstanding. It
// owns its JetStream context, made from the connection given to New with the window as its
// async pending limit and the ack timeout as its async publish timeout, so no other publisher
// can take its window and no future can wait forever.
//
// Publish and Flush must not be called concurrently (one producer); Retries and Pending may be
// read from any goroutine.
type Publisher struct {
	js   jetstream.JetStream
	opts options

	ring    []pending // the pending messages: a ring of opts.window slots
	head, n int       // the oldest one's slot, and how many there are
	npend   atomic.Int64
	retries atomic.Int64
}

// New returns a Publisher publishing through nc (required; its reconnect settings decide how
// long an outage it survives). Invalid arguments fail with ErrOption.
func New(nc *nats.Conn, opts ...Option) (*Publisher, error) {
	if nc == nil {
		return nil, fmt.Errorf("%w: nil connection", ErrOption)
	}
	o := options{window: DefaultWindow, ackTimeout: DefaultAckTimeout, policy: DefaultRetry}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(o.window),
		jetstream.WithPublishAsyncTimeout(o.ackTimeout))
	if err != nil {
		return nil, fmt.Errorf("%w: JetStream context (window %d, ack timeout %s): %w", ErrOption, o.window, o.ackTimeout, err)
	}
	return &Publisher{js: js, opts: o, ring: make([]pending, o.window)}, nil
}

// Publish sends m asynchronously and returns once it is accepted (awaiting its PubAck, or
// already stored); while the window is full it first settles the oldest outstanding message
// (waiting for its PubAck, republishing it if that failed). m must have a Nats-Msg-Id header and
// no reply subject (else ErrMessage), and must not be changed until it is acked.
//
// An accepted message stays pending until it is acked (OnAck): an error never drops one. If
// Publish returns an error, m was not accepted and the error, wrapping ErrPublish, names the
// message that failed (m, or an older one that stays pending and is tried again by the next
// Publish or Flush); publishing m again is safe. Publish honours ctx while it waits.
//
// When the asynchronous send itself fails (disconnected with the reconnect buffer full, too
// many pending), the oldest outstanding messages are settled first to make room; with none
// outstanding, m is sent synchronously under the retry policy.
func (p *Publisher) Publish(ctx context.Context, m *nats.Msg) error {
	if err := checkMsg(m); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %s not sent: %w", ErrPublish, describe(m), err)
	}
	for p.n == len(p.ring) {
		if err := p.settleOldest(ctx); err != nil {
			return err
		}
	}
	for {
		fut, err := p.js.PublishMsgAsync(m)
		if err == nil {
			p.ring[(p.head+p.n)%len(p.ring)] = pending{msg: m, fut: fut, tries: 1}
			p.n++
			p.npend.Add(1)
			return nil
		}
		if permanent(err) {
			return fmt.Errorf("%w: %s: %w", ErrPublish, describe(m), err)
		}
		if p.n == 0 {
			ack, tries, _, err := p.republish(ctx, m, 1, err)
			if err != nil {
				return err
			}
			p.acked(Ack{Msg: m, PubAck: ack, Tries: tries})
			return nil
		}
		if err := p.settleOldest(ctx); err != nil {
			return err
		}
	}
}

// Flush settles every pending message, oldest first: it returns nil once all have their
// PubAck, or the first error (wrapping ErrPublish, naming the message); the messages not
// settled stay pending, and Flush may be called again. It honours ctx.
func (p *Publisher) Flush(ctx context.Context) error {
	for p.n > 0 {
		if err := p.settleOldest(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Pending is the number of accepted messages without a PubAck yet (at most the window).
func (p *Publisher) Pending() int { return int(p.npend.Load()) }

// Retries is the number of republishes made so far: every send after a message's first.
func (p *Publisher) Retries() int { return int(p.retries.Load()) }

// Close releases the Publisher's reply subscription on the connection; call it once Flush has
// returned nil. Messages still pending are not lost: their futures fail, and a later Flush
// republishes them (a later Publish subscribes again).
func (p *Publisher) Close() { p.js.CleanupPublisher() }

// settleOldest waits for the oldest pending message's PubAck, republishing it if its future
// failed; it stays first in the queue (to be settled again) unless it is acked.
func (p *Publisher) settleOldest(ctx context.Context) error {
	head := &p.ring[p.head]
	if head.fut != nil {
		select {
		case ack := <-head.fut.Ok():
			p.done(Ack{Msg: head.msg, PubAck: ack, Tries: head.tries})
			return nil
		case err := <-head.fut.Err():
			head.fut, head.err = nil, err
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for the PubAck of %s (%d pending): %w", ErrPublish, describe(head.msg), p.n, ctx.Err())
		}
	}
	ack, tries, last, err := p.republish(ctx, head.msg, head.tries, head.err)
	head.tries, head.err = tries, last
	if err != nil {
		return err
	}
	p.done(Ack{Msg: head.msg, PubAck: ack, Tries: tries})
	return nil
}

// done removes the oldest pending message, acked with a, and reports a to OnAck.
func (p *Publisher) done(a Ack) {
	p.ring[p.head] = pending{}
	p.head = (p.head + 1) % len(p.ring)
	p.n--
	p.npend.Add(-1)
	p.acked(a)
}

func (p *Publisher) acked(a Ack) {
	if p.opts.onAck != nil {
		p.opts.onAck(a)
	}
}

// republish sends m synchronously under the retry policy after a send that failed with cause;
// tries is how many sends were made before. It returns the PubAck, the sends made in all, the
// error of the last failed send and, if no send succeeded, the error to return.
func (p *Publisher) republish(ctx context.Context, m *nats.Msg, tries int, cause error) (ack *jetstream.PubAck, sends int, last, err error) {
	pol := p.opts.policy
	if pol.PerTry <= 0 {
		pol.PerTry = p.opts.ackTimeout
	}
	retryable := pol.Retryable
	pol.Retryable = func(err error) bool { return !permanent(err) && (retryable == nil || retryable(err)) }
	sends, last = tries, cause
	err = retry.Do(ctx, pol, func(ctx context.Context) error {
		sends++
		p.retries.Add(1)
		if p.opts.onRetry != nil {
			p.opts.onRetry(m, last)
		}
		a, err := p.js.PublishMsg(ctx, m)
		if err != nil {
			last = err
			return err
		}
		ack = a
		return nil
	})
	if err != nil {
		return nil, sends, last, fmt.Errorf("%w: %s: no PubAck after %d sends (before the republishes: %v): %w",
			ErrPublish, describe(m), sends, cause, err)
	}
	return ack, sends, last, nil
}

// permanent reports errors no republish can help with.
func permanent(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrMaxPayload) ||
		errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrHeadersNotSupported)
}

func checkMsg(m *nats.Msg) error {
	switch {
	case m == nil:
		return fmt.Errorf("%w: nil message", ErrMessage)
	case m.Header.Get(jetstream.MsgIDHeader) == "":
		return fmt.Errorf("%w: message on %s has no %s header: a republish could store it twice", ErrMessage, m.Subject, jetstream.MsgIDHeader)
	case m.Reply != "":
		return fmt.Errorf("%w: %s has reply subject %q set", ErrMessage, describe(m), m.Reply)
	}
	return nil
}

// describe names m in errors: its Nats-Msg-Id and subject.
func describe(m *nats.Msg) string {
	return fmt.Sprintf("message %q on %s", m.Header.Get(jetstream.MsgIDHeader), m.Subject)
}
