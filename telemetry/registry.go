package telemetry

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns the registry a worker serves on /metrics: a fresh prometheus.Registry
// holding the Go runtime collector (go_goroutines, go_memstats_*, go_gc_*, ...) and the process
// collector (process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...; on
// platforms without /proc it reports nothing). Pass it to NewServer as the gatherer and to
// NewMetrics and NewConnMetrics as the registerer. Registration failures wrap ErrRegister.
func NewRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("%w: runtime collectors: %w", ErrRegister, err)
		}
	}
	return reg, nil
}

// Kinds of subscription that ConnMetrics.SlowConsumer tells apart (the "kind" label).
const (
	// SubInbox is a reply inbox (_INBOX.…): pull requests and request replies.
	SubInbox = "inbox"
	// SubAdvisory is a JetStream advisory subscription ($JS.EVENT.…).
	SubAdvisory = "advisory"
	// SubOther is any other subject.
	SubOther = "other"
)

// ConnMetrics counts events of the worker's NATS connection. It is made once per connection
// (there is one per process), before any model is loaded, so its series carry no model label:
//
//	nats_slow_consumer_total{kind}   counter  client-side drops reported (nats.ErrSlowConsumer), by subscription kind
//	nats_reconnects_total            counter  reconnections to a server
//
// (both prefixed seqembed_). A nil *ConnMetrics is a valid no-op sink. Methods are safe for
// concurrent use.
type ConnMetrics struct {
	slow       *prometheus.CounterVec
	reconnects prometheus.Counter
}

// NewConnMetrics creates the connection's collectors and registers them on reg (required). The
// three SlowConsumer kinds exist at zero from the first scrape. Registration failures roll back
// and wrap ErrRegister.
func NewConnMetrics(reg prometheus.Registerer) (*ConnMetrics, error) {
	if reg == nil {
		return nil, fmt.Errorf("%w: nil prometheus registerer", ErrOption)
	}
	m := &ConnMetrics{
		slow: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "nats_slow_consumer_total",
			Help: "Slow-consumer reports of the NATS client: messages dropped client-side because a subscription's pending limit was reached, by subscription kind. Each dropped record costs a delivery."},
			[]string{"kind"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "nats_reconnects_total",
			Help: "Reconnections of the worker's NATS connection."}),
	}
	for _, k := range []string{SubInbox, SubAdvisory, SubOther} {
		m.slow.WithLabelValues(k)
	}
	collectors := []prometheus.Collector{m.slow, m.reconnects}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("%w (connection metrics): %w", ErrRegister, err)
		}
	}
	return m, nil
}

// SlowConsumer counts one slow-consumer report for a subscription to subject (the
// *nats.Subscription's Subject; "" when the client did not say). Call it from the connection's
// nats.ErrorHandler when the error is nats.ErrSlowConsumer. nats.go reports a subscription once
// per episode, not once per dropped message; its Dropped() method has the message count.
func (m *ConnMetrics) SlowConsumer(subject string) {
	if m == nil {
		return
	}
	m.slow.WithLabelValues(subscriptionKind(subject)).Inc()
}

// Reconnected counts one reconnection (call it from nats.ReconnectHandler).
func (m *ConnMetrics) Reconnected() {
	if m == nil {
		return
	}
	m.reconnects.Inc()
}

// subscriptionKind maps a subject to one of the Sub* kinds.
func subscriptionKind(subject string) string {
	switch {
	case strings.HasPrefix(subject, "_INBOX."):
		return SubInbox
	case strings.HasPrefix(subject, "$JS.EVENT."):
		return SubAdvisory
	}
	return SubOther
}
