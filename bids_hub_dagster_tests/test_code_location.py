"""The code location: BIDS_HUB_SPECS selects the datasets; `dagster` loads workspace.yaml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from bids_hub_dagster.definitions import load_definitions
from bids_hub_dagster.demo import build_demo_bids

REPO = Path(__file__).resolve().parents[1]


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_default_is_the_demo_dataset():
    keys = asset_keys(load_definitions())
    assert keys == {
        "demo/bids_files",
        "demo/bids_index",
        "demo/hf_dataset",
        "demo/hub_shards",
        "demo/hub_upload",
    }
    assert (Path(os.environ["DAGSTER_HOME"]) / "demo" / "bids" / "dataset_description.json").is_file()


def test_specs_folder_gives_one_group_per_spec(tmp_path, monkeypatch):
    build_demo_bids(tmp_path / "bids")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text("name: alpha\nbids_root: ../bids\ndestination: ../out/a\n")
    (specs / "b.yml").write_text("name: beta\nbids_root: ../bids\nrow: subject\ndestination: ../out/b\n")
    monkeypatch.setenv("BIDS_HUB_SPECS", str(specs))
    defs = load_definitions()
    keys = asset_keys(defs)
    assert {"alpha/hub_shards", "beta/hub_upload"} <= keys and len(keys) == 10
    groups = {n.group_name for n in defs.resolve_asset_graph().asset_nodes}
    assert groups == {"alpha", "beta"}
    shards = defs.resolve_assets_def(dg.AssetKey(["alpha", "hub_shards"]))
    assert isinstance(shards.partitions_def, dg.DynamicPartitionsDefinition)
    # a single spec file works too
    monkeypatch.setenv("BIDS_HUB_SPECS", str(specs / "a.yaml"))
    assert asset_keys(load_definitions()) == {
        f"alpha/{n}" for n in ("bids_files", "bids_index", "hf_dataset", "hub_shards", "hub_upload")
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webserver(tmp_path):
    """A real dagster-webserver on 127.0.0.1 loading workspace.yaml from the repository root."""
    port = free_port()
    env = dict(os.environ)
    log = open(tmp_path / "webserver.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def graphql(url: str, query: str) -> dict:
    req = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@pytest.mark.slow  # a real dagster-webserver
def test_webserver_shows_the_asset_graph(webserver):
    deadline = time.monotonic() + 120
    query = "{ assetNodes { assetKey { path } groupName isPartitioned } }"
    while True:
        try:
            nodes = graphql(webserver, query)["data"]["assetNodes"]
            if nodes:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("the webserver did not serve the code location within 120 s")
        time.sleep(1)
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) == {
        "demo/bids_files",
        "demo/bids_index",
        "demo/hf_dataset",
        "demo/hub_shards",
        "demo/hub_upload",
    }
    assert by_key["demo/hub_shards"]["isPartitioned"] is True
    assert {n["groupName"] for n in nodes} == {"demo"}
