// Package natsconn holds what the packages that publish or pull share about the connection's
// state: waiting for it to be connected, honouring ctx.
package natsconn

import (
	"context"

	"github.com/nats-io/nats.go"
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
