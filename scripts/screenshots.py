"""Screenshots of the Dagster UI for the README: the demo group's asset graph and the hub_shards partitions.

    .venv/bin/python scripts/screenshots.py                  # writes docs/ui-asset-graph.png, docs/ui-hub-shards-partitions.png
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:3000   # shoot a webserver that is running

Without ``--url``, in a temporary folder: ``python -m bids_hub_dagster demo`` publishes the demo dataset
(to a local folder) on a fresh ``DAGSTER_HOME`` holding the project's dagster.yaml, then
``dagster-webserver`` and ``dagster-daemon`` start on that instance (``BIDS_HUB_SPECS`` unset: the demo) and
headless Chromium takes the pictures. Every process the script starts runs in a process group of its own
and is stopped (SIGTERM, then SIGKILL) before it returns, also after an error.

Chromium is driven over the DevTools protocol (``websockets``, a dependency of dagster-webserver): it waits
until each page shows its data, then captures it. It needs the Debian package ``chromium``
(``apt-get install -y chromium``) or ``--chromium PATH``. The "Join the Dagster community" dialog is
dismissed for the instance (the ``setNuxSeen`` mutation) before the first picture.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from bids_hub_dagster.testing.dagster_servers import (
    LOCATION,
    REPO,
    dagster_servers,
    graphql,
    stop_process_group,
)

WIDTH, HEIGHT = 1600, 1000
MAX_BYTES = 400_000  # each image stays small enough for the repository


@dataclass(frozen=True)
class Shot:
    """One picture: the UI path to open and the texts that must all be on the page before it is taken."""

    filename: str
    path: str
    texts: tuple[str, ...]


SHOTS = (
    Shot(
        "ui-asset-graph.png",
        f"/locations/{LOCATION}/asset-groups/demo",
        ("bids_index", "hf_dataset", "hub_shards", "hub_upload", "Materialized"),
    ),
    Shot(
        "ui-hub-shards-partitions.png",
        "/assets/demo/hub_shards?view=partitions&partition=shard-00000",
        ("shard-00000", "Latest materialization", "first_row", "nifti_bytes"),
    ),
)


class DevTools:
    """A minimal DevTools protocol client for one page: send a command, wait for its answer."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; they are not needed
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def wait_for_texts(self, texts: tuple[str, ...], timeout: float) -> None:
        """Wait until the page shows every text and no dialog (e.g. the newsletter one) covers it."""
        condition = (
            " && ".join(f"document.body.innerText.includes({json.dumps(t)})" for t in texts)
            + " && !document.querySelector('[role=dialog]')"
        )
        deadline = time.monotonic() + timeout
        while True:
            result = self.send("Runtime.evaluate", expression=f"!!document.body && {condition}")
            if result["result"].get("value") is True:
                return
            if time.monotonic() > deadline:
                body = self.send("Runtime.evaluate", expression="document.body && document.body.innerText")
                raise TimeoutError(f"page never showed {texts}; it shows:\n{body['result'].get('value')}")
            time.sleep(0.5)


@contextmanager
def chromium(binary: str, workdir: Path) -> Iterator[DevTools]:
    """Headless Chromium in a process group of its own, its first page driven over DevTools."""
    profile = workdir / "chromium-profile"
    command = [
        binary,
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--window-size={WIDTH},{HEIGHT}",
        "about:blank",
    ]
    with ExitStack() as stack:
        log = stack.enter_context(open(workdir / "chromium.log", "wb"))
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        stack.callback(stop_process_group, proc, 5.0)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Chromium did not start:\n{(workdir / 'chromium.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(t for t in json.load(response) if t["type"] == "page")
        socket = stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        tools = DevTools(socket)
        tools.send("Page.enable")
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield tools


def take(tools: DevTools, url: str, shot: Shot, out: Path, settle: float) -> Path:
    """Open ``url + shot.path``, wait for its texts, let the layout settle, save the PNG."""
    tools.send("Page.navigate", url=url + shot.path)
    tools.wait_for_texts(shot.texts, timeout=90)
    time.sleep(settle)  # the graph zooms to fit and fades in after the data arrived
    png = base64.b64decode(tools.send("Page.captureScreenshot", format="png")["data"])
    if len(png) > MAX_BYTES:
        raise RuntimeError(f"{shot.filename} is {len(png)} bytes, over {MAX_BYTES}")
    target = out / shot.filename
    target.write_bytes(png)
    return target


def publish_demo(workdir: Path) -> None:
    """``python -m bids_hub_dagster demo`` on ``workdir/dagster_home``: every asset and partition materialized."""
    env = {**os.environ, "DAGSTER_HOME": str(workdir / "dagster_home")}
    command = [sys.executable, "-m", "bids_hub_dagster", "demo", "--to", str(workdir / "published")]
    with open(workdir / "demo.log", "wb") as log:
        proc = subprocess.Popen(
            [*command, "--no-progress"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=600)
        finally:
            stop_process_group(proc, 5.0)
    if code:
        raise RuntimeError(f"the demo failed ({code}):\n{(workdir / 'demo.log').read_text()[-3000:]}")


def shoot(url: str, out: Path, binary: str, workdir: Path, settle: float) -> list[Path]:
    graphql(url, "mutation { setNuxSeen }")  # the newsletter dialog would cover the pictures
    with chromium(binary, workdir) as tools:
        return [take(tools, url, shot, out, settle) for shot in SHOTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", help="a running dagster-webserver showing the demo (default: start one)")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder of the PNG files (docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium", help="Chromium binary")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait after the data showed")
    args = parser.parse_args()
    if not shutil.which(args.chromium):
        parser.error(f"{args.chromium} not found: apt-get install -y chromium, or pass --chromium PATH")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bids-hub-screenshots-") as tmp:
        workdir = Path(tmp)
        if args.url:
            written = shoot(args.url.rstrip("/"), args.out, args.chromium, workdir, args.settle)
        else:
            for name in ("BIDS_HUB_SPECS", "BIDS_HUB_STORAGE"):  # the demo, stored in its DAGSTER_HOME
                os.environ.pop(name, None)
            publish_demo(workdir)
            with dagster_servers(workdir) as servers:
                written = shoot(servers.url, args.out, args.chromium, workdir, args.settle)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()
