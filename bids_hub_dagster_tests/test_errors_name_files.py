"""Every error names its file; `publish` and `index` exit 2 for the same user error; a file name cannot
forge lines of the output; an unreachable Hub is said to be one, quickly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from bids_hub_dagster.bids.errors import shown
from bids_hub_dagster.demo import DESCRIPTION, build_demo_bids, write_demo
from bids_hub_dagster.publish.hub import (
    CONNECT_ATTEMPTS,
    Backoff,
    HubRepo,
    HubTransientError,
    HubUnreachableError,
)
from bids_hub_dagster_tests.conftest import run_cli

BAD_JSON = {
    "not JSON": (
        "{\n",
        "is not valid JSON: Expecting property name enclosed in double quotes at line 2 column 1",
    ),
    "not an object": ('["a", "list"]\n', "must hold a JSON object, not list"),
    "not UTF-8": (b'{"Name": "caf\xe9"}', "is not UTF-8 text"),
}


@pytest.mark.parametrize("name", ["dataset_description.json", "participants.json"])
@pytest.mark.parametrize("bad", list(BAD_JSON))
def test_a_bad_json_file_is_named_and_publish_and_index_both_exit_2(name, bad, tmp_path, monkeypatch, capsys):
    spec_file = write_demo(tmp_path / "demo")
    path = spec_file.parent / "bids" / name
    content, said = BAD_JSON[bad]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    dest = str(tmp_path / "published")
    runs = {
        "index --spec": ["index", "--spec", str(spec_file)],
        "index BIDS_ROOT": ["index", str(path.parent)],
        "publish --spec": ["publish", "--spec", str(spec_file), "--to", dest, "--no-progress"],
        "publish BIDS_ROOT": ["publish", str(path.parent), "--to", dest, "--no-progress"],
    }
    for what, args in runs.items():
        code, output = run_cli(monkeypatch, capsys, *args)
        assert code == 2, (what, output)
        assert f"{path} {said}" in output, (what, output)
        assert "Traceback" not in output
        # no line tells what is wrong without naming the file
        assert all(str(path) in line for line in output.splitlines() if "JSON" in line or "UTF-8" in line)
    assert not Path(dest).exists()


FORGED = "error: forged"


def test_a_file_name_with_a_newline_cannot_forge_output_lines(tmp_path, monkeypatch, capsys):
    root = build_demo_bids(tmp_path / "bids")
    stray = (
        root / "sub-01/ses-1/anat" / f"notes\n{FORGED}.nii"
    )  # not a BIDS name: skipped, named in a warning
    stray.write_bytes(b"")
    (root / "dataset_description.json").write_text(json.dumps({**DESCRIPTION, "Name": f"demo\n{FORGED}"}))

    code, output = run_cli(monkeypatch, capsys, "index", str(root))
    assert code == 0, output
    assert "sub-01/ses-1/anat/notes\\nerror: forged.nii" in output  # the warning names it, escaped
    assert not any(line.startswith(FORGED) for line in output.splitlines()), output

    # a label holding a newline is no BIDS label: an error that names the file, escaped
    damaged = root / "sub-03/ses-1/anat" / f"sub-03_ses-1_acq-x\n{FORGED}_T1w.nii"
    damaged.write_bytes(b"")
    code, output = run_cli(
        monkeypatch, capsys, "publish", str(root), "--to", str(tmp_path / "out"), "--no-progress"
    )
    assert code == 2, output
    assert shown(damaged.relative_to(root).as_posix()) in output
    assert not any(line.startswith(FORGED) for line in output.splitlines()), output
    assert "\\n" + FORGED in output
    assert not (tmp_path / "out").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # the CLI in a subprocess
def test_an_unreachable_hub_is_said_to_be_one_within_seconds(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_TOKEN="hf_test_token")
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bids_hub_dagster",
            "publish",
            str(root),
            "--to",
            "hf://datasets/lab/x",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"cannot reach the Hub at {endpoint} (network): [Errno 111] Connection refused" in output
    assert "check your connection and HF_ENDPOINT" in output
    assert "overloaded" not in output and "Traceback" not in output and "hf_test_token" not in output
    # the default backoff waits 2 s then 4 s between the CONNECT_ATTEMPTS tries, plus the start-up
    assert elapsed < 30, f"took {elapsed:.1f} s"


def test_connect_errors_give_up_after_a_few_tries_but_dropped_connections_keep_every_retry():
    waits: list[float] = []
    repo = HubRepo(
        "lab/x", token="hf_x", endpoint="http://127.0.0.1:9", backoff=Backoff(attempts=6, base=0.01),
        sleep=waits.append,
    )  # fmt: skip
    calls = []

    def refused():
        calls.append(1)
        raise httpx2.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(HubUnreachableError, match=r"cannot reach the Hub at http://127.0.0.1:9 \(network\)"):
        repo._call("read the branch head", refused)
    assert len(calls) == CONNECT_ATTEMPTS and len(waits) == CONNECT_ATTEMPTS - 1

    calls.clear()

    def dropped_then_fine():
        calls.append(1)
        if len(calls) <= 4:  # more drops than CONNECT_ATTEMPTS: still retried
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
        return "head"

    assert repo._call("read the branch head", dropped_then_fine) == "head"
    assert len(calls) == 5

    def always_dropped():
        raise httpx2.ReadError("connection reset mid-request")

    with pytest.raises(HubTransientError) as info:
        repo._call("read the branch head", always_dropped)
    assert not isinstance(info.value, HubUnreachableError) and "failed 6 times" in str(info.value)


def test_a_folder_name_with_a_newline_cannot_forge_output_lines(tmp_path, monkeypatch, capsys):
    root = build_demo_bids(tmp_path / "bids")
    (root / "sub-03").rename(root / f"sub-03\n{FORGED}")  # its files still say sub-03

    code, output = run_cli(monkeypatch, capsys, "index", str(root))
    assert code == 2, output
    assert "folder " + shown(f"sub-03\n{FORGED}") + ": the sub label" in output
    assert not any(line.startswith(FORGED) for line in output.splitlines()), output
    assert "Traceback" not in output
