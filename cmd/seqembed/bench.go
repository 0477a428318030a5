package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/internal/benchrun"
	"github.com/seqembed/seqembed/internal/cli"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

// `seqembed bench`: flags and printing; the measuring is internal/benchrun.

func runBenchCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var cfg pipeline.Config
	registerWorkerFlags(fs, &cfg, modelFlags...)
	fastaPath := fs.String("fasta", "", "FASTA file to embed (plain, .gz, .xz, .zst or .bz2) (required)")
	raw := fs.Bool("raw", false, "run the same batches through ONNX Runtime alone (no NATS, no Arrow), to price the pipeline")
	jsonOut := fs.String("json-out", "", "append the result as one JSON line to this file")
	report := fs.String("report", "", "write summary.md and the data for plots ("+benchrun.FileSeries+", "+benchrun.FileResult+", "+
		benchrun.FileMeta+") into the directory `DIR`; 'seqembed-lab plot DIR' draws the PNG plots (throughput over time, "+
		"batch padding, GPU busy, batch rows) and adds them to summary.md")
	sinkFormat := fs.String("sink-format", "parquet", "end to end: the format of the embeddings file the sink writes, parquet or arrow (Arrow IPC file: much faster for per-residue float16 states)")
	cpuProfile := fs.String("cpuprofile", "", "write a Go CPU profile of the whole run (publisher, embedded server, worker, sink) to `FILE` (go tool pprof)")
	procs := fs.Bool("worker-procs", false, "end to end with one 'seqembed worker' process per device of --device "+
		"(each given one device, sharing the durable consumer) instead of one worker driving all of them")
	setUsage(fs, "usage: seqembed bench --fasta FILE [flags]\n\n"+
		"Measures throughput end to end (embedded JetStream, worker, sink) or, with --raw, ONNX Runtime alone, and\n"+
		"prints the result as one JSON line.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *fastaPath == "" {
		return cli.Usagef("--fasta FILE is required")
	}
	format, err := arrowout.FileFormat(*sinkFormat, "")
	if err != nil {
		return cli.Usagef("--sink-format %q: want %s or %s", *sinkFormat, arrowout.FormatParquet, arrowout.FormatArrow)
	}
	if *procs && (*raw || *report != "") {
		return cli.Usagef("--worker-procs measures end to end only, without --raw or --report")
	}
	log, err := telemetry.NewLogger("warn", "console")
	if err != nil {
		return err
	}
	if err := resolveHFModel(ctx, &cfg, os.Stderr); err != nil {
		return err
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	res, series, err := benchrun.Run(ctx, benchrun.Job{Config: cfg, FASTA: *fastaPath, Raw: *raw, WorkerProcs: *procs,
		Procs: benchrun.ProcsOptions{WorkerArgs: workerFlagArgs(fs), Command: workerCommand}, SinkFormat: format, Log: log})
	if err != nil {
		return err
	}
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	printBench(res)
	if *report != "" {
		meta := benchrun.Meta{Date: time.Now(), Input: *fastaPath, Args: args}
		if err := benchrun.WriteReport(*report, res, series, meta); err != nil {
			return fmt.Errorf("bench report: %w", err)
		}
		fmt.Fprintf(os.Stderr, "bench report: %s (plots: seqembed-lab plot %s)\n", filepath.Join(*report, benchrun.FileSummary), *report)
	}
	if *jsonOut != "" {
		f, err := os.OpenFile(*jsonOut, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(f, string(line)); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	return nil
}

// printBench is the human line of a result, on stderr (stdout has the JSON line).
func printBench(res benchrun.Result) {
	util := "n/a"
	if res.GPUUtil >= 0 {
		util = fmt.Sprintf("%.1f%%", 100*res.GPUUtil)
	}
	if res.WorkerProcs > 0 { // batches, padding, busy and latency live in the worker processes
		fmt.Fprintf(os.Stderr, "bench %s %s inflight=%d, %d worker processes: %.0f residues/s, %.1f seq/s, GPU util %s\n",
			res.Mode, res.Device, res.Inflight, res.WorkerProcs, res.ResiduesPerSec, res.SequencesPerSec, util)
	} else {
		fmt.Fprintf(os.Stderr, "bench %s %s inflight=%d cuda-graphs=%t: %.0f residues/s, %.1f seq/s, padding %.3f, runner busy %.1f%%, GPU util %s, p50 %.0f ms, p99 %.0f ms\n",
			res.Mode, res.Device, res.Inflight, res.CUDAGraphs, res.ResiduesPerSec, res.SequencesPerSec, res.PaddingEfficiency,
			100*res.RunnerBusy, util, res.LatencyP50Ms, res.LatencyP99Ms)
	}
	if len(res.GPUUtilPerDevice) > 0 {
		fmt.Fprintf(os.Stderr, "bench: GPU util per device %v\n", res.GPUUtilPerDevice)
	}
	if res.SlowConsumers > 0 {
		fmt.Fprintf(os.Stderr, "bench: the embedded NATS server dropped %d slow connection(s): the figure includes records waiting out their AckWait\n", res.SlowConsumers)
	}
}

// workerCommand is the command `bench --worker-procs` runs as `seqembed ARGS...`; nil runs this
// executable. Tests replace it (the test binary as seqembed, see TestMain).
var workerCommand func(args ...string) (*exec.Cmd, error)

// workerFlagArgs turns the worker flags set on the bench's command line (fs) into arguments for
// `seqembed worker`; bench-only flags are left out.
func workerFlagArgs(fs *flag.FlagSet) []string {
	wfs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var cfg pipeline.Config
	registerConfig(wfs, &cfg)
	var args []string
	fs.Visit(func(f *flag.Flag) {
		if wfs.Lookup(f.Name) != nil {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	return args
}

// startCPUProfile starts the process's CPU profile into path; stop ends it and closes the file.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile %s: %w", path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "--cpuprofile %s: %v\n", path, err)
		}
	}, nil
}
