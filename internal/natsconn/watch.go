package natsconn

import (
	"errors"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Events are what a watched connection reports besides its log lines; nil fields are skipped.
type Events struct {
	Down         func()               // disconnected or closed
	Up           func()               // reconnected
	SlowConsumer func(subject string) // a subscription dropped messages (client-side slow consumer)
}

// Watched are the options seqembed's long-lived connections dial with: the connection's name,
// reconnects for ever, and every disconnect (with its cause; a clean close at Debug), reconnect
// and asynchronous error logged with the connection's name and reported to ev. They replace
// nats.go's own logging of asynchronous errors.
func Watched(name string, log *zap.Logger, ev Events) []nats.Option {
	call := func(f func()) {
		if f != nil {
			f()
		}
	}
	return []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			call(ev.Down)
			if err == nil { // a clean close (drain at exit): not worth a warning
				log.Debug("nats disconnected", zap.String("conn", name))
				return
			}
			log.Warn("nats disconnected", zap.String("conn", name), zap.Error(err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			call(ev.Up)
			log.Info("nats reconnected", zap.String("conn", name), zap.String("url", nc.ConnectedUrlRedacted()))
		}),
		nats.ClosedHandler(func(*nats.Conn) { call(ev.Down) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if errors.Is(err, nats.ErrSlowConsumer) && ev.SlowConsumer != nil {
				ev.SlowConsumer(subject)
			}
			log.Warn("nats asynchronous error", zap.String("conn", name), zap.String("subject", subject), zap.Error(err))
		}),
	}
}
