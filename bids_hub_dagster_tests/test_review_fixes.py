"""Defects a review found, each reproduced: the demo never replaces a user's files; a publish removes only
the temporary files the tool itself can have left; a Hub that never answers is given up on."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bids_hub_dagster.demo import (
    DEMO_MARKER,
    DEMO_SPEC,
    DEMO_SPEC_MARK,
    DemoFolderError,
    build_demo_bids,
    write_demo,
)
from bids_hub_dagster_tests.conftest import run_cli


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- (3) `demo --workdir DIR` never replaces a user's DIR/bids or DIR/demo.yaml -------------------------


def test_demo_refuses_a_workdir_whose_bids_folder_is_the_users(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "bids").mkdir(parents=True)
    (work / "bids" / "NOTES.txt").write_text("my notes, nowhere else\n")
    before = snapshot(work)

    code, output = run_cli(monkeypatch, capsys, "demo", "--workdir", str(work), "--to", str(tmp_path / "out"))
    assert code == 2, output
    assert f"{work / 'bids'} holds files the demo did not write (NOTES.txt)" in output
    assert "choose another --workdir" in output and "Traceback" not in output
    assert snapshot(work) == before and not (work / "demo.yaml").exists()
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_workdir_whose_demo_yaml_is_the_users(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "demo.yaml").write_text("name: mine\nbids_root: /data/mine\n")
    before = snapshot(work)

    code, output = run_cli(monkeypatch, capsys, "demo", "--workdir", str(work), "--to", str(tmp_path / "out"))
    assert code == 2, output
    assert f"{work / 'demo.yaml'} exists and was not written by the demo" in output
    assert "choose another --workdir" in output
    assert snapshot(work) == before and not (work / "bids").exists()  # checked before anything is written


def test_a_bids_tree_of_the_demos_names_but_not_marked_is_not_replaced(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    (root / DEMO_MARKER).unlink()
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")  # the user's own, same name
    before = snapshot(root)
    with pytest.raises(DemoFolderError, match="participants.tsv differs from the demo's"):
        build_demo_bids(root)
    assert snapshot(root) == before


def test_a_demo_folder_of_an_earlier_release_unmarked_but_unchanged_is_taken_as_the_demos(tmp_path):
    work = tmp_path / "work"
    write_demo(work)
    (work / "bids" / DEMO_MARKER).unlink()
    old_mark = "# The demo dataset: edit and copy this file to describe your own."
    (work / "demo.yaml").write_text(old_mark + DEMO_SPEC[len(DEMO_SPEC_MARK) :])
    assert write_demo(work).read_text() == DEMO_SPEC
    assert (work / "bids" / DEMO_MARKER).is_file()

    (work / "demo.yaml").write_text(old_mark + DEMO_SPEC[len(DEMO_SPEC_MARK) :] + "# my edit\n")
    with pytest.raises(DemoFolderError, match="demo.yaml exists and was not written by the demo"):
        write_demo(work)  # an earlier demo's spec, edited: the user's now


def test_demo_runs_again_on_its_own_workdir(tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    args = ("demo", "--workdir", str(work), "--to", str(out), "--no-progress")
    code, output = run_cli(monkeypatch, capsys, *args)
    assert code == 0, output
    assert (work / "bids" / DEMO_MARKER).is_file() and (work / "demo.yaml").read_text() == DEMO_SPEC
    (work / "bids" / "participants.tsv").write_text("damaged")  # a demo file: the demo's to rewrite
    (work / "bids" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii").unlink()

    code, output = run_cli(monkeypatch, capsys, *args)
    assert code == 0, output
    assert "verified: OK" in output
    assert (work / "bids" / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii").is_file()
    assert (work / "bids" / "participants.tsv").read_text().startswith("participant_id\tsex")


# -- (4) a publish removes only the temporary files the tool itself can have left -------------------------


def test_a_publish_keeps_the_users_tmp_files_in_the_destination(tmp_path, monkeypatch, capsys):
    root = build_demo_bids(tmp_path / "bids")
    dest = tmp_path / "out"
    args = ("publish", str(root), "--to", str(dest), "--no-progress")
    code, output = run_cli(monkeypatch, capsys, *args)
    assert code == 0, output
    users = {
        dest / "notes" / ".draft.deadbeef.tmp": b"a draft",
        dest / ".todo.12345678.tmp": b"to do",
        dest / ".README.md.0123abcd.tmp.keep": b"not a name the tool writes",
    }
    for path, data in users.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    leftover = dest / ".README.md.0123abcd.tmp"  # as a killed publish leaves it
    leftover.write_text("half a card")

    code, output = run_cli(monkeypatch, capsys, *args)
    assert code == 0, output
    assert {path: path.read_bytes() for path in users} == users
    assert not leftover.exists()


# -- (6) a Hub that accepts connections but never answers is given up on, saying so ----------------------


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # kept open, never answered
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.slow  # a subprocess
def test_a_hub_that_never_answers_is_given_up_on_with_a_clear_message(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    with silent_server() as endpoint:
        env = dict(
            os.environ,
            HF_ENDPOINT=endpoint,
            HF_HUB_OFFLINE="0",
            HF_TOKEN="hf_test_token",
            HF_HUB_DISABLE_TELEMETRY="1",
            BIDS_HUB_HTTP_TIMEOUT="1",
        )
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "bids_hub_dagster", "publish", str(root), "--to", "hf://datasets/lab/x",
             "--no-progress"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"the Hub at {endpoint} did not answer within 1 s (tried 3 times)" in output, output
    assert "BIDS_HUB_HTTP_TIMEOUT" in output
    assert "Traceback" not in output and "hf_test_token" not in output
    assert elapsed < 60, f"took {elapsed:.1f} s"


def test_http_waits_are_bounded_but_a_requests_own_timeout_is_kept(monkeypatch):
    from huggingface_hub.utils import _http, get_session

    from bids_hub_dagster.errors import ConfigError
    from bids_hub_dagster.publish.hub.http import CONNECT_TIMEOUT, bound_http_waits

    factories = _http._GLOBAL_CLIENT_FACTORY, _http._GLOBAL_ASYNC_CLIENT_FACTORY
    monkeypatch.setenv("BIDS_HUB_HTTP_TIMEOUT", "70")
    try:
        assert bound_http_waits() == 70
        hooks = get_session().event_hooks["request"]
        assert hooks[0] is _http.hf_request_event_hook  # huggingface_hub's client, its hook first
        sent = []
        for timeout in (None, 3.0):
            request = get_session().build_request("GET", "http://127.0.0.1:9/x", timeout=timeout)
            for hook in hooks[1:]:
                hook(request)
            sent.append(request.extensions["timeout"])
        assert sent[0] == {"connect": CONNECT_TIMEOUT, "read": 70, "write": 70, "pool": None}
        assert sent[1] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}  # its own: kept
        assert bound_http_waits() == 70 and get_session().event_hooks["request"] == hooks  # installed once

        monkeypatch.setenv("BIDS_HUB_HTTP_TIMEOUT", "soon")
        with pytest.raises(ConfigError, match="BIDS_HUB_HTTP_TIMEOUT='soon' is not a number of seconds"):
            bound_http_waits()
    finally:
        _http.set_client_factory(factories[0])
        _http.set_async_client_factory(factories[1])


def test_a_read_timeout_is_retried_a_few_times_then_named_as_the_hub_not_answering():
    import httpx2

    from bids_hub_dagster.publish.hub import CONNECT_ATTEMPTS, Backoff, HubUnreachableError, call_with_retries
    from bids_hub_dagster.publish.hub.retry import classify

    request = httpx2.Request("GET", "http://127.0.0.1:9/api/whoami-v2", extensions={"timeout": {"read": 1.0}})
    calls, waits = [], []

    def silent():
        calls.append(1)
        raise httpx2.ReadTimeout("timed out", request=request)

    assert classify(httpx2.ReadTimeout("timed out", request=request))[0] == "transient"
    with pytest.raises(HubUnreachableError) as info:
        call_with_retries(
            "check the token", silent, backoff=Backoff(attempts=6, base=0.01), explain=lambda w, e: e,
            endpoint="http://127.0.0.1:9", target="lab/x", sleep=waits.append,
        )  # fmt: skip
    assert str(info.value).startswith(
        "check the token: the Hub at http://127.0.0.1:9 did not answer within 1 s (tried 3 times)"
    )
    assert len(calls) == CONNECT_ATTEMPTS and len(waits) == CONNECT_ATTEMPTS - 1
