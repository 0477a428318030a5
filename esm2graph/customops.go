package esm2graph

import (
	"fmt"
	"os"
	"path/filepath"
)

// LocateCustomOps finds the custom-op library a CustomOps graph in modelDir will load, the way
// gpurun's Manifest.CustomOpsPath does: modelDir/libseqembed_ops.so, else $SEQEMBED_CUSTOM_OPS.
// ok is false when neither exists (build it with scripts/build-ops.sh DIR/libseqembed_ops.so).
func LocateCustomOps(modelDir string) (path string, ok bool) {
	p := filepath.Join(modelDir, CustomOpsLibrary)
	if _, err := os.Stat(p); err == nil {
		return p, true
	}
	if env := os.Getenv("SEQEMBED_CUSTOM_OPS"); env != "" {
		if _, err := os.Stat(env); err == nil {
			return env, true
		}
	}
	return p, false
}

// CustomOpsFallback is the one log line for a caller that was asked for custom ops but builds
// without them (the library is absent: reason says why), with what that costs as measured in
// docs/perf.md (2026-11-25, ESM-2 650M fp16 packed on an H100, end to end, inflight 2): 270,630
// residues/s with ORT's Add + RotaryEmbedding against 309,720 with ai.seqembed.BiasRotary.
func CustomOpsFallback(reason string) string {
	return fmt.Sprintf("custom ops: %s; building with ONNX Runtime's Add + RotaryEmbedding instead of "+
		"ai.seqembed.BiasRotary, which measured about 13%% fewer residues/s on ESM-2 650M fp16 packed "+
		"(H100, end to end: 270,630 vs 309,720, 1.95x vs 2.23x PyTorch; docs/perf.md); build the library with "+
		"scripts/build-ops.sh MODEL_DIR/%s and rebuild for the fast path", reason, CustomOpsLibrary)
}
