package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Health holds the worker's liveness and readiness, as served by Server on
// /healthz and /readyz.
//
// Readiness combines what the worker says (SetReady: input, model and output
// are up) with what it observes: the worker is not ready while its NATS
// connection is down (SetNATS) or while publishing has been failing, with no
// success since, for longer than the publish failure limit (PublishFailed,
// PublishSucceeded, SetPublishFailureLimit). It comes back by itself when the
// connection does or a publish succeeds.
//
// The zero value is usable: live, not ready, NATS not known to be down, the
// default publish failure limit. The worker calls Fail on a fatal error so
// that the orchestrator restarts it. All methods are safe for concurrent use;
// SetNATS, PublishFailed and PublishSucceeded are no-ops on a nil *Health, so
// connection and publish hooks can be wired where no Health exists.
type Health struct {
	mu           sync.RWMutex
	ready        bool
	liveErr      error     // nil while live
	natsDown     time.Time // when the NATS connection went down; zero while up
	pubFailing   time.Time // first publish failure since the last success; zero if none
	pubFailLimit time.Duration
	now          func() time.Time // nil: time.Now (tests set a clock)
}

// DefaultPublishFailureLimit is how long publishing may fail, with no success in between,
// before the worker reports itself not ready (see SetPublishFailureLimit). A leader election or
// a brief outage is well under it; an output stream that stays full or unreachable is not.
const DefaultPublishFailureLimit = time.Minute

// NewHealth returns a Health that is live and not ready.
func NewHealth() *Health { return &Health{} }

func (h *Health) clock() time.Time {
	if h.now != nil {
		return h.now()
	}
	return time.Now()
}

// SetReady sets readiness.
func (h *Health) SetReady(ready bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ready = ready
}

// SetNATS records whether the NATS connection is up: call SetNATS(false) from the connection's
// disconnect and closed handlers and SetNATS(true) once connected and from its reconnect
// handler. While it is down the worker is not ready.
func (h *Health) SetNATS(connected bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case connected:
		h.natsDown = time.Time{}
	case h.natsDown.IsZero():
		h.natsDown = h.clock()
	}
}

// PublishFailed records a failed publish of the worker's output (call it on every failed try).
// The first failure after a success starts the clock: once publishing has failed for longer than
// the publish failure limit with no PublishSucceeded in between, the worker is not ready.
func (h *Health) PublishFailed() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pubFailing.IsZero() {
		h.pubFailing = h.clock()
	}
}

// PublishSucceeded records a stored publish; it ends a run of failures (see PublishFailed).
func (h *Health) PublishSucceeded() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pubFailing = time.Time{}
}

// SetPublishFailureLimit sets how long publishing may fail before the worker is not ready. d
// must be > 0 (ErrOption otherwise). Default DefaultPublishFailureLimit (1 minute).
func (h *Health) SetPublishFailureLimit(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: publish failure limit %s must be > 0", ErrOption, d)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pubFailLimit = d
	return nil
}

// SetLive sets liveness. SetLive(true) also clears an error set by Fail;
// SetLive(false) reports ErrNotLive.
func (h *Health) SetLive(live bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if live {
		h.liveErr = nil
	} else {
		h.liveErr = ErrNotLive
	}
}

// Fail marks the worker as no longer live, and no longer ready, because of
// the fatal error err (ErrNotLive if nil). The first real error is kept as
// the root cause: later calls do not overwrite it until SetLive(true).
func (h *Health) Fail(err error) {
	if err == nil {
		err = ErrNotLive
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ready = false
	if h.liveErr == nil || h.liveErr == ErrNotLive {
		h.liveErr = err
	}
}

// Ready reports readiness: SetReady(true), NATS up and publishing not failing past the limit.
func (h *Health) Ready() bool { return h.Readiness() == nil }

// Readiness returns nil when ready, else an error wrapping ErrNotReady that says why: the
// worker has not said it is ready (or failed), the NATS connection is down (and for how long),
// or publishing has been failing for longer than the limit.
func (h *Health) Readiness() error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	now := h.clock()
	var why []string
	if !h.natsDown.IsZero() {
		why = append(why, fmt.Sprintf("NATS disconnected for %s", now.Sub(h.natsDown).Round(time.Millisecond)))
	}
	limit := h.pubFailLimit
	if limit <= 0 {
		limit = DefaultPublishFailureLimit
	}
	if !h.pubFailing.IsZero() && now.Sub(h.pubFailing) > limit {
		why = append(why, fmt.Sprintf("publishing failing for %s (limit %s)", now.Sub(h.pubFailing).Round(time.Millisecond), limit))
	}
	switch {
	case len(why) > 0:
		return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(why, "; "))
	case !h.ready:
		return ErrNotReady
	}
	return nil
}

// Live returns nil while live, else the error that ended liveness.
func (h *Health) Live() error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.liveErr
}

// Server timeouts; /metrics scrapes are the slowest requests served.
const (
	readHeaderTimeout = 5 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
)

// Server serves the telemetry endpoints over HTTP:
//
//	GET /metrics  Prometheus exposition of the gatherer (compression negotiated)
//	GET /healthz  200 "ok" while live, else 503 with the error text
//	GET /readyz   200 "ok" when ready, else 503 "not ready" (": " and the
//	              reasons when NATS is down or publishing is failing)
//
// Plain-text bodies end with a newline. Other methods get 405, other paths
// 404. Start and Shutdown are safe for concurrent use; a Server can be
// started once.
type Server struct {
	addr   string
	srv    *http.Server
	log    *zap.Logger
	mu     sync.Mutex
	ln     net.Listener
	closed bool
	done   chan struct{} // closed when the serve goroutine returns
}

// NewServer prepares a server for addr (host:port; ":0" picks a free port,
// see Addr) exposing reg on /metrics and h on /healthz and /readyz. reg and
// h are required; log may be nil (no logging). Nothing listens until Start.
func NewServer(addr string, reg prometheus.Gatherer, h *Health, log *zap.Logger) (*Server, error) {
	switch {
	case addr == "":
		return nil, fmt.Errorf("%w: empty listen address (use \":0\" for any free port)", ErrOption)
	case reg == nil:
		return nil, fmt.Errorf("%w: nil prometheus gatherer", ErrOption)
	case h == nil:
		return nil, fmt.Errorf("%w: nil health", ErrOption)
	}
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("telemetry")
	errLog := zap.NewStdLog(log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      errLog,
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.Live(); err != nil {
			writeText(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.Readiness(); err != nil {
			writeText(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})

	return &Server{
		addr: addr,
		log:  log,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: readHeaderTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			ErrorLog:          errLog,
		},
	}, nil
}

// Start listens on the configured address and serves in a background
// goroutine until Shutdown. It returns once the listener is bound, so Addr is
// valid afterwards. It returns ErrServerStarted if already started and
// ErrServerClosed after Shutdown.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrServerClosed
	case s.ln != nil:
		return ErrServerStarted
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("telemetry: listen on %s: %w", s.addr, err)
	}
	s.ln = ln
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("telemetry server stopped", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
	s.log.Info("telemetry server listening", zap.String("addr", ln.Addr().String()))
	return nil
}

// Addr returns the bound address (with the real port when configured with
// port 0), or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops accepting connections and waits, until ctx is done, for
// in-flight requests and the serve goroutine to finish. It is a no-op on a
// server that was never started, and the server cannot be restarted.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return nil
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("telemetry: shutdown: %w", ctx.Err())
	}
}

// writeText writes a short plain-text response.
func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = fmt.Fprintln(w, body)
}
