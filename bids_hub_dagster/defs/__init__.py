"""Dagster wiring only: the asset factory, IO managers, jobs and Definitions."""

from .definitions import build_definitions, job_names

__all__ = ["build_definitions", "job_names"]
