// Package natsconn holds what the packages that publish or pull share about the connection's
// state: waiting for it to be connected, honouring ctx; the largest message it can have stored; which
// errors refuse a message for its size.
package natsconn

import (
	"context"
	"errors"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AwaitConnected returns nil once nc is connected (at once if it is, or nc is nil),
// nats.ErrConnectionClosed if it is closed, or ctx's error. Publishing or pulling only while
// connected keeps nats.go from buffering messages for a reconnect (a buffered message larger than
// the restarted server's max_payload closes the connection for good).
func AwaitConnected(ctx context.Context, nc *nats.Conn) error {
	if nc == nil || nc.IsConnected() {
		return nil
	}
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for {
		switch {
		case nc.IsConnected():
			return nil
		case nc.IsClosed():
			return nats.ErrConnectionClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// FallbackMaxPayload is assumed while a connection reports no max_payload (never connected): the
// nats-server default.
const FallbackMaxPayload = 1 << 20

// FileStoreMaxMsg is the largest record JetStream's file store keeps (nats-server's filestore
// refuses a message, subject and headers included, over 32 MiB with "message too large", whatever
// max_payload allows: a 64 MiB max_payload still stores at most 32 MiB per message).
const FileStoreMaxMsg = 32 << 20

// MaxPayloadCeiling is the largest max_payload nats-server accepts (64 MiB).
const MaxPayloadCeiling = 64 << 20

// LargestIn is the largest message a stream of cfg can hold: its max_msg_size when set, at most
// FileStoreMaxMsg for a file-backed stream and MaxPayloadCeiling for any. A consumer that pulls with
// a byte bound per request must allow at least this (plus the subject and reply), or a message
// larger than a request is never delivered.
func LargestIn(cfg jetstream.StreamConfig) int {
	n := MaxPayloadCeiling
	if cfg.Storage == jetstream.FileStorage {
		n = FileStoreMaxMsg
	}
	if cfg.MaxMsgSize > 0 {
		n = min(n, int(cfg.MaxMsgSize))
	}
	return n
}

// MaxStored is the largest message nc can have stored in a file-backed stream now: the server's
// max_payload from its last INFO (FallbackMaxPayload while it reports none), at most
// FileStoreMaxMsg.
func MaxStored(nc *nats.Conn) int {
	n := FallbackMaxPayload
	if nc != nil {
		if m := int(nc.MaxPayload()); m > 0 {
			n = m
		}
	}
	return min(n, FileStoreMaxMsg)
}

// TooLarge reports whether err refuses a message for its size: the client's (nats.ErrMaxPayload:
// the connection's max_payload changed after the message was sized), the stream's max_msg_size, or
// the file store's record limit (FileStoreMaxMsg).
func TooLarge(err error) bool {
	var apiErr *jetstream.APIError
	if errors.Is(err, nats.ErrMaxPayload) {
		return true
	}
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum ||
		(apiErr.ErrorCode == jsErrCodeStreamStoreFailed && strings.Contains(apiErr.Description, "message too large"))
}

// jsErrCodeStreamStoreFailed is nats-server's JSStreamStoreFailedF (10077), the code of the file
// store's "message too large"; nats.go names no constant for it.
const jsErrCodeStreamStoreFailed jetstream.ErrorCode = 10077
