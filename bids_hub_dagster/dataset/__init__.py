"""Rows to a typed dataset to embedded shards: the index table and its features, NIfTI
checks, shard planning and building (the pandas workaround, embedding strategies),
parquet writing, and the audit of built shards. datasets/pyarrow only; no Dagster."""
