"""Shards to a destination: the destination protocol and the local folder, the Hub repo
(``hub/``), the manifest of what a publication wrote, shard digests, the dataset card and
verification. datasets/pyarrow/huggingface_hub only; no Dagster."""
