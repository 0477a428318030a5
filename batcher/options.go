package batcher

import "time"

// Defaults used by New when the matching option is not given.
const (
	// DefaultMaxLen is the maxLen callers usually pass to New: ESM-2's
	// 1024-token context minus <cls> and <eos>.
	DefaultMaxLen = 1022
	// DefaultBucketStep is the bucket granularity in tokens.
	DefaultBucketStep = 64
	// DefaultMaxBatchTokens bounds Rows*Cols of a batch.
	DefaultMaxBatchTokens = 16384
	// DefaultMaxBatchRows bounds Rows of a batch.
	DefaultMaxBatchRows = 256
	// DefaultMaxWait is how long a bucket's oldest item may linger.
	DefaultMaxWait = 50 * time.Millisecond
	// DefaultQueueSize is the capacity of the input queue.
	DefaultQueueSize = 1024
	// DefaultOutputSize is the capacity of the output channel.
	DefaultOutputSize = 2
)

// config is what the options set; New validates the parts that depend on
// each other or on maxLen.
type config struct {
	step           int
	buckets        []int // explicit list from WithBuckets, nil if not given
	maxBatchTokens int
	maxBatchRows   int
	maxWait        time.Duration
	queueSize      int
	outputSize     int
	alloc          Allocator
	tok            *Tokenizer
}

func defaultConfig() config {
	return config{
		step:           DefaultBucketStep,
		maxBatchTokens: DefaultMaxBatchTokens,
		maxBatchRows:   DefaultMaxBatchRows,
		maxWait:        DefaultMaxWait,
		queueSize:      DefaultQueueSize,
		outputSize:     DefaultOutputSize,
	}
}

// Option configures a Batcher. An option given an invalid value makes New
// return an error wrapping ErrOption.
type Option func(*config) error

// WithBucketStep sets the bucket granularity in tokens (default 64): the
// buckets are step, 2*step, ... up to the smallest multiple ≥ maxLen+2.
// n must be ≥ 1. WithBuckets takes precedence over it.
func WithBucketStep(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return optionError("WithBucketStep", n, "must be ≥ 1")
		}
		c.step = n
		return nil
	}
}

// WithBuckets sets explicit bucket lengths in tokens (including <cls> and
// <eos>), replacing the step-derived ones. The list must be strictly
// ascending, every length ≥ 3, and (checked by New) the last ≥ maxLen+2.
// The slice is copied.
func WithBuckets(lengths []int) Option {
	return func(c *config) error {
		if len(lengths) == 0 {
			return optionError("WithBuckets", lengths, "needs at least one length")
		}
		for i, n := range lengths {
			if n < 3 {
				return optionError("WithBuckets", lengths, "every length must be ≥ 3 (<cls>, one residue, <eos>)")
			}
			if i > 0 && n <= lengths[i-1] {
				return optionError("WithBuckets", lengths, "lengths must be strictly ascending")
			}
		}
		c.buckets = append([]int(nil), lengths...)
		return nil
	}
}

// WithMaxBatchTokens bounds Rows*Cols of every batch (default 16384). A
// bucket longer than n still gets batches of one row. n must be ≥ 1.
func WithMaxBatchTokens(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return optionError("WithMaxBatchTokens", n, "must be ≥ 1")
		}
		c.maxBatchTokens = n
		return nil
	}
}

// WithMaxBatchRows bounds Rows of every batch (default 256). n must be ≥ 1.
func WithMaxBatchRows(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return optionError("WithMaxBatchRows", n, "must be ≥ 1")
		}
		c.maxBatchRows = n
		return nil
	}
}

// WithMaxWait sets how long the oldest item of a bucket may wait before the
// bucket is emitted without being full (default 50ms). 0 emits a bucket as
// soon as the loop gets to it; d must not be negative.
func WithMaxWait(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return optionError("WithMaxWait", d, "must not be negative")
		}
		c.maxWait = d
		return nil
	}
}

// WithQueueSize sets the capacity of the input queue that Add feeds
// (default 1024). 0 makes every Add wait for the loop. n must be ≥ 0.
func WithQueueSize(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return optionError("WithQueueSize", n, "must be ≥ 0")
		}
		c.queueSize = n
		return nil
	}
}

// WithOutputSize sets the capacity of the Out channel (default 2). 0 makes
// every batch a hand-off to the consumer. n must be ≥ 0.
func WithOutputSize(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return optionError("WithOutputSize", n, "must be ≥ 0")
		}
		c.outputSize = n
		return nil
	}
}

// WithAllocator sets where batch buffers come from (default a new
// GoAllocator). a must not be nil and must be safe for concurrent use:
// Alloc runs on the batcher's goroutine, Free on whichever goroutine calls
// Batch.Release.
func WithAllocator(a Allocator) Option {
	return func(c *config) error {
		if a == nil {
			return optionError("WithAllocator", a, "must not be nil")
		}
		c.alloc = a
		return nil
	}
}

// WithTokenizer sets the Tokenizer used to encode batches (default
// NewTokenizer("")). Encoding does not validate: items must have been
// checked with Validate, by this Tokenizer or one with the same alphabet.
func WithTokenizer(t *Tokenizer) Option {
	return func(c *config) error {
		if t == nil {
			return optionError("WithTokenizer", t, "must not be nil")
		}
		c.tok = t
		return nil
	}
}
