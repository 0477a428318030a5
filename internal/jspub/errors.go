package jspub

import "errors"

// Sentinel errors. Every error of this package wraps one of them (test with errors.Is), names the
// message concerned by its subject and Nats-Msg-Id, and wraps the cause.
var (
	// ErrOption reports an invalid argument of New or an invalid option value.
	ErrOption = errors.New("jspub: invalid option")

	// ErrMessage reports a message Publish refuses: nil, with a reply subject set (JetStream
	// async publishes use their own), or without a Nats-Msg-Id header (a republish could then
	// store it twice). Nothing was sent.
	ErrMessage = errors.New("jspub: invalid message")

	// ErrPublish reports that a message has no PubAck: its republishes failed (the retry
	// policy's tries ran out, or the error was not retryable) or ctx ended first. The message
	// may or may not be stored; publishing it again is safe (its Nats-Msg-Id makes a stored copy
	// a duplicate). The cause is wrapped: context.Canceled, context.DeadlineExceeded,
	// retry.ErrExhausted with the last error, or the error that was not retryable.
	ErrPublish = errors.New("jspub: publish failed")
)
