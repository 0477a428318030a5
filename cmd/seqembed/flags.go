package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/pipeline"
)

// The subsets of the worker's flags (registerConfig) that other commands take, so that each
// command's -h lists only what it uses.
var (
	// modelFlags are the model, device and batching flags: what `run` and `bench` use.
	modelFlags = []string{"model", "device", "threads", "max-batch-tokens", "max-batch-rows", "max-wait", "bucket-step",
		"overlength", "max-record-bytes", "cuda-options", "cuda-graphs", "inflight", "max-held-tokens"}
	// streamFlags are the stream and durable consumer flags: what `streams` sets up.
	streamFlags = []string{"in-stream", "out-stream", "ack-wait", "max-ack-pending", "max-deliver", "replicas"}
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

// applyEnv sets every flag of fs from its SEQEMBED_<NAME> environment variable, if set (upper
// case, '-' as '_'); a bad value is a usage error.
func applyEnv(fs *flag.FlagSet) error {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		key := "SEQEMBED_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
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
