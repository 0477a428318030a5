package telemetry

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is a settable clock for Health.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func startServer(t *testing.T, reg prometheus.Gatherer, h *Health) string {
	t.Helper()
	srv, err := NewServer("127.0.0.1:0", reg, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return "http://" + srv.Addr()
}

// TestReadinessNATSAndPublishing: /readyz follows the NATS connection (down: 503 saying so, up
// again: 200) and publishing (failing past the limit with no success: 503; a success: 200).
func TestReadinessNATSAndPublishing(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	h := NewHealth()
	h.now = clock.now
	base := startServer(t, prometheus.NewRegistry(), h)
	expect := func(wantCode int, wantBody string) {
		t.Helper()
		code, body := get(t, base+"/readyz")
		if code != wantCode || !strings.HasPrefix(body, wantBody) {
			t.Fatalf("GET /readyz = %d %q, want %d %q...", code, body, wantCode, wantBody)
		}
	}
	expect(http.StatusServiceUnavailable, "not ready")
	h.SetReady(true)
	expect(http.StatusOK, "ok")

	// NATS down: not ready at once, with how long; back: ready.
	h.SetNATS(false)
	clock.advance(1500 * time.Millisecond)
	h.SetNATS(false) // a second disconnect report keeps the first time
	expect(http.StatusServiceUnavailable, "not ready: NATS disconnected for 1.5s")
	if !errors.Is(h.Readiness(), ErrNotReady) || h.Ready() {
		t.Fatalf("Readiness() = %v while disconnected", h.Readiness())
	}
	h.SetNATS(true)
	expect(http.StatusOK, "ok")

	// Publishing failing: ready until the limit (default one minute) has passed.
	h.PublishFailed()
	clock.advance(30 * time.Second)
	h.PublishFailed()
	expect(http.StatusOK, "ok")
	clock.advance(31 * time.Second)
	expect(http.StatusServiceUnavailable, "not ready: publishing failing for 1m1s (limit 1m0s)")
	h.PublishSucceeded()
	expect(http.StatusOK, "ok")

	// A shorter limit; both conditions at once are both reported.
	if err := h.SetPublishFailureLimit(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.SetPublishFailureLimit(0); !errors.Is(err, ErrOption) {
		t.Fatalf("SetPublishFailureLimit(0) = %v, want ErrOption", err)
	}
	h.PublishFailed()
	h.SetNATS(false)
	clock.advance(6 * time.Second)
	expect(http.StatusServiceUnavailable, "not ready: NATS disconnected for 6s; publishing failing for 6s (limit 5s)")
	h.SetNATS(true)
	h.PublishSucceeded()
	expect(http.StatusOK, "ok")

	// The worker's own flag still rules: shutting down is not ready whatever NATS does.
	h.SetReady(false)
	expect(http.StatusServiceUnavailable, "not ready")
	var nilH *Health // the hooks are no-ops on nil
	nilH.SetNATS(false)
	nilH.PublishFailed()
	nilH.PublishSucceeded()
	// The zero value is usable too.
	var z Health
	z.SetReady(true)
	z.SetNATS(false)
	if z.Ready() {
		t.Fatal("zero Health ready while NATS is down")
	}
}

func TestMetricsRedeliveredAndDropped(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.RecordIn()
	m.Redelivered()
	m.Redelivered()
	m.Dropped("max_deliveries")
	m.Dropped("Not A Code")
	if got := testutil.ToFloat64(m.recordsIn); got != 1 {
		t.Errorf("records_in = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.redelivered); got != 2 {
		t.Errorf("records_redelivered = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.dropped.WithLabelValues("max_deliveries")); got != 1 {
		t.Errorf("dropped max_deliveries = %v", got)
	}
	if got := testutil.ToFloat64(m.dropped.WithLabelValues(ReasonOther)); got != 1 {
		t.Errorf("dropped other = %v", got)
	}
	// Every dead-letter reason has its dropped series from the start, plus "other" now.
	if n, want := testutil.CollectAndCount(m.dropped), len(testLabels.DeadLetterReasons)+1; n != want {
		t.Errorf("dropped series = %d, want %d", n, want)
	}
	if n, err := testutil.GatherAndCount(reg, "seqembed_records_redelivered_total"); err != nil || n != 1 {
		t.Errorf("GatherAndCount(records_redelivered) = %d, %v", n, err)
	}
	var nilM *Metrics
	nilM.Redelivered()
	nilM.Dropped("x")
}

// TestRegistryServesRuntimeMetrics: the registry from NewRegistry serves the Go runtime and
// process collectors on /metrics next to the worker's and the connection's metrics.
func TestRegistryServesRuntimeMetrics(t *testing.T) {
	reg, err := NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMetrics(reg, "esm2", testLabels)
	if err != nil {
		t.Fatal(err)
	}
	m.Redelivered()
	cm, err := NewConnMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cm.SlowConsumer("_INBOX.abc.def")
	cm.SlowConsumer("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SEQS.d")
	cm.SlowConsumer("seqs.in.m")
	cm.Reconnected()
	base := startServer(t, reg, NewHealth())
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	for _, want := range []string{
		"go_goroutines ", "go_memstats_alloc_bytes ", "process_cpu_seconds_total ", "process_resident_memory_bytes ",
		`seqembed_records_redelivered_total{model="esm2"} 1`,
		`seqembed_nats_slow_consumer_total{kind="inbox"} 1`, `seqembed_nats_slow_consumer_total{kind="advisory"} 1`,
		`seqembed_nats_slow_consumer_total{kind="other"} 1`, "seqembed_nats_reconnects_total 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := NewConnMetrics(reg); !errors.Is(err, ErrRegister) {
		t.Errorf("second NewConnMetrics on one registry: %v, want ErrRegister", err)
	}
	if _, err := NewConnMetrics(nil); !errors.Is(err, ErrOption) {
		t.Errorf("NewConnMetrics(nil): %v, want ErrOption", err)
	}
	var nilC *ConnMetrics
	nilC.SlowConsumer("x")
	nilC.Reconnected()
}
