package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CPUOps builds seqembed's custom-op library in its CPU-only form (scripts/build-ops.sh OUT cpu,
// with g++: the ops' float32 twins, BiasRotaryF32, Fp16LinearF32, ...) into the test's temporary
// directory and returns its path. Without g++ it skips the test, except in CI (make test installs
// what every test needs), where it fails.
func CPUOps(t testing.TB) string {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("CI") != "" {
		skip = t.Fatalf
	}
	if _, err := exec.LookPath("g++"); err != nil {
		skip("g++ not installed: cannot build the custom-op library")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	script := ""
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "scripts", "build-ops.sh")); err == nil {
			script = filepath.Join(d, "scripts", "build-ops.sh")
			break
		}
		if filepath.Dir(d) == d {
			t.Fatalf("no scripts/build-ops.sh above %s", dir)
		}
	}
	lib := filepath.Join(t.TempDir(), "libseqembed_ops.so")
	if out, err := exec.Command(script, lib, "cpu").CombinedOutput(); err != nil {
		t.Fatalf("build-ops.sh: %v\n%s", err, out)
	}
	return lib
}
