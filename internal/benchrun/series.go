package benchrun

import (
	"time"

	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/pipeline"
)

// BatchPoint is one batch of a bench run.
type BatchPoint struct {
	At     time.Time `json:"at"` // e2e: when a runner took the batch off the batcher; raw: when its run returned
	Rows   int       `json:"rows"`
	Tokens int       `json:"tokens"` // real tokens, CLS and EOS included (batcher.Batch.Tokens)
	Padded int       `json:"padded"` // rows × bucket length
}

// Residues is the batch's residues, the count Result.Residues sums.
func (p BatchPoint) Residues() int { return p.Tokens - 2*p.Rows }

// Efficiency is the batch's real tokens over its padded tokens.
func (p BatchPoint) Efficiency() float64 { return float64(p.Tokens) / float64(max(1, p.Padded)) }

// Series is what a bench run saw over time: series.json of a report.
type Series struct {
	Start time.Time `json:"start"` // the timed part of the run (Result.Seconds)
	End   time.Time `json:"end"`
	// BatchTime says what a batch's At is, for the summary.
	BatchTime string       `json:"batch_time"`
	Batches   []BatchPoint `json:"batches"`
	// GPU is the NVML samples in [Start, End]; none on the CPU or without NVML.
	GPU []gpurun.GPUSample `json:"gpu"`
}

// e2eSeries is the series of an e2e run from the pipeline's timeline. localrun.Run returns
// after the pipeline's shutdown, so returned-processing is a little late for the start: the
// first batch bounds it.
func e2eSeries(timeline []pipeline.BatchPoint, processing time.Duration, returned time.Time) *Series {
	s := &Series{Start: returned.Add(-processing), BatchTime: "when a runner took the batch off the batcher (before its run)"}
	for _, b := range timeline {
		s.Batches = append(s.Batches, BatchPoint{At: b.At, Rows: b.Rows, Tokens: b.Tokens, Padded: b.Padded})
		if b.At.Before(s.Start) {
			s.Start = b.At
		}
	}
	s.End = s.Start.Add(processing)
	return s
}

// ThroughputWindow is the window a throughput plot bins batches in: 1 s, or a tenth of the run
// for runs under 10 s (so a short run still shows a curve), never under 1 ms.
func ThroughputWindow(run time.Duration) time.Duration {
	if run >= 10*time.Second {
		return time.Second
	}
	return max(time.Millisecond, (run / 10).Round(time.Millisecond))
}

// ThroughputWindows bins the batches' residues into windows of w from s.Start and returns
// residues/s per window, as the window's start (seconds) and rate. The last window is divided by
// its own length; one shorter than w/4 is merged into the window before it.
func ThroughputWindows(s *Series, w time.Duration) (starts, rates []float64) {
	end := s.End
	for _, b := range s.Batches {
		if b.At.After(end) {
			end = b.At
		}
	}
	run := end.Sub(s.Start)
	if run <= 0 || w <= 0 {
		return nil, nil
	}
	n := int((run + w - 1) / w)
	if last := run - time.Duration(n-1)*w; n > 1 && last < w/4 {
		n--
	}
	sums := make([]float64, n)
	for _, b := range s.Batches {
		i := min(n-1, max(0, int(b.At.Sub(s.Start)/w)))
		sums[i] += float64(b.Residues())
	}
	for i := range n {
		from := time.Duration(i) * w
		length := w
		if i == n-1 {
			length = run - from
		}
		starts = append(starts, from.Seconds())
		rates = append(rates, sums[i]/length.Seconds())
	}
	return starts, rates
}
