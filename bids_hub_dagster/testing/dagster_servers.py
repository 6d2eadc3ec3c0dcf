"""Real Dagster servers for end-to-end tests and scripts: ``dagster-webserver`` + ``dagster-daemon run``.

:func:`dagster_servers` starts both on ``127.0.0.1`` (a free port) with a fresh ``DAGSTER_HOME`` holding a
copy of the project's instance config (``bids_hub_dagster/dagster.yaml``: queued runs, two at a time, so
the daemon must run to dequeue runs and to drive backfills), loading ``workspace.yaml`` of the repository.
Each process starts in a process group of its own, with its output in a log file; on exit, even after an
error, every group is sent SIGTERM, then SIGKILL, so no code server or run worker is left behind.

Usage::

    with dagster_servers(tmp_path / "servers", env={"BIDS_HUB_SPECS": str(spec)}) as servers:
        servers.graphql("{ version }")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bids_hub_dagster

REPO = Path(__file__).resolve().parents[2]  # the repository root: workspace.yaml
WORKSPACE = REPO / "workspace.yaml"
INSTANCE_YAML = Path(bids_hub_dagster.__file__).with_name("dagster.yaml")
LOCATION = "bids_hub_dagster"  # location_name in workspace.yaml
REPOSITORY = "__repository__"  # the repository name Dagster gives a Definitions object

LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


class GraphQLError(RuntimeError):
    """The webserver answered with GraphQL errors."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> dict:
    """POST ``query`` to ``url``/graphql; the ``data`` of the answer, or GraphQLError naming its errors."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:  # GraphQL validation errors come back as 400
        answer = json.loads(exc.read() or b"{}")
    if answer.get("errors"):
        raise GraphQLError(json.dumps(answer["errors"], indent=1)[:4000])
    return answer["data"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user reuses the id: not ours
        return False
    return True


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), then SIGKILL it.

    The leader is reaped; children it leaves behind (code servers, run workers) get SIGKILL when they
    outlive ``grace`` seconds.
    """
    pgid = proc.pid
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


@dataclass
class DagsterServers:
    """A started webserver (at ``url``) and daemon sharing the instance in ``home``."""

    url: str
    home: Path
    logs: dict[str, Path]
    processes: dict[str, subprocess.Popen]

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, timeout: float = 60) -> dict:
        """The ``data`` of the webserver's answer to ``query`` (see :func:`graphql`)."""
        return graphql(self.url, query, variables, timeout)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of each process's log, for assertion messages."""
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.is_file() else ""
            parts.append(f"--- {name} log ({path}), last {chars} chars ---\n{text[-chars:]}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """RuntimeError (with the logs) when the webserver or the daemon has exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}\n{self.log_tail()}")


def _wait_until_serving(servers: DagsterServers, timeout: float) -> None:
    """Wait for GET /server_info, then for the code location to load without error."""
    deadline = time.monotonic() + timeout
    while True:
        servers.check_alive()
        try:
            with urllib.request.urlopen(f"{servers.url}/server_info", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no answer from {servers.url}/server_info in {timeout} s\n{servers.log_tail()}"
            )
        time.sleep(0.5)
    while True:
        servers.check_alive()
        entries = servers.graphql(LOCATION_QUERY)["workspaceOrError"].get("locationEntries", [])
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise RuntimeError(f"code location {LOCATION} failed to load: {loaded['message']}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"code location {LOCATION} not loaded in {timeout} s\n{servers.log_tail()}")
        time.sleep(0.5)


def _daemon_main(backfill_interval: float | None) -> str:
    """Python source running ``dagster-daemon``'s CLI, optionally with a shorter backfill tick.

    The backfill daemon evaluates backfills every 30 s, a constant of Dagster
    (``dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS``, read by
    ``execute_backfill_iteration_loop``) that no instance setting changes. A backfill takes one tick to
    request runs and one more to see them finished (two more when an unpartitioned asset follows its
    shards), so tests shorten it; the instance config stays the project's.
    """
    patch = (
        f"import dagster._daemon.controller as c; c.DEFAULT_DAEMON_INTERVAL_SECONDS = {backfill_interval}; "
        if backfill_interval is not None
        else ""
    )
    return patch + "from dagster._daemon.cli import main; main()"


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Within: ``os.environ`` is ``env`` (restored on exit)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def dagster_servers(
    workdir: Path,
    env: Mapping[str, str] | None = None,
    *,
    workspace: Path = WORKSPACE,
    instance_yaml: Path = INSTANCE_YAML,
    timeout: float = 120,
    backfill_interval: float | None = None,
) -> Iterator[DagsterServers]:
    """Start webserver and daemon with ``DAGSTER_HOME=workdir/dagster_home``; stop both on exit.

    ``env`` is added to this process's environment (e.g. ``BIDS_HUB_SPECS``, ``BIDS_HUB_STORAGE``,
    ``HF_ENDPOINT``, and the variables ``instance_yaml`` reads, e.g. deploy/cluster/dagster.yaml's).
    Logs go to ``workdir/webserver.log`` and ``workdir/daemon.log``.
    ``backfill_interval``: seconds between the backfill daemon's ticks (see :func:`_daemon_main`).
    """
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(instance_yaml, home / "dagster.yaml")
    # Create the instance's storage here, once: the webserver and the daemon, started together on a
    # fresh home, would both create its SQLite tables, and one of them dies of the race
    # ("table alembic_version already exists").
    from dagster import DagsterInstance

    full_env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with _environ(full_env), DagsterInstance.from_config(str(home)) as instance:  # `{env: …}` in the yaml
        instance.get_runs(limit=1)
    port = free_port()
    commands = {
        "webserver": [sys.executable, "-m", "dagster_webserver", "-w", str(workspace)]
        + ["-h", "127.0.0.1", "-p", str(port)],
        "daemon": [sys.executable, "-c", _daemon_main(backfill_interval), "run", "-w", str(workspace)],
    }
    servers = DagsterServers(url=f"http://127.0.0.1:{port}", home=home, logs={}, processes={})
    with ExitStack() as stack:
        for name, command in commands.items():
            log = stack.enter_context(open(workdir / f"{name}.log", "wb"))
            servers.logs[name] = workdir / f"{name}.log"
            proc = subprocess.Popen(
                command,
                cwd=workspace.parent,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: stopping it stops its children
            )
            stack.callback(stop_process_group, proc)  # registered at once: stopped even if the next fails
            servers.processes[name] = proc
        _wait_until_serving(servers, timeout)
        yield servers
