package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/pipeline"
)

// The subsets of the worker's flags (registerConfig) that other commands take, so that each
// command's -h lists only what it uses.
var (
	// modelFlags are the model, device and batching flags: what `run` and `bench` use.
	modelFlags = []string{"model", "device", "threads", "max-batch-tokens", "max-batch-rows", "max-wait", "bucket-step",
		"overlength", "chunk-window", "chunk-stride", "max-record-bytes", "cuda-options", "cuda-graphs", "graph-copy-overlap", "graph-sessions", "inflight", "max-held-tokens"}
	// streamFlags are the stream and durable consumer flags: what `streams` sets up.
	streamFlags = []string{"in-stream", "out-stream", "ack-wait", "max-ack-pending", "max-deliver", "replicas",
		"in-max-bytes", "out-max-bytes", "max-age"}
)

// registerWorkerFlags registers on fs only the named flags of the worker's (registerConfig), with
// the worker's help text and defaults, each filling its field of c; every other field of c gets
// its default (pipeline.Default). A name that is no worker flag panics: the lists above are
// checked by the tests.
func registerWorkerFlags(fs *flag.FlagSet, c *pipeline.Config, names ...string) {
	all := flag.NewFlagSet("worker", flag.ContinueOnError)
	registerConfig(all, c)
	for _, n := range names {
		f := all.Lookup(n)
		if f == nil {
			panic("seqembed: no worker flag --" + n)
		}
		fs.Var(f.Value, f.Name, f.Usage)
	}
}

// setUsage sets fs's -h text: the synopsis line(s), a blank line, the flags.
func setUsage(fs *flag.FlagSet, synopsis string) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nflags:\n", strings.TrimRight(synopsis, "\n"))
		fs.PrintDefaults()
	}
}

// envNotFlags are SEQEMBED_ variables with a meaning of their own that a flag's name would
// otherwise claim: SEQEMBED_CUSTOM_OPS is the custom-op library's path (gpurun; the GPU image
// sets it), not model build's boolean --custom-ops.
var envNotFlags = map[string]bool{"SEQEMBED_CUSTOM_OPS": true}

// applyEnv sets every flag of fs from its SEQEMBED_<NAME> environment variable, if set (upper
// case, '-' as '_'; not those of envNotFlags); a bad value is a usage error.
func applyEnv(fs *flag.FlagSet) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "SEQEMBED_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if envNotFlags[key] {
			return
		}
		if v, ok := os.LookupEnv(key); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = cli.Usagef("invalid value %q for --%s from %s: %w", v, f.Name, key, err)
			}
		}
	})
	return envErr
}

// parse parses args on fs with the flag package's own messages silenced: -h prints fs's usage to
// stderr and returns flag.ErrHelp; an unknown flag or bad value is a *cli.UsageError (Main
// prints it once, with a pointer to -h).
func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage() // flag.NewFlagSet sets a default
		return flag.ErrHelp
	}
	if err != nil {
		return &cli.UsageError{Err: err}
	}
	return nil
}

// parseArgs parses a command line of flags and positional arguments (input files) in any order:
// every argument that is not a flag or a flag's value is positional ("-", standard input, too),
// and so is everything after "--". Flags take their defaults from the environment first
// (applyEnv). It returns the positional arguments in order.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	if err := applyEnv(fs); err != nil {
		return nil, err
	}
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := args[:len(args)-len(rest)]; len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// byteSize is a flag.Value of a byte count: a number with an optional unit (B, KB, MB, GB, TB
// powers of 1000; KiB, MiB, GiB, TiB powers of 1024; case-insensitive), e.g. 1073741824, 10GiB, 500MB.
type byteSize struct{ n *int64 }

func (b byteSize) String() string {
	if b.n == nil {
		return "0"
	}
	return bytesString(uint64(max(*b.n, 0)))
}

func (b byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b.n = n
	return nil
}

func parseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	units := map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
	mult, ok := units[unit]
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" || v < 0 || v*mult > 1<<62 {
		return 0, fmt.Errorf("%q: want a byte count such as 1073741824, 10GiB or 500MB", s)
	}
	return int64(v * mult), nil
}
