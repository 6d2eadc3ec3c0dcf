"""Resources: the Hugging Face Hub credentials every Hub destination is opened with."""

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ..publish.destinations import Destination, DestinationError
from ..publish.hub import Backoff
from ..publish.publication import parse_destination
from ..spec import DatasetSpec
from ..storage import is_remote
from .io_managers import default_storage_dir

HUB_RESOURCE_KEY = "hf_hub"  # the resource key; the pool hub_upload runs in is names.HUB_POOL


class HubResource(dg.ConfigurableResource):
    """Token and endpoint for ``hf://`` destinations.

    Configure the token as ``dg.EnvVar("HF_TOKEN")`` so that the UI shows the variable's
    name, never the secret. Without a token, ``huggingface_hub`` looks up the saved login.
    ``endpoint`` defaults to ``HF_ENDPOINT`` or https://huggingface.co.
    """

    token: str | None = None
    endpoint: str | None = None
    retry_attempts: int = Backoff.attempts  # tries of each Hub call on 429, 5xx and dropped connections
    retry_base_seconds: float = Backoff.base  # first wait; doubles each try, or the server's Retry-After

    def destination(self, spec: DatasetSpec, progress: Callable[[str], None] | None = None) -> Destination:
        """The spec's destination; Hub ones are opened with this resource's token and endpoint."""
        if not spec.destination:
            raise DestinationError(
                f"dataset {spec.name!r} has no destination: set `destination:` in its spec."
            )
        return parse_destination(
            spec.destination,
            hub=spec.hub,
            token=self.token,
            endpoint=self.endpoint,
            backoff=Backoff(attempts=self.retry_attempts, base=self.retry_base_seconds),
            progress=progress,
            sources=spec.source_folders(),
            tool_folders=tool_folders(),
        )


def tool_folders() -> tuple[Path, ...]:
    """The folders of the tool itself, which no destination may be or lie inside: the shard
    storage, and the folders where the Dagster instance keeps its runs, event logs and logs.
    (Other folders under ``$DAGSTER_HOME``, like the UI demo's, may hold a publication.)"""
    storage = default_storage_dir()
    folders = [] if is_remote(storage) else [Path(storage)]  # a URL holds no local destination
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"])
        folders += [home / "storage", home / "history", home / "schedules", home / "logs"]
    return tuple(folders)


def hub_resource() -> HubResource:
    """The token from ``HF_TOKEN`` when it is set (by name, so it is never shown), else the saved login."""
    if os.environ.get("HF_TOKEN"):
        return HubResource(token=dg.EnvVar("HF_TOKEN"))
    return HubResource()
