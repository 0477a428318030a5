// Package telemetry provides the observability plumbing of the seqembed
// worker: a zap logger factory, Prometheus metrics, liveness/readiness state
// with an HTTP server that exposes it, and a terminal progress bar.
//
// The package deliberately imports none of seqembed's other packages. Every
// hook takes primitive arguments (counts, durations, short reason codes) so
// that the caller can wire the pipeline stages to it without the stages
// depending on telemetry or on each other. The label values it pre-registers
// (dead-letter reasons, batch flush reasons) are owned by the packages that
// produce them and passed to NewMetrics in Labels, so they cannot drift.
package telemetry

import "errors"

var (
	// ErrOption reports an invalid constructor argument or option value,
	// such as an unknown log level or a nil registry.
	ErrOption = errors.New("telemetry: invalid option")

	// ErrRegister reports that a metric could not be registered, typically
	// because NewMetrics was called twice on the same registry with the same
	// model label. The underlying prometheus error is wrapped as well.
	ErrRegister = errors.New("telemetry: register metric")

	// ErrNotLive is the liveness error reported by /healthz after
	// Health.SetLive(false) or Health.Fail(nil).
	ErrNotLive = errors.New("telemetry: not live")

	// ErrNotReady is the readiness error reported by /readyz (its text is
	// "not ready", followed by the reasons when the worker observed any).
	ErrNotReady = errors.New("not ready")

	// ErrServerStarted is returned by Server.Start when the server was
	// already started.
	ErrServerStarted = errors.New("telemetry: server already started")

	// ErrServerClosed is returned by Server.Start after Server.Shutdown.
	ErrServerClosed = errors.New("telemetry: server closed")
)
