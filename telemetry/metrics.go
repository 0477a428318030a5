package telemetry

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "seqembed"

// Labels are the label values NewMetrics pre-registers, so that their series exist (at zero)
// from the first scrape. They are defined by the packages that produce them, which telemetry
// does not import; the caller passes them in:
//
//	telemetry.Labels{
//		DeadLetterReasons: consumer.DeadLetterReasons(),
//		FlushReasons:      []string{batcher.ReasonFull, batcher.ReasonLinger, batcher.ReasonDrain},
//	}
//
// Both are required (non-empty); every value must be a short code (1 to 32 characters of a-z,
// 0-9 and '_') and appear once. Values not listed are still counted when they occur (see
// Metrics.DeadLettered).
type Labels struct {
	// DeadLetterReasons are the reason codes of records_dead_lettered_total{reason} and
	// records_dropped_total{reason}.
	DeadLetterReasons []string
	// FlushReasons are the flush reasons of batches_total{reason}.
	FlushReasons []string
}

// validate checks l as documented on Labels.
func (l Labels) validate() error {
	for _, set := range []struct {
		name   string
		values []string
	}{{"DeadLetterReasons", l.DeadLetterReasons}, {"FlushReasons", l.FlushReasons}} {
		if len(set.values) == 0 {
			return fmt.Errorf("%w: Labels.%s is empty", ErrOption, set.name)
		}
		seen := make(map[string]bool, len(set.values))
		for i, v := range set.values {
			if reasonLabel(v) != v {
				return fmt.Errorf("%w: Labels.%s[%d] = %q is not a short code (1 to %d characters of a-z, 0-9, '_')",
					ErrOption, set.name, i, v, maxReasonLen)
			}
			if seen[v] {
				return fmt.Errorf("%w: Labels.%s lists %q twice", ErrOption, set.name, v)
			}
			seen[v] = true
		}
	}
	return nil
}

// GPU bottleneck tiers for Metrics.SetGPU.
const (
	TierUnknown = 0
	TierFine    = 1
	TierMild    = 2
	TierSevere  = 3
)

// ReasonOther replaces reason labels that are not short codes (see
// Metrics.DeadLettered), keeping label cardinality bounded.
const ReasonOther = "other"

// maxReasonLen bounds the length of a reason label value.
const maxReasonLen = 32

// Histogram buckets. Latency buckets are in seconds.
var (
	// queueWaitBuckets span 1ms (saturated pipeline) to 60s (a long linger
	// or a stalled runner).
	queueWaitBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	// batchRowBuckets are powers of two from 1 to 1024 rows.
	batchRowBuckets = prometheus.ExponentialBuckets(1, 2, 11)
	// batchTokenBuckets are powers of two from 256 to 524288 padded tokens
	// (e.g. 512 rows of ESM-2's 1024-token maximum).
	batchTokenBuckets = prometheus.ExponentialBuckets(256, 2, 12)
	// paddingBuckets resolve 0..1 coarsely below 0.8 and finely above,
	// where a length-bucketed batcher should operate.
	paddingBuckets = []float64{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1}
	// inferenceBuckets span 5ms (small batch, small model, GPU) to 120s
	// (large batch on CPU).
	inferenceBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	// publishBuckets span 0.5ms to 10s for an Arrow IPC write plus publish ack.
	publishBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// runnerIdleBuckets span 0.1ms (runner kept busy: the goal) to 60s
	// (input starved).
	runnerIdleBuckets = []float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60}
)

// Metrics holds the worker's Prometheus collectors. All names are prefixed
// with "seqembed_" and carry a constant "model" label.
//
// All methods are safe for concurrent use. A nil *Metrics is a valid no-op
// sink, so stages can be run without metrics in tests.
type Metrics struct {
	recordsIn    prometheus.Counter
	redelivered  prometheus.Counter
	recordsOut   prometheus.Counter
	deadLettered *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	truncated    prometheus.Counter

	queueWait   prometheus.Histogram
	batchRows   prometheus.Histogram
	batchTokens prometheus.Histogram
	padding     prometheus.Histogram
	inference   prometheus.Histogram
	publish     prometheus.Histogram
	batches     *prometheus.CounterVec
	inflight    prometheus.Gauge
	backlog     prometheus.Gauge
	runnerIdle  prometheus.Histogram

	gpuUtil *prometheus.GaugeVec
	gpuMem  *prometheus.GaugeVec
	gpuTier *prometheus.GaugeVec
}

// NewMetrics creates the worker's collectors and registers them on reg.
// model (required, non-empty) becomes the constant "model" label of every
// series, so several workers with different models can share a registry.
// labels (required, see Labels) are the reason values whose series are
// created at zero.
//
// Metrics (prefix seqembed_):
//
//	records_in_total                       counter    records received on their first delivery
//	records_redelivered_total              counter    records received again (delivery 2, 3, ...)
//	records_out_total                      counter    embeddings published
//	records_dead_lettered_total{reason}    counter    records sent to the dead-letter subject (Labels.DeadLetterReasons)
//	records_dropped_total{reason}          counter    records terminated without a stored dead-letter copy (Labels.DeadLetterReasons)
//	records_truncated_total                counter    records truncated to the model's max length
//	queue_wait_seconds                     histogram  oldest record's arrival → batch flush (1ms..60s)
//	batch_rows                             histogram  rows per batch (1..1024, powers of two)
//	batch_tokens                           histogram  padded tokens rows*cols per batch (256..524288)
//	padding_efficiency                     histogram  real/padded tokens per batch (0..1)
//	batches_total{reason}                  counter    batches flushed by reason (Labels.FlushReasons)
//	inference_seconds                      histogram  model run per batch (5ms..120s)
//	publish_seconds                        histogram  output encode+publish per batch (0.5ms..10s)
//	inflight_batches                       gauge      batches between flush and publish
//	backlog_records                        gauge      the durable consumer's pending + unacked records
//	runner_idle_seconds                    histogram  runner wait for its next batch (0.1ms..60s)
//	gpu_utilization_ratio{gpu}             gauge      0..1
//	gpu_memory_used_bytes{gpu}             gauge
//	gpu_bottleneck_tier{gpu}               gauge      0 unknown, 1 fine, 2 mild, 3 severe
//
// Invalid arguments fail with ErrOption. If any registration fails, the
// collectors already registered are unregistered again and the error wraps
// ErrRegister and the prometheus error (e.g.
// prometheus.AlreadyRegisteredError).
func NewMetrics(reg prometheus.Registerer, model string, labels Labels) (*Metrics, error) {
	if reg == nil {
		return nil, fmt.Errorf("%w: nil prometheus registerer", ErrOption)
	}
	if model == "" {
		return nil, fmt.Errorf("%w: empty model label", ErrOption)
	}
	if err := labels.validate(); err != nil {
		return nil, fmt.Errorf("metrics for model %q: %w", model, err)
	}
	constLabels := prometheus.Labels{"model": model}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: name, Help: help, ConstLabels: constLabels})
	}
	counterVec := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: name, Help: help, ConstLabels: constLabels}, []string{label})
	}
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: name, Help: help, ConstLabels: constLabels, Buckets: buckets})
	}
	gpuGauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: name, Help: help, ConstLabels: constLabels}, []string{"gpu"})
	}

	m := &Metrics{
		recordsIn: counter("records_in_total",
			"Records received by the worker on their first delivery (redeliveries: records_redelivered_total)."),
		redelivered: counter("records_redelivered_total",
			"Records received again after an earlier delivery (nak, ack timeout, worker or connection loss)."),
		recordsOut: counter("records_out_total", "Records whose embeddings were published."),
		deadLettered: counterVec("records_dead_lettered_total",
			"Records sent to the dead-letter subject, by reason code.", "reason"),
		dropped: counterVec("records_dropped_total",
			"Records terminated without a dead-letter copy because none could be stored, even truncated, by reason code.", "reason"),
		truncated: counter("records_truncated_total", "Records truncated to the model's maximum length."),

		queueWait: histogram("queue_wait_seconds",
			"Time from the arrival of a batch's oldest record at the worker to the batch flush.", queueWaitBuckets),
		batchRows: histogram("batch_rows", "Rows per flushed batch.", batchRowBuckets),
		batchTokens: histogram("batch_tokens",
			"Padded tokens (rows*cols) per flushed batch.", batchTokenBuckets),
		padding: histogram("padding_efficiency",
			"Real tokens divided by padded tokens per flushed batch.", paddingBuckets),
		inference: histogram("inference_seconds", "Model inference time per batch.", inferenceBuckets),
		publish:   histogram("publish_seconds", "Output encode and publish time per batch.", publishBuckets),
		batches:   counterVec("batches_total", "Batches flushed, by flush reason.", "reason"),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "inflight_batches", ConstLabels: constLabels,
			Help: "Batches flushed but not yet published."}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "backlog_records", ConstLabels: constLabels,
			Help: "Records of the model's durable consumer not yet acked: pending (not delivered) plus unacked, as the server reported last (every worker exports the same figure; scale on max, not sum)."}),
		runnerIdle: histogram("runner_idle_seconds",
			"Time the inference runner waited for its next batch.", runnerIdleBuckets),

		gpuUtil: gpuGauge("gpu_utilization_ratio", "GPU utilisation over the last sample period, 0..1."),
		gpuMem:  gpuGauge("gpu_memory_used_bytes", "GPU memory in use, in bytes."),
		gpuTier: gpuGauge("gpu_bottleneck_tier",
			"GPU bottleneck tier: 0 unknown, 1 fine, 2 mild, 3 severe."),
	}
	for _, r := range labels.DeadLetterReasons {
		m.deadLettered.WithLabelValues(r)
		m.dropped.WithLabelValues(r)
	}
	for _, r := range labels.FlushReasons {
		m.batches.WithLabelValues(r)
	}

	collectors := []prometheus.Collector{
		m.recordsIn, m.redelivered, m.recordsOut, m.deadLettered, m.dropped, m.truncated,
		m.queueWait, m.batchRows, m.batchTokens, m.padding, m.inference, m.publish,
		m.batches, m.inflight, m.backlog, m.runnerIdle,
		m.gpuUtil, m.gpuMem, m.gpuTier,
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("%w (model %q): %w", ErrRegister, model, err)
		}
	}
	return m, nil
}

// RecordIn counts one record received from the input on its first delivery.
func (m *Metrics) RecordIn() {
	if m == nil {
		return
	}
	m.recordsIn.Inc()
}

// Redelivered counts one record received from the input again (its delivery count is above 1):
// it was nak'd, its ack wait ran out, or the worker or connection holding it went away.
func (m *Metrics) Redelivered() {
	if m == nil {
		return
	}
	m.redelivered.Inc()
}

// RecordsOut counts n records whose embeddings were published. n <= 0 is
// ignored.
func (m *Metrics) RecordsOut(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.recordsOut.Add(float64(n))
}

// DeadLettered counts one dead-lettered record. reason must be a short code
// (1 to 32 characters of a-z, 0-9 and '_'), such as those of
// Labels.DeadLetterReasons; anything else, e.g. an error message, is counted as ReasonOther so that a
// mistake cannot blow up label cardinality.
func (m *Metrics) DeadLettered(reason string) {
	if m == nil {
		return
	}
	m.deadLettered.WithLabelValues(reasonLabel(reason)).Inc()
}

// Dropped counts one record that was terminated without a dead-letter copy, because no copy of
// it could be stored even with its body and headers truncated; reason is the code it would have
// been dead-lettered with, sanitised like DeadLettered. Its content is then only in the log.
func (m *Metrics) Dropped(reason string) {
	if m == nil {
		return
	}
	m.dropped.WithLabelValues(reasonLabel(reason)).Inc()
}

// Truncated counts one record truncated to the model's maximum length.
func (m *Metrics) Truncated() {
	if m == nil {
		return
	}
	m.truncated.Inc()
}

// ObserveBatch records one flushed batch: the flush reason (one of
// Labels.FlushReasons; sanitised like DeadLettered), its row count, its
// padded token count (rows*cols), its real (unpadded) token count and how
// long its oldest record waited between arrival and flush. Padding efficiency
// is realTokens/paddedTokens clamped to [0,1] and is skipped when
// paddedTokens <= 0. Negative durations are recorded as zero.
func (m *Metrics) ObserveBatch(reason string, rows, paddedTokens, realTokens int, queueWaitOldest time.Duration) {
	if m == nil {
		return
	}
	m.batches.WithLabelValues(reasonLabel(reason)).Inc()
	m.batchRows.Observe(float64(rows))
	m.batchTokens.Observe(float64(paddedTokens))
	if paddedTokens > 0 {
		m.padding.Observe(min(max(float64(realTokens)/float64(paddedTokens), 0), 1))
	}
	m.queueWait.Observe(seconds(queueWaitOldest))
}

// ObserveInference records the model run time of one batch.
func (m *Metrics) ObserveInference(d time.Duration) {
	if m == nil {
		return
	}
	m.inference.Observe(seconds(d))
}

// ObservePublish records the encode-and-publish time of one batch.
func (m *Metrics) ObservePublish(d time.Duration) {
	if m == nil {
		return
	}
	m.publish.Observe(seconds(d))
}

// InflightAdd adjusts the in-flight batch gauge by delta: +1 when a batch is
// flushed, -1 once it is published or dead-lettered.
func (m *Metrics) InflightAdd(delta int) {
	if m == nil {
		return
	}
	m.inflight.Add(float64(delta))
}

// SetBacklog sets the backlog gauge: the durable consumer's pending plus unacked records.
func (m *Metrics) SetBacklog(records uint64) {
	if m == nil {
		return
	}
	m.backlog.Set(float64(records))
}

// ObserveRunnerIdle records how long the inference runner waited for its
// next batch. Consistently large values mean the GPU is starved by input.
func (m *Metrics) ObserveRunnerIdle(d time.Duration) {
	if m == nil {
		return
	}
	m.runnerIdle.Observe(seconds(d))
}

// SetGPU publishes one sample for the GPU with the given index: util is the
// utilisation as a ratio in [0,1] (divide NVML's percentage by 100), memUsed
// is in bytes and tier is one of the Tier constants; an out-of-range tier is
// reported as TierUnknown.
func (m *Metrics) SetGPU(index int, util float64, memUsed uint64, tier int) {
	if m == nil {
		return
	}
	if tier < TierUnknown || tier > TierSevere {
		tier = TierUnknown
	}
	gpu := strconv.Itoa(index)
	m.gpuUtil.WithLabelValues(gpu).Set(util)
	m.gpuMem.WithLabelValues(gpu).Set(float64(memUsed))
	m.gpuTier.WithLabelValues(gpu).Set(float64(tier))
}

// reasonLabel returns reason if it is a short code, else ReasonOther.
func reasonLabel(reason string) string {
	if reason == "" || len(reason) > maxReasonLen {
		return ReasonOther
	}
	for i := 0; i < len(reason); i++ {
		c := reason[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return ReasonOther
		}
	}
	return reason
}

// seconds converts d to seconds, clamping negative durations to zero.
func seconds(d time.Duration) float64 {
	return max(d, 0).Seconds()
}
