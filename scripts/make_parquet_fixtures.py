#!/usr/bin/env python3
"""Writes the Parquet test fixtures with pyarrow (an implementation independent of the Rust reader).
Usage: pip install pyarrow && python3 scripts/make_parquet_fixtures.py"""
import pyarrow as pa, pyarrow.parquet as pq

out = "crates/dpo/tests/fixtures/"
explicit = pa.table({"prompt": ["Q:", "The film was", "dup"], "chosen": [" yes", " great", " same"],
                     "rejected": [" no", " awful", " same"], "extra": [1, 2, 3]})
pq.write_table(explicit, out + "explicit.snappy.parquet", compression="snappy")
pq.write_table(explicit, out + "explicit.zstd.parquet", compression="zstd")
msg = lambda role, content: {"role": role, "content": content}
conv = pa.table({
    "prompt": [[msg("user", "hi")]],
    "chosen": [[msg("assistant", "hello")]],
    "rejected": [[msg("assistant", "go away")]],
})
pq.write_table(conv, out + "conversational.parquet")
missing = pa.table({"prompt": ["a"], "chosen": ["b"]})
pq.write_table(missing, out + "missing_rejected.parquet")
# KTO's unpaired rows (TRL's unpaired preference type): a boolean label per completion.
unpaired = pa.table({"prompt": ["Q:", "Q:", "The film was"], "completion": [" yes", " no", " great"],
                     "label": [True, False, True]})
pq.write_table(unpaired, out + "unpaired.parquet", compression="snappy")
