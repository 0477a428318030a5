package benchrun

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/seqembed/seqembed/arrowout"
	"github.com/seqembed/seqembed/batcher"
	"github.com/seqembed/seqembed/gpurun"
	"github.com/seqembed/seqembed/ingest"
	"github.com/seqembed/seqembed/internal/localrun"
	"github.com/seqembed/seqembed/pipeline"
	"github.com/seqembed/seqembed/telemetry"
)

// Procs is `bench --worker-procs`: this process hosts the embedded JetStream server, the
// publisher and the sink, and starts one `seqembed worker` process per device of cfg.Device,
// each given that device alone, all pulling from the one durable consumer: the
// one-process-per-GPU deployment, to compare with one worker process driving every device
// (--device cuda:0,cuda:1). Timing starts at the first publish, after every worker reports ready
// (model loaded, shapes warmed up). Batches, padding, busy and latency live in the worker
// processes: the result has Batches and RunnerBusy -1. gpu may be nil.
func Procs(ctx context.Context, cfg pipeline.Config, path string, opts ProcsOptions, log *zap.Logger, gpu *GPUMeter) (Result, error) {
	if log == nil {
		log = zap.NewNop()
	}
	command := opts.Command
	if command == nil {
		command = selfCommand
	}
	devs, err := gpurun.ParseDevices(cfg.Device)
	if err != nil {
		return Result{}, err
	}
	man, err := gpurun.LoadManifest(cfg.ModelDir)
	if err != nil {
		return Result{}, err
	}
	residues, err := truncatedResidues(path, man)
	if err != nil {
		return Result{}, err
	}
	dir, err := os.MkdirTemp("", "seqembed-bench-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	srv, stopServer, err := localrun.EmbeddedServer()
	if err != nil {
		return Result{}, err
	}
	defer stopServer()
	nc, err := localrun.DialEmbedded(srv, "seqembed-bench-sink", log)
	if err != nil {
		return Result{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return Result{}, err
	}

	died := make(chan error, len(devs))
	var procs []*exec.Cmd
	defer func() { stopProcs(procs, died, 30*time.Second) }()
	// One at a time: the first creates the streams and the durable consumer; the others find them.
	for _, d := range devs {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return Result{}, err
		}
		args := append([]string{"worker", "--nats", srv.ClientURL(), "--http-addr", addr,
			"--log-level", "warn", "--log-format", "console"}, opts.WorkerArgs...)
		cmd, err := command(append(args, "--device", d.String())...)
		if err != nil {
			return Result{}, err
		}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return Result{}, err
		}
		procs = append(procs, cmd)
		go func() { died <- fmt.Errorf("worker on %s exited: %v", d, cmd.Wait()) }()
		if err := waitReady(ctx, "http://"+addr+"/readyz", died, 5*time.Minute); err != nil {
			return Result{}, fmt.Errorf("worker on %s: %w", d, err)
		}
	}

	fs, err := arrowout.NewFileSink("", filepath.Join(dir, "out.parquet"))
	if err != nil {
		return Result{}, err
	}
	sink := arrowout.StartSink(ctx, js, cfg.OutStream, arrowout.Subject(man.Name, ""), fs, nil)
	defer sink.Finish()
	start := time.Now()
	pub, err := ingest.PublishFASTA(ctx, nc, path, man.Name, nil, log)
	if err != nil {
		return Result{}, err
	}
	embedded, _, err := localrun.WaitAllDone(ctx, js, cfg.InStream, man.Name, "", sink, pub.Stored+pub.DeadLettered,
		telemetry.NewProgress(0, "", nil, false), died)
	if err != nil {
		return Result{}, err
	}
	end := time.Now()
	res := Result{Mode: "e2e", WorkerProcs: len(devs), Sequences: embedded, Residues: residues,
		Seconds: end.Sub(start).Seconds(), Batches: -1, RunnerBusy: -1, Model: man.Name, DType: man.DType,
		SlowConsumers: srv.NumSlowConsumers()}
	res.GPUUtil, res.GPUUtilPerDevice = gpu.Mean(start, end), gpu.PerDevice(start, end)
	return finish(res, cfg), nil
}

// selfCommand runs `seqembed ARGS...` as this executable (Procs is called by seqembed bench).
func selfCommand(args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, args...), nil
}

// truncatedResidues counts the residues a worker embeds from path: valid records, each cut at the
// model's max length (what the worker's own statistics and raw mode report).
func truncatedResidues(path string, man *gpurun.Manifest) (int64, error) {
	tok, err := batcher.NewTokenizer(man.Residues)
	if err != nil {
		return 0, err
	}
	var n int64
	err = EachEmbeddable(path, tok, man.MaxLength, func(_ string, seq []byte) error {
		n += int64(len(seq))
		return nil
	})
	return n, err
}

// freeLoopbackAddr is a loopback address with a port that was free a moment ago.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitReady polls url until it answers 200, a process dies (died) or timeout passes.
func waitReady(ctx context.Context, url string, died chan error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w", ctx.Err())
		case err := <-died:
			died <- err
			return err
		case <-tick.C:
		}
	}
}

// stopProcs SIGTERMs the worker processes and waits for all to exit (each sends on died), killing
// those still running after grace.
func stopProcs(procs []*exec.Cmd, died chan error, grace time.Duration) {
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(grace)
	for exited := 0; exited < len(procs); {
		select {
		case <-died:
			exited++
		case <-deadline:
			for _, p := range procs {
				_ = p.Process.Kill()
			}
			deadline = nil // every process now dies; keep collecting
		}
	}
}
