#!/usr/bin/env python3
"""Read seqembed's embeddings from JetStream with nats-py and pyarrow.

Each message on embeddings.<model> (stream EMBEDDINGS) is one Arrow IPC stream with columns
id (utf8), stream_seq (uint64), length (int32), truncated (bool) and
embedding (fixed_size_list<float32>[dim]); the schema metadata names the model.

    pip install nats-py pyarrow numpy
    python3 consume.py --nats nats://localhost:4222 --model esm2-tiny --out emb.npz

Rows may repeat after a worker crash (at-least-once delivery): keep the first row per id.
"""
import argparse
import asyncio

import numpy as np
import pyarrow as pa


def decode(data: bytes):
    """One message -> (metadata dict, ids list, float32 matrix [rows, dim], truncated flags)."""
    reader = pa.ipc.open_stream(data)
    table = reader.read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    dim = int(meta["seqembed.dim"])
    emb = table.column("embedding").combine_chunks()
    matrix = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)  # fixed_size_list -> [rows, dim]
    return meta, table.column("id").to_pylist(), matrix, table.column("truncated").to_pylist()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats", default="nats://localhost:4222")
    ap.add_argument("--model", required=True)
    ap.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds without a message")
    ap.add_argument("--out", help="write ids and embeddings to this .npz file")
    args = ap.parse_args()

    import nats  # nats-py
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    # An ephemeral ordered push consumer from the start of the stream.
    sub = await js.subscribe(f"embeddings.{args.model}", stream="EMBEDDINGS", ordered_consumer=True)
    seen, ids, rows = set(), [], []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=args.idle)
            except nats.errors.TimeoutError:
                break
            meta, batch_ids, matrix, _ = decode(msg.data)
            for i, rid in enumerate(batch_ids):
                if rid not in seen:  # dedupe: first row per id wins
                    seen.add(rid)
                    ids.append(rid)
                    rows.append(matrix[i])
    finally:
        await nc.close()
    print(f"{len(ids)} embeddings of model {args.model}" + (f", dim {len(rows[0])}" if rows else ""))
    if args.out and rows:
        np.savez(args.out, ids=np.array(ids), embeddings=np.stack(rows))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
