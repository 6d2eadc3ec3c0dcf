"""Dagster-free policy the orchestration follows: data versions and what is stale."""
