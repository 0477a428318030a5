package testutil

import (
	"os"
	"syscall"
	"testing"
)

// FIFO makes a named pipe at path (as bash's <(zcat f.gz) gives a reader) and writes data into it
// from a goroutine once a reader opens it; the returned channel gets the write's error when done.
func FIFO(t testing.TB, path string, data []byte) <-chan error {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			wrote <- err
			return
		}
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		wrote <- err
	}()
	return wrote
}
