package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run the real command in a child process: with SEQEMBED_TEST_MAIN set to
// the arguments, the test binary is seqembed.
func TestMain(m *testing.M) {
	if args := os.Getenv("SEQEMBED_TEST_MAIN"); args != "" {
		os.Args = append([]string{"seqembed"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSIGTERM runs `seqembed worker` as a process, sends it SIGTERM mid-stream and checks that it
// exits 0 promptly and loses nothing: a second worker finishes the rest, every id is output.
func TestSIGTERM(t *testing.T) {
	ctx, srv, nc, js := ortServer(t, 90*time.Second)

	cmd, exited := startWorkerProcess(t, srv, "--threads 1 --http-addr 127.0.0.1:0 --log-level warn --max-batch-rows 8")

	recs := map[string]string{}
	for i := range 300 {
		recs[fmt.Sprint("s", i)] = strings.Repeat("MKTAYIAKQRQISFVKSHFSRQ", 1+i%20)
	}
	// The child creates the streams; wait for them before publishing.
	if err, gone := waitForStreams(t, ctx, js, exited); gone {
		t.Fatalf("worker exited early: %v", err)
	}
	publishRecords(t, js, "esm2-tiny", recs)
	outputIDs(t, js, 1) // mid-stream
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("worker exit after SIGTERM: %v", err)
		}
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		t.Fatal("worker did not exit within 40s of SIGTERM")
	}
	// A second worker picks up what the first left; nothing is lost.
	w, stop := startWorker(t, ctx, testConfig(t), nc, nil)
	seen := outputIDs(t, js, len(recs))
	stop()
	for id := range recs {
		if seen[id] == 0 {
			t.Errorf("%s lost", id)
		}
	}
	waitQueueEmpty(t, js, w.model)
}
