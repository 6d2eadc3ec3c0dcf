"""Pictures for the README: the Dagster UI (the demo group's asset graph, the hub_shards partitions, a shard's
QC mosaic) and the rows of the ``preview`` config as the Hub's dataset viewer would show them.

    .venv/bin/python scripts/screenshots.py                  # writes the four docs/*.png below
    .venv/bin/python scripts/screenshots.py --preview-only   # docs/preview-config.png only (no UI, no Chromium)
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:3000 --published DIR   # a running webserver

- ``docs/ui-asset-graph.png``: the demo group's asset graph;
- ``docs/ui-hub-shards-partitions.png``: partition shard-00000 of ``hub_shards``, its latest materialization;
- ``docs/ui-shard-qc-mosaic.png``: the ``qc_mosaic`` metadata of a ``hub_shards`` partition (markdown with an
  inline PNG: the UI shows it as a "[Show Markdown]" link, clicked here; the dialog shows the picture);
- ``docs/preview-config.png``: ``load_dataset(published, "preview", split="train")`` drawn with Pillow as a
  table (ids, phenotype, each ``*_thumbnail`` column), roughly as the Hub's viewer shows rows.

Without ``--url``, in a temporary folder: ``python -m bids_hub_dagster demo`` publishes the demo dataset
(to a local folder) on a fresh ``DAGSTER_HOME`` holding the project's dagster.yaml, then
``dagster-webserver`` and ``dagster-daemon`` start on that instance (``BIDS_HUB_SPECS`` unset: the demo) and
headless Chromium takes the pictures; the preview picture is drawn from that published folder (or from
``--published DIR``). Every process the script starts runs in a process group of its own
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
QC_PARTITION = "shard-00002"  # the demo's shard of two rows: its mosaic has two thumbnails
QC_WIDTH = 1920  # the dialog (80% of the viewport) then shows that mosaic (1.4k pixels wide) whole


@dataclass(frozen=True)
class Shot:
    """One picture: the UI path to open and the texts that must all be on the page before it is taken."""

    filename: str
    path: str
    texts: tuple[str, ...]
    markdown: str | None = None  # a markdown metadata entry whose "[Show Markdown]" dialog is opened
    width: int = WIDTH  # of the viewport (the markdown dialog is 80% of it wide)


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
    Shot(  # the shard's QC mosaic (markdown with an inline PNG): the UI shows it in a dialog
        "ui-shard-qc-mosaic.png",
        f"/assets/demo/hub_shards?view=partitions&partition={QC_PARTITION}",
        (QC_PARTITION, "Latest materialization", "qc_mosaic"),
        markdown="qc_mosaic",
        width=QC_WIDTH,
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

    def viewport(self, width: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression)["result"].get("value")

    def open_markdown(self, name: str, timeout: float) -> None:
        """Click the "[Show Markdown]" link of metadata entry ``name``; wait until its dialog's images loaded.

        The UI shows a long markdown value (an inline PNG is one) as that link, not in the table.
        """
        row = (
            "[...document.querySelectorAll('tr')].find(r => r.cells.length > 1"
            f" && r.cells[0].innerText.trim() === {json.dumps(name)})"
        )
        clicked = self.evaluate(
            f"(() => {{ const row = {row}; const link = row && [...row.querySelectorAll('a')]"
            ".find(a => a.innerText.includes('Show Markdown'));"
            " if (!link) return false; link.click(); return true; })()"
        )
        if not clicked:
            raise RuntimeError(f"no [Show Markdown] link in the metadata row {name!r}")
        loaded = (
            "(() => { const d = document.querySelector('[role=dialog]');"
            f" if (!d || !d.innerText.includes({json.dumps(name)})) return false;"
            " const images = [...d.querySelectorAll('img')];"
            " return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0); })()"
        )
        deadline = time.monotonic() + timeout
        while self.evaluate(loaded) is not True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name!r} dialog never showed a loaded image")
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
        tools.viewport(WIDTH)
        yield tools


def take(tools: DevTools, url: str, shot: Shot, out: Path, settle: float) -> Path:
    """Open ``url + shot.path``, wait for its texts, let the layout settle, save the PNG."""
    tools.viewport(shot.width)
    tools.send("Page.navigate", url=url + shot.path)
    tools.wait_for_texts(shot.texts, timeout=90)
    time.sleep(settle)  # the graph zooms to fit and fades in after the data arrived
    if shot.markdown:
        tools.open_markdown(shot.markdown, timeout=30)
        time.sleep(min(settle, 1.0))  # the dialog's opening transition
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


# --- the preview config's rows, drawn as the Hub's dataset viewer shows them ----------------------

PREVIEW_PICTURE = "preview-config.png"
CELL_PAD = 10
THUMB_WIDTH, THUMB_HEIGHT = 340, 84  # an image cell's picture fits this box
NOTE_HEIGHT = 18  # under it, "+N more" for a list cell
TEXT_WIDTH = 110  # a text cell's width
HIDDEN_SUFFIXES = ("_entities", "_sidecar")  # JSON text: long, left out of the picture


def _feature_type(feature: Any) -> str:
    """The type label the viewer prints under a column name."""
    from datasets import Image, List, Sequence, Value

    if isinstance(feature, Image):
        return "image"
    if isinstance(feature, (List, Sequence)):
        return f"list<{_feature_type(feature.feature)}>" if not isinstance(feature.feature, Value) else "list"
    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__


def render_preview_config(published: Path, target: Path, cache_dir: Path) -> Path:
    """``published``'s preview config (``load_dataset(published, "preview", split="train")``) as a table picture.

    One line per row: the text columns (ids, phenotype) and each ``*_thumbnail`` column's picture
    (the first of a list column, with how many more), under a header of names and feature types,
    roughly as the Hub's dataset viewer shows the config (the Hub is not needed).
    """
    from datasets import Image, List, Sequence, load_dataset
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    rows = load_dataset(str(published), "preview", split="train", cache_dir=str(cache_dir))
    features = rows.features

    def is_image(feature: Any) -> bool:
        inner = feature.feature if isinstance(feature, (List, Sequence)) else feature
        return isinstance(inner, Image)

    columns = [n for n in features if not n.endswith(HIDDEN_SUFFIXES)]
    images = {n for n in columns if is_image(features[n])}
    columns = [n for n in columns if n not in images] + [n for n in columns if n in images]
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    widths = {n: (THUMB_WIDTH if n in images else TEXT_WIDTH) + 2 * CELL_PAD for n in columns}
    title_h, header_h, row_h = 44, 52, THUMB_HEIGHT + NOTE_HEIGHT + 2 * CELL_PAD
    width = sum(widths.values())
    height = title_h + header_h + row_h * len(rows)
    canvas = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    grid, grey, ink = (229, 231, 235), (107, 114, 128), (17, 24, 39)

    draw.rectangle((0, 0, width, title_h), fill=(249, 250, 251))
    draw.text(
        (CELL_PAD, title_h // 2),
        f"Subset: preview    Split: train    {len(rows)} rows    (the *_entities and *_sidecar columns left out)",
        font=font,
        fill=grey,
        anchor="lm",
    )
    x = 0
    for name in columns:
        draw.text((x + CELL_PAD, title_h + 8), name, font=font, fill=ink)
        draw.text((x + CELL_PAD, title_h + 30), _feature_type(features[name]), font=small, fill=grey)
        x += widths[name]
    for i, row in enumerate(rows):
        top = title_h + header_h + i * row_h
        x = 0
        for name in columns:
            value = row[name]
            if name in images:
                pictures = [p for p in (value if isinstance(value, list) else [value]) if p is not None]
                if pictures:
                    picture = pictures[0].convert("RGB")
                    picture.thumbnail((THUMB_WIDTH, THUMB_HEIGHT), PILImage.Resampling.LANCZOS)
                    canvas.paste(
                        picture, (x + CELL_PAD, top + CELL_PAD + (THUMB_HEIGHT - picture.height) // 2)
                    )
                    if len(pictures) > 1:
                        more = f"1 of {len(pictures)} images (+{len(pictures) - 1} more)"
                        note_y = top + CELL_PAD + THUMB_HEIGHT + 3
                        draw.text((x + CELL_PAD, note_y), more, font=small, fill=grey)
                else:
                    empty = "[]" if isinstance(value, list) else "null"
                    draw.text((x + CELL_PAD, top + row_h // 2), empty, font=font, fill=grey, anchor="lm")
            else:
                text = "null" if value is None else str(value)
                draw.text(
                    (x + CELL_PAD, top + row_h // 2),
                    text,
                    font=font,
                    fill=grey if value is None else ink,
                    anchor="lm",
                )
            x += widths[name]
    for y in (title_h, title_h + header_h, *(title_h + header_h + i * row_h for i in range(1, len(rows)))):
        draw.line((0, y, width, y), fill=grid)
    x = 0
    for name in columns[:-1]:
        x += widths[name]
        draw.line((x, title_h, x, height), fill=grid)
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target, optimize=True)
    if target.stat().st_size > MAX_BYTES:
        raise RuntimeError(f"{target.name} is {target.stat().st_size} bytes, over {MAX_BYTES}")
    return target


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
    parser.add_argument(
        "--preview-only",
        action="store_true",
        help=f"write {PREVIEW_PICTURE} only (no webserver, no Chromium)",
    )
    parser.add_argument(
        "--published",
        type=Path,
        help=f"draw {PREVIEW_PICTURE} from this published dataset (default: the demo, published here)",
    )
    args = parser.parse_args()
    if not args.preview_only and not shutil.which(args.chromium):
        parser.error(f"{args.chromium} not found: apt-get install -y chromium, or pass --chromium PATH")
    if args.url and not (args.published or args.preview_only):
        parser.error(f"--url: pass --published DIR too, the dataset {PREVIEW_PICTURE} is drawn from")
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="bids-hub-screenshots-") as tmp:
        workdir = Path(tmp)
        shots = not args.preview_only
        if shots and args.url:
            written += shoot(args.url.rstrip("/"), args.out, args.chromium, workdir, args.settle)
        elif shots or not args.published:  # the demo: for the webserver, or for the preview config
            for name in ("BIDS_HUB_SPECS", "BIDS_HUB_STORAGE"):  # the demo, stored in its DAGSTER_HOME
                os.environ.pop(name, None)
            publish_demo(workdir)
            if shots:
                with dagster_servers(workdir) as servers:
                    written += shoot(servers.url, args.out, args.chromium, workdir, args.settle)
        published = args.published or workdir / "published"
        written.append(render_preview_config(published, args.out / PREVIEW_PICTURE, workdir / "hf-cache"))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1000} KB)")


if __name__ == "__main__":
    main()
