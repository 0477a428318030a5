package pipeline

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/seqembed/seqembed/gpurun"
)

// cudaNeeds are the files a CUDA device needs before ONNX Runtime is asked for one: the NVIDIA
// kernel driver's proc entry and ONNX Runtime's CUDA provider libraries next to its library.
type cudaNeeds struct {
	driver string // /proc/driver/nvidia/version
	ortLib string // gpurun.LibraryPath()
}

// cudaPreflight fails, in one sentence, when a CUDA device in devs cannot work here: no NVIDIA
// driver, or an ONNX Runtime build without the CUDA provider (the npm package's is CPU-only).
// Without it the user meets ONNX Runtime's "Failed to load library
// libonnxruntime_providers_shared.so" from deep inside session creation. A missing CUDA runtime
// or cuDNN is only found by loading the provider: sessionHint words that error.
func cudaPreflight(devs []gpurun.Device, n cudaNeeds) error {
	cuda := ""
	for _, d := range devs {
		if d.Kind == "cuda" {
			cuda = d.String()
			break
		}
	}
	if cuda == "" {
		return nil
	}
	var missing []string
	if _, err := os.Stat(n.driver); err != nil {
		missing = append(missing, "the NVIDIA driver (no "+n.driver+": no GPU, or the container was started without one)")
	}
	dir := filepath.Dir(n.ortLib)
	var libs []string
	for _, lib := range []string{"libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"} {
		if _, err := os.Stat(filepath.Join(dir, lib)); err != nil {
			libs = append(libs, lib)
		}
	}
	if len(libs) > 0 {
		missing = append(missing, fmt.Sprintf("ONNX Runtime's CUDA provider (no %s next to %s, a CPU-only build: point ONNXRUNTIME_SHARED_LIBRARY_PATH at a GPU build, README \"GPU\")",
			strings.Join(libs, " or "), n.ortLib))
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: --device %s cannot run here: missing %s; --device cpu runs on the CPU", ErrDevice, cuda, strings.Join(missing, ", and "))
}

// sessionHint words a CUDA provider's load failure (the CUDA runtime, cuBLAS or cuDNN missing)
// in one sentence; other errors are returned as they are.
func sessionHint(dev gpurun.Device, err error) error {
	msg := err.Error()
	if dev.Kind != "cuda" || !strings.Contains(msg, "Failed to load library") {
		return err
	}
	what := "a library the CUDA provider needs"
	for _, l := range []struct{ lib, name string }{{"libcudart", "the CUDA runtime"}, {"libcublas", "cuBLAS"}, {"libcudnn", "cuDNN"},
		{"libcufft", "cuFFT"}, {"libcurand", "cuRAND"}, {"providers_cuda", "ONNX Runtime's CUDA provider"}} {
		if strings.Contains(msg, l.lib) {
			what = l.name
			break
		}
	}
	return fmt.Errorf("%w: --device %s cannot run here: %s is missing or does not load (install it, or add its directory to LD_LIBRARY_PATH); --device cpu runs on the CPU: %w",
		ErrDevice, dev, what, err)
}
