"""Dagster wiring only: the asset factory, IO managers, jobs and Definitions."""

import warnings

import dagster as dg

from .definitions import build_definitions, job_names
from .names import DatasetNames, names

# Data versions on outputs (beta) and partitioned asset checks (preview) are what the UI's
# staleness and per-shard checks rest on; their warnings would print on every run.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

__all__ = ["DatasetNames", "build_definitions", "job_names", "names"]
