package esm2graph

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/seqembed/seqembed/esm2graph/onnxpb"
)

// Output file layout (tools/esm2_graph.py save).
const (
	modelFile    = "model.onnx"
	manifestFile = "model.json"
	// externalThreshold: with external data, tensors smaller than this stay inline (onnx's
	// size_threshold=1024, compared with sys.getsizeof of the bytes: 33 bytes of object header).
	externalThreshold = 1024 - 33
	// externalAlign: external tensor offsets are page multiples (ONNX's advice, for mmap).
	externalAlign = 4096
)

// maxInline: initializers beyond this many bytes go to model.onnx.data (protobuf's 2 GB limit;
// tools/esm2_graph.py save's 1.8 GB). A variable for the tests.
var maxInline int64 = 1_800_000_000

// Build writes the fused ESM-2 graph of ck to outDir/model.onnx (weights over ~1.8 GB to
// model.onnx.data, which is otherwise removed if left from an earlier build) and its manifest
// outDir/model.json, and returns the manifest. The graph is tools/esm2_graph.py's build() in Go:
// same interface (int64 input_ids and attention_mask [batch, length] in, float32 embedding
// [batch, dim] out, mean over residues), same nodes, same initializer names. Weights stream from
// the checkpoint to disk one tensor at a time. Files are written under temporary names and
// renamed into place, so a failed or cancelled build (ctx is checked between tensors) leaves
// outDir's earlier model as it was.
func Build(ctx context.Context, ck *Checkpoint, outDir string, opts Options) (Manifest, error) {
	o, err := opts.resolve(ck)
	if err != nil {
		return Manifest{}, err
	}
	m := buildGraph(ctx, ck, o)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrWrite, err)
	}
	sum, err := writeModel(m, outDir)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return Manifest{}, fmt.Errorf("%w: %s: %w", ErrWrite, outDir, err)
		}
		return Manifest{}, err
	}
	man := manifest(ck, o, m, sum)
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrWrite, err)
	}
	if err := writeFileAtomic(filepath.Join(outDir, manifestFile), append(data, '\n')); err != nil {
		return Manifest{}, err
	}
	return man, nil
}

func manifest(ck *Checkpoint, o Options, m *onnxpb.Model, sum string) Manifest {
	cfg := ck.Config
	dtype := "float32"
	if o.FP16 {
		dtype = "float16"
	}
	requires, customOps := []string{}, ""
	if o.Attention == AttentionPacked || (o.CustomOps && !o.twin) {
		requires = []string{"cuda"}
	}
	ffnGelu := ""
	if o.FusedGELU {
		ffnGelu = "tanh"
	}
	precision := "fp32"
	switch {
	case o.Precision == PrecisionFP8 && !o.twin: // the twin's codes run on the CPU, in float32
		precision = PrecisionFP8
	case o.FP16:
		precision = PrecisionFP16
	}
	if o.CustomOps {
		customOps = CustomOpsLibrary
	}
	exp := Exported{By: producerName, Go: runtime.Version(), Format: ck.Format, ConfigFrom: ck.ConfigFrom}
	if o.Attention == AttentionMHA {
		exp.MaskForm = o.MaskForm
	} else {
		exp.PackedLayout = o.PackedLayout
	}
	output, pooling := "", ""
	var outs []OutputInfo
	for _, v := range m.Graph.Outputs {
		info := OutputInfo{Name: v.Name, Layer: cfg.NumHiddenLayers, Pooling: PoolMean, DType: "float32", Shape: []any{"batch", cfg.HiddenSize}}
		for _, x := range o.Outputs {
			if x.Name(cfg.NumHiddenLayers) == v.Name {
				info.Layer, info.Pooling = x.Layer, x.Pooling
			}
		}
		if v.ElemType == onnxpb.Float16 {
			info.DType = "float16"
		}
		if info.Pooling == PoolPerResidue {
			info.Shape = []any{"batch", "length", cfg.HiddenSize}
		}
		if v.Name == EmbeddingOutput {
			output, pooling = EmbeddingOutput, PoolMean
		}
		outs = append(outs, info)
	}
	if len(o.Outputs) == 0 {
		outs = nil // the default graph's manifest is the Python export's
	}
	return Manifest{
		Name: o.Name, Architecture: "esm2", Source: o.Source, ModelFile: modelFile, SHA256: sum,
		EmbeddingDim: cfg.HiddenSize, NumLayers: cfg.NumHiddenLayers, NumHeads: cfg.NumAttentionHeads,
		Alphabet: "esm", Residues: residues,
		Tokens:    Tokens{CLS: clsID, Pad: padID, EOS: eosID, Mask: maskID, Unk: unkID},
		MaxLength: o.MaxLength, Inputs: []string{"input_ids", "attention_mask"}, Output: output, Pooling: pooling, Outputs: outs,
		DType: dtype, Precision: precision, FP8Projections: o.FP8Projections, FFNGelu: ffnGelu, Opset: opsetVersion, Parity: nil, Optimized: opCounts(m.Graph.Nodes), Attention: o.Attention,
		Requires: requires, CustomOps: customOps, Exported: exp,
	}
}

// writeModel writes model.onnx (and model.onnx.data when the weights need it) and returns the
// sha256 of the two files' bytes in that order (what gpurun's VerifySHA256 computes).
func writeModel(m *onnxpb.Model, outDir string) (string, error) {
	var total int64
	for _, t := range m.Graph.Initializers {
		total += onnxpb.TensorProtoSize(t)
	}
	location := ""
	if total > maxInline {
		location = modelFile + ".data"
	}
	plan := m.Plan(location, externalThreshold, externalAlign)
	h := sha256.New()
	onnxPath, dataPath := filepath.Join(outDir, modelFile), filepath.Join(outDir, modelFile+".data")
	onnxTmp, err := writeTemp(outDir, modelFile, h, plan.WriteModel)
	if err != nil {
		return "", err
	}
	defer os.Remove(onnxTmp)
	dataTmp := ""
	if plan.External() {
		if dataTmp, err = writeTemp(outDir, modelFile+".data", h, plan.WriteData); err != nil {
			return "", err
		}
		defer os.Remove(dataTmp)
	}
	if dataTmp != "" {
		err = os.Rename(dataTmp, dataPath)
	} else if err = os.Remove(dataPath); errors.Is(err, os.ErrNotExist) {
		err = nil // no stale external data (gpurun would hash it with the model)
	}
	if err == nil {
		err = os.Rename(onnxTmp, onnxPath)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrWrite, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeTemp writes a temporary file beside name in dir with write, hashing what it writes.
func writeTemp(dir, name string, h hash.Hash, write func(io.Writer) error) (string, error) {
	f, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrWrite, err)
	}
	err = write(io.MultiWriter(f, h))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		if errors.Is(err, ErrCheckpoint) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return "", fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
		return "", fmt.Errorf("%w: %s: %w", ErrWrite, filepath.Join(dir, name), err)
	}
	return f.Name(), nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), filepath.Base(path), sha256.New(), func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	return nil
}
