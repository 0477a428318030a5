package telemetry

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// testLabels stands in for the label sets the callers take from consumer and batcher (which
// telemetry does not import, not even in tests).
var testLabels = Labels{
	DeadLetterReasons: []string{"missing_id", "bad_id", "empty", "too_large", "too_long", "invalid_residue", "max_deliveries", "model_error"},
	FlushReasons:      []string{"full", "linger", "drain"},
}

func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "esm2_t6_8M", testLabels)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func TestNewMetricsValidation(t *testing.T) {
	if _, err := NewMetrics(nil, "m", testLabels); !errors.Is(err, ErrOption) {
		t.Errorf("nil registry: err = %v, want ErrOption", err)
	}
	if _, err := NewMetrics(prometheus.NewRegistry(), "", testLabels); !errors.Is(err, ErrOption) {
		t.Errorf("empty model: err = %v, want ErrOption", err)
	}
	flush := testLabels.FlushReasons
	dead := testLabels.DeadLetterReasons
	for name, l := range map[string]Labels{
		"no dead-letter reasons": {FlushReasons: flush},
		"no flush reasons":       {DeadLetterReasons: dead},
		"not a short code":       {DeadLetterReasons: []string{"too_large", "Too Large"}, FlushReasons: flush},
		"empty code":             {DeadLetterReasons: dead, FlushReasons: []string{""}},
		"listed twice":           {DeadLetterReasons: dead, FlushReasons: []string{"full", "full"}},
	} {
		if _, err := NewMetrics(prometheus.NewRegistry(), "m", l); !errors.Is(err, ErrOption) {
			t.Errorf("%s: err = %v, want ErrOption", name, err)
		}
	}
}

// TestNewMetricsPreregistersLabels: every given reason has its series at zero before anything
// is counted, and nothing else is registered.
func TestNewMetricsPreregistersLabels(t *testing.T) {
	m, _ := newTestMetrics(t)
	for _, r := range testLabels.DeadLetterReasons {
		if got := testutil.ToFloat64(m.deadLettered.WithLabelValues(r)); got != 0 {
			t.Errorf("dead %s = %v, want 0", r, got)
		}
	}
	if n := testutil.CollectAndCount(m.deadLettered); n != len(testLabels.DeadLetterReasons) {
		t.Errorf("dead-letter series = %d, want %d", n, len(testLabels.DeadLetterReasons))
	}
	if n := testutil.CollectAndCount(m.batches); n != len(testLabels.FlushReasons) {
		t.Errorf("batch series = %d, want %d", n, len(testLabels.FlushReasons))
	}
}

func TestNewMetricsDuplicateRegistration(t *testing.T) {
	_, reg := newTestMetrics(t)
	_, err := NewMetrics(reg, "esm2_t6_8M", testLabels)
	var are prometheus.AlreadyRegisteredError
	if !errors.Is(err, ErrRegister) || !errors.As(err, &are) {
		t.Fatalf("err = %v, want ErrRegister wrapping AlreadyRegisteredError", err)
	}
	// A different model label is a different set of series on the same registry.
	if _, err := NewMetrics(reg, "esm2_t33_650M", testLabels); err != nil {
		t.Fatalf("second model: %v", err)
	}
}

func TestNewMetricsRollsBackOnFailure(t *testing.T) {
	reg := prometheus.NewRegistry()
	// Occupy the descriptor of a metric registered late in NewMetrics
	// (registries keep name/help/labels fixed for their lifetime, so the
	// clash must use the identical descriptor).
	clash := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "runner_idle_seconds",
		Help:        "Time the inference runner waited for its next batch.",
		ConstLabels: prometheus.Labels{"model": "m"}})
	reg.MustRegister(clash)
	if _, err := NewMetrics(reg, "m", testLabels); !errors.Is(err, ErrRegister) {
		t.Fatalf("err = %v, want ErrRegister", err)
	}
	reg.Unregister(clash)
	// Everything registered before the failure must have been rolled back.
	if _, err := NewMetrics(reg, "m", testLabels); err != nil {
		t.Fatalf("after rollback: %v", err)
	}
}

func TestMetricsCounters(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.RecordIn()
	m.RecordIn()
	m.RecordIn()
	m.RecordsOut(2)
	m.RecordsOut(0)
	m.RecordsOut(-5)
	m.Truncated()
	m.DeadLettered("invalid_residue")
	m.DeadLettered("invalid_residue")
	m.DeadLettered("custom_code")
	m.DeadLettered("sequence contains 'X' at 12")
	m.DeadLettered("")

	checks := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"records_in", m.recordsIn, 3},
		{"records_out", m.recordsOut, 2},
		{"truncated", m.truncated, 1},
		{"dead invalid_residue", m.deadLettered.WithLabelValues("invalid_residue"), 2},
		{"dead custom_code", m.deadLettered.WithLabelValues("custom_code"), 1},
		{"dead other", m.deadLettered.WithLabelValues(ReasonOther), 2},
		{"dead missing_id", m.deadLettered.WithLabelValues("missing_id"), 0},
	}
	for _, c := range checks {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	// The pre-registered reasons + custom_code + other.
	if n, want := testutil.CollectAndCount(m.deadLettered), len(testLabels.DeadLetterReasons)+2; n != want {
		t.Errorf("dead-letter series = %d, want %d", n, want)
	}
	n, err := testutil.GatherAndCount(reg, "seqembed_records_in_total")
	if err != nil || n != 1 {
		t.Errorf("GatherAndCount(records_in) = %d, %v", n, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, metric := range mf.GetMetric() {
			if labelValue(metric, "model") != "esm2_t6_8M" {
				t.Errorf("%s lacks the model label: %v", mf.GetName(), metric.GetLabel())
			}
		}
	}
}

func TestMetricsBatch(t *testing.T) {
	m, _ := newTestMetrics(t)
	m.ObserveBatch("full", 32, 32*512, 32*400, 20*time.Millisecond)
	m.ObserveBatch("linger", 3, 3*100, 150, 250*time.Millisecond)
	m.ObserveBatch("drain", 0, 0, 0, -time.Second) // empty drain: no padding sample, wait clamped to 0
	m.ObserveInference(40 * time.Millisecond)
	m.ObservePublish(3 * time.Millisecond)
	m.ObserveRunnerIdle(time.Millisecond)
	m.InflightAdd(2)
	m.InflightAdd(-1)

	if got := testutil.ToFloat64(m.batches.WithLabelValues("full")); got != 1 {
		t.Errorf("batches full = %v", got)
	}
	if got := testutil.ToFloat64(m.inflight); got != 1 {
		t.Errorf("inflight = %v, want 1", got)
	}
	hist := func(h prometheus.Histogram) *dto.Histogram {
		var out dto.Metric
		if err := h.Write(&out); err != nil {
			t.Fatal(err)
		}
		return out.GetHistogram()
	}
	if h := hist(m.batchRows); h.GetSampleCount() != 3 || h.GetSampleSum() != 35 {
		t.Errorf("batch_rows count=%d sum=%v", h.GetSampleCount(), h.GetSampleSum())
	}
	if h := hist(m.batchTokens); h.GetSampleSum() != 32*512+300 {
		t.Errorf("batch_tokens sum=%v", h.GetSampleSum())
	}
	if h := hist(m.padding); h.GetSampleCount() != 2 || h.GetSampleSum() != 400.0/512+0.5 {
		t.Errorf("padding count=%d sum=%v", h.GetSampleCount(), h.GetSampleSum())
	}
	if h := hist(m.queueWait); h.GetSampleCount() != 3 || h.GetSampleSum() != 0.27 {
		t.Errorf("queue_wait count=%d sum=%v", h.GetSampleCount(), h.GetSampleSum())
	}
	for name, h := range map[string]prometheus.Histogram{
		"inference": m.inference, "publish": m.publish, "runner_idle": m.runnerIdle,
	} {
		if got := hist(h).GetSampleCount(); got != 1 {
			t.Errorf("%s count = %d, want 1", name, got)
		}
	}
}

func TestMetricsGPU(t *testing.T) {
	m, _ := newTestMetrics(t)
	m.SetGPU(0, 0.75, 4<<30, TierMild)
	m.SetGPU(1, 0.1, 1<<30, 99)
	if got := testutil.ToFloat64(m.gpuUtil.WithLabelValues("0")); got != 0.75 {
		t.Errorf("util = %v", got)
	}
	if got := testutil.ToFloat64(m.gpuMem.WithLabelValues("0")); got != 4<<30 {
		t.Errorf("mem = %v", got)
	}
	if got := testutil.ToFloat64(m.gpuTier.WithLabelValues("0")); got != TierMild {
		t.Errorf("tier = %v", got)
	}
	if got := testutil.ToFloat64(m.gpuTier.WithLabelValues("1")); got != TierUnknown {
		t.Errorf("out-of-range tier = %v, want unknown", got)
	}
	if n := testutil.CollectAndCount(m.gpuUtil, "seqembed_gpu_utilization_ratio"); n != 2 {
		t.Errorf("gpu series = %d, want 2", n)
	}
}

func TestMetricsNilIsNoop(t *testing.T) {
	var m *Metrics
	m.RecordIn()
	m.RecordsOut(1)
	m.DeadLettered("empty")
	m.Truncated()
	m.ObserveBatch("full", 1, 1, 1, time.Second)
	m.ObserveInference(time.Second)
	m.ObservePublish(time.Second)
	m.InflightAdd(1)
	m.ObserveRunnerIdle(time.Second)
	m.SetGPU(0, 1, 1, TierFine)
}

func TestMetricsConcurrent(t *testing.T) {
	m, _ := newTestMetrics(t)
	const workers, each = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				m.RecordIn()
				m.DeadLettered("too_long")
				m.ObserveBatch("linger", 1, 8, 4, time.Millisecond)
				m.InflightAdd(1)
				m.InflightAdd(-1)
				m.SetGPU(w%2, float64(i)/each, uint64(i), TierFine)
			}
		})
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.recordsIn); got != workers*each {
		t.Errorf("records_in = %v", got)
	}
	if got := testutil.ToFloat64(m.deadLettered.WithLabelValues("too_long")); got != workers*each {
		t.Errorf("dead too_long = %v", got)
	}
	if got := testutil.ToFloat64(m.inflight); got != 0 {
		t.Errorf("inflight = %v", got)
	}
}

func TestReasonLabel(t *testing.T) {
	for in, want := range map[string]string{
		"too_large": "too_large", "a1_b2": "a1_b2", "": ReasonOther, "Too_Large": ReasonOther,
		"too-large": ReasonOther, "has space": ReasonOther,
		"abcdefghijklmnopqrstuvwxyz_01234":  "abcdefghijklmnopqrstuvwxyz_01234",
		"abcdefghijklmnopqrstuvwxyz_012345": ReasonOther,
	} {
		if got := reasonLabel(in); got != want {
			t.Errorf("reasonLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}
