// Package esm2graph builds seqembed's fused ESM-2 ONNX graph straight from a published
// checkpoint, in Go: no Python, torch or onnx at run time. It is tools/esm2_graph.py's build()
// and tools/export_esm2.py's --fused manifest, ported.
//
//	ck, err := esm2graph.Load("esm2_t33_650M_UR50D")  // HF dir, .safetensors, fair-esm .pt, .bin
//	defer ck.Close()
//	man, err := esm2graph.Build(ctx, ck, "models/esm2-650m", esm2graph.Options{FP16: true})
//
// Load reads a Hugging Face directory (config.json with model.safetensors, sharded safetensors
// or pytorch_model.bin; names with or without EsmForMaskedLM's "esm." prefix), a .safetensors
// file, or a fair-esm .pt checkpoint (torch.save zip; its cfg as a dict, argparse.Namespace or
// omegaconf config, or, when that cannot be read, sizes from the tensor shapes and the head count
// from the rotary inv_freq buffer or the published ESM-2 table). Sub-packages do the reading and
// writing: safetensors, torchpt (torch.save zips, with a small pickle reader that executes
// nothing) and onnxpb (ONNX protobuf, hand-encoded with protowire, weights streamed to disk).
//
// Build writes model.onnx (model.onnx.data past ~1.8 GB of weights) and model.json: attention
// "mha" (padded, key lengths or a 2-D key mask; CPU and CUDA) or "packed" (padding removed in the
// graph; CUDA only), or "auto" (tools/export_esm2.py's rule on CUDA: mha up to hidden size 480,
// packed above; mha on the CPU); float32 or float16 weights; ORT's RotaryEmbedding or seqembed's
// ai.seqembed.BiasRotary custom op. gpurun runs the result like a Python-exported model.
package esm2graph
