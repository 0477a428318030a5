#!/usr/bin/env python3
"""Read seqembed's embeddings from JetStream with nats-py and pyarrow.

Each message on embeddings.<model> (stream EMBEDDINGS) is one Arrow IPC stream with columns
id (utf8), stream_seq (uint64), length (int32), truncated (bool), embedding
(fixed_size_list<float32>[dim]), seq_sha256 (utf8), description (utf8), input_length (int32),
stop_stripped (bool) and input_index (int64, -1 when unknown); the schema metadata names the
model and seqembed.version (2; version-1 messages have only the first five columns).

    pip install nats-py pyarrow numpy
    python3 consume.py --nats nats://localhost:4222 --model esm2-tiny --out emb.npz

Rows may repeat after a worker crash (at-least-once delivery): a record is its (id, seq_sha256),
keep the first row of each. An id that comes with two sequences (prokka's PROKKA_00001 in two
genomes) is two records: both are kept, and counted as an id conflict.
"""
import argparse
import asyncio

import numpy as np
import pyarrow as pa

# The identity and provenance columns of layout version 2, with what a version-1 row gets.
V2_COLUMNS = {"seq_sha256": "", "description": "", "input_length": -1, "stop_stripped": False, "input_index": -1}


def decode(data: bytes):
    """One message -> (metadata dict, ids, float32 matrix [rows, dim], dict of the other columns).

    The dict holds stream_seq, length, truncated and the V2_COLUMNS as Python lists (for a
    version-1 message the V2_COLUMNS hold their "unknown" values).
    """
    table = pa.ipc.open_stream(data).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    dim = int(meta["seqembed.dim"])
    emb = table.column("embedding").combine_chunks()
    matrix = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)  # fixed_size_list -> [rows, dim]
    cols = {name: table.column(name).to_pylist() for name in ("stream_seq", "length", "truncated")}
    for name, unknown in V2_COLUMNS.items():
        cols[name] = table.column(name).to_pylist() if name in table.column_names else [unknown] * table.num_rows
    return meta, table.column("id").to_pylist(), matrix, cols


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats", default="nats://localhost:4222")
    ap.add_argument("--model", required=True)
    ap.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds without a message")
    ap.add_argument("--out", help="write ids, seq_sha256, descriptions and embeddings to this .npz file")
    args = ap.parse_args()

    import nats  # nats-py
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    # An ephemeral ordered push consumer from the start of the stream.
    sub = await js.subscribe(f"embeddings.{args.model}", stream="EMBEDDINGS", ordered_consumer=True)
    seen, first_sha, conflicts = set(), {}, 0
    ids, shas, descs, rows = [], [], [], []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=args.idle)
            except nats.errors.TimeoutError:
                break
            meta, batch_ids, matrix, cols = decode(msg.data)
            for i, rid in enumerate(batch_ids):
                key = (rid, cols["seq_sha256"][i])
                if key in seen:  # dedupe: the first row of a record wins
                    continue
                seen.add(key)
                if first_sha.setdefault(rid, key[1]) != key[1]:
                    conflicts += 1  # the same id with another sequence: kept
                ids.append(rid)
                shas.append(key[1])
                descs.append(cols["description"][i])
                rows.append(matrix[i])
    finally:
        await nc.close()
    print(f"{len(ids)} embeddings of model {args.model}" + (f", dim {len(rows[0])}" if rows else "") +
          (f"; {conflicts} rows share their id with another sequence" if conflicts else ""))
    if args.out and rows:
        np.savez(args.out, ids=np.array(ids), seq_sha256=np.array(shas), descriptions=np.array(descs),
                 embeddings=np.stack(rows))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
