package main

import (
	"os"
	"os/exec"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/seqembed/seqembed/internal/e2etest"
)

// startWorkerProcess runs `seqembed worker --nats <srv> --model <tiny> <flags>` as a child
// process (the test binary, see TestMain) with env added to its environment; exited gets what
// cmd.Wait returns. $SEQEMBED_TEST_WORKER_FLAGS is appended to the flags (later flags win): on the
// GPU machine it puts the child on CUDA, e.g. "--device cuda:0 --model DIR --cuda-graphs on".
func startWorkerProcess(t *testing.T, srv *server.Server, flags string, env ...string) (cmd *exec.Cmd, exited chan error) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...),
		"SEQEMBED_TEST_MAIN=worker --nats "+srv.ClientURL()+" --model "+e2etest.TinyModel+" "+flags+" "+os.Getenv("SEQEMBED_TEST_WORKER_FLAGS"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return cmd, exited
}
