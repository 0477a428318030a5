// Package precision checks a model against a reference before it is trusted: a quantised export
// (float16, FP8) against the float32 model it came from, or against a golden file of PyTorch
// embeddings (tools/export_esm2.py --golden-out). Embed runs a FASTA file through a model as the
// worker does (pipeline.Engine, its batcher and devices; no NATS), EmbedGolden runs a golden
// file's sequences, and Compare matches the two sets by id and reports the cosine of each
// sequence's pair of vectors and how far each sequence's 10 nearest neighbours agree (the
// retrieval a user of the embeddings does). `seqembed check-precision` is its command line.
package precision
