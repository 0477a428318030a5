package arrowout

import "github.com/nats-io/nats.go/jetstream"

// JetStream is the stream configuration EnsureStream creates for c, for callers that create or
// compare the stream themselves (`seqembed streams` changes only what its flags name).
func (c StreamConfig) JetStream() (jetstream.StreamConfig, error) { return c.jetstreamConfig() }
