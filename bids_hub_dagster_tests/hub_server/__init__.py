"""An offline Hugging Face Hub for tests, and the ``hub_server`` pytest fixture that points the clients at it.

Register the ``hub_server`` fixture by importing it into a conftest (or a test module), then use it::

    from bids_hub_dagster_tests.hub_server import hub_server  # noqa: F401

    def test_publish(hub_server):
        api = HfApi()  # endpoint and token come from the patched environment
        api.create_repo("test-user/ds", repo_type="dataset")
        ...
        assert hub_server.files("test-user/ds")["README.md"].startswith(b"---")

For the duration of the test, the unmodified ``huggingface_hub`` and ``datasets`` of this process talk to the
server: ``HfApi()``, ``hf_hub_download``, ``HfFileSystem``, ``load_dataset``, ``push_to_hub`` need no endpoint
nor token argument. The Hub cache is a fresh directory. Without the fixture, build
``HubServer(root)`` yourself and call :func:`use_hub_server` with a ``monkeypatch``.

The fixture is named explicitly, so an alias registers it too: ``import hub_server as hub_server_fixture``
avoids ruff's F811 on test parameters named ``hub_server`` in the importing module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bids_hub_dagster.testing.hub_server import (
    DEFAULT_TOKEN,
    Commit,
    Fault,
    FileEntry,
    HubServer,
    RequestRecord,
)

READ_TOKEN = "hf_test_read_only_token"  # the fixture's server accepts it for reads; writes get 403

__all__ = [
    "DEFAULT_TOKEN",
    "READ_TOKEN",
    "Commit",
    "Fault",
    "FileEntry",
    "HubServer",
    "RequestRecord",
    "hub_server",
    "use_hub_server",
]


def use_hub_server(server: HubServer, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point ``huggingface_hub`` and ``datasets`` at the started ``server`` until ``monkeypatch`` is undone.

    Sets the environment (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_OFFLINE=0``, ...)
    and, because both libraries copy it into module constants at import time, patches those copies too.
    ``home`` becomes ``HF_HOME``: the Hub cache (``home/hub``), token files and ``datasets`` cache live there.
    Telemetry is disabled so that no request other than the test's own reaches the server.
    """
    import datasets.config
    from huggingface_hub import HfFileSystem, constants, hf_api, hf_file_system
    from huggingface_hub.utils import _http

    endpoint = server.endpoint
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": server.token,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    hub_constants = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in hub_constants.items():
        monkeypatch.setattr(constants, name, value)
    # Hosts trusted with the Authorization header when a redirect is followed, computed at import.
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    # Instances built at import: the HfApi behind huggingface_hub.create_repo(...) & co, and `hffs`.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(hf_file_system.hffs, "endpoint", endpoint)
    monkeypatch.setattr(hf_file_system.hffs._api, "endpoint", endpoint)
    monkeypatch.setattr(hf_file_system.hffs, "dircache", {})
    datasets_constants = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,  # else load_dataset HEADs an S3 URL on the internet
        "HF_CACHE_HOME": str(home),
        "HF_DATASETS_CACHE": home / "datasets",
        "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
        "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
    }
    for name, value in datasets_constants.items():
        monkeypatch.setattr(datasets.config, name, value)
    HfFileSystem.clear_instance_cache()  # cached instances hold the previous endpoint and listings


@pytest.fixture(name="hub_server")
def hub_server(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubServer]:
    """Fixture ``hub_server``: a started :class:`HubServer` (token :data:`DEFAULT_TOKEN`) the clients use.

    Register it with ``from bids_hub_dagster_tests.hub_server import hub_server  # noqa: F401``.
    """
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    with HubServer(tmp_path_factory.mktemp("hub-server"), read_token=READ_TOKEN) as server:
        use_hub_server(server, monkeypatch, tmp_path_factory.mktemp("hf-home"))
        try:
            yield server
        finally:
            HfFileSystem.clear_instance_cache()
            close_session()  # drop the pooled keep-alive connections to this server
