"""The offline test Hub, driven by the real ``huggingface_hub`` and ``datasets`` clients."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import datasets
import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    RepoFile,
    RepoFolder,
    hf_hub_download,
)
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import get_session

from bids_hub_dagster.testing.hub_server.server import AUTH_REQUIRED, INVALID_TOKEN
from bids_hub_dagster_tests.hub_server import HubServer
from bids_hub_dagster_tests.hub_server import hub_server as hub_server_fixture  # noqa: F401

REPO = "test-user/ds"
README = b"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# Test dataset
"""


def parquet_shard(start: int, count: int) -> bytes:
    """A parquet file of rows ``start`` .. ``start + count - 1`` (int, string and binary columns)."""
    ids = list(range(start, start + count))
    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": [f"row-{i}" for i in ids],
            "payload": [hashlib.sha256(str(i).encode()).digest() * 4 for i in ids],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def shard_path(index: int) -> str:
    return f"data/train-{index:05d}-of-00002.parquet"


def adds(files: dict[str, bytes]) -> list[CommitOperationAdd]:
    return [CommitOperationAdd(path_in_repo=path, path_or_fileobj=content) for path, content in files.items()]


@pytest.fixture
def api(hub_server: HubServer) -> HfApi:
    """A client with an explicit endpoint and token, and a dataset repository ``REPO``."""
    client = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    client.create_repo(REPO, repo_type="dataset")
    return client


def push_two_commits(api: HfApi) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Commit README + shard 0 with an explicit preupload, then shard 1; return the files of each commit."""
    first = {"README.md": README, shard_path(0): parquet_shard(0, 30)}
    operations = adds(first)
    api.preupload_lfs_files(REPO, additions=operations, repo_type="dataset")
    api.create_commit(REPO, operations, commit_message="Add shard 0", repo_type="dataset")
    second = {shard_path(1): parquet_shard(30, 20)}
    api.create_commit(REPO, adds(second), commit_message="Add shard 1", repo_type="dataset")
    return first, second


def test_commits_tree_paths_info_and_download(hub_server: HubServer, api: HfApi) -> None:
    assert api.create_repo(REPO, repo_type="dataset", exist_ok=True).repo_id == REPO
    first, second = push_two_commits(api)

    commits = hub_server.commits(REPO)
    assert [c.title for c in commits] == ["initial commit", "Add shard 0", "Add shard 1"]
    assert commits[0].added == (".gitattributes",)
    assert commits[1].added == ("README.md", shard_path(0)) and commits[2].added == (shard_path(1),)
    assert commits[2].parents == (commits[1].oid,) and hub_server.head(REPO) == commits[2].oid
    assert [c.commit_id for c in api.list_repo_commits(REPO, repo_type="dataset")] == [
        c.oid for c in commits[::-1]
    ]
    assert hub_server.files(REPO) == {
        ".gitattributes": hub_server.files(REPO)[".gitattributes"],
        **first,
        **second,
    }
    shards = {shard_path(0): first[shard_path(0)], shard_path(1): second[shard_path(1)]}
    assert sorted(hub_server.lfs_uploads()) == sorted(
        (hashlib.sha256(c).hexdigest(), len(c)) for c in shards.values()
    )

    tree = {e.path: e for e in api.list_repo_tree(REPO, repo_type="dataset", recursive=True, expand=True)}
    assert set(tree) == {".gitattributes", "README.md", "data", *shards}
    assert isinstance(tree["data"], RepoFolder) and tree["data"].last_commit.oid == commits[2].oid
    readme = tree["README.md"]
    assert isinstance(readme, RepoFile) and readme.lfs is None and readme.size == len(README)
    assert readme.last_commit.title == "Add shard 0"
    for path, content in shards.items():
        entry = tree[path]
        assert isinstance(entry, RepoFile) and entry.size == len(content)
        assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(content).hexdigest()

    info = api.get_paths_info(
        REPO, ["data", shard_path(1), "missing.txt"], repo_type="dataset", revision=commits[1].oid
    )
    assert [(type(e), e.path) for e in info] == [(RepoFolder, "data")]  # shard 1 did not exist yet
    assert (
        Path(hf_hub_download(REPO, shard_path(1), repo_type="dataset")).read_bytes() == shards[shard_path(1)]
    )
    assert (
        Path(hf_hub_download(REPO, "README.md", repo_type="dataset", revision=commits[1].oid)).read_bytes()
        == README
    )

    # Same content again: the LFS batch asks for no upload, and the unchanged files make no commit
    uploads, head = len(hub_server.lfs_uploads()), hub_server.head(REPO)
    api.create_commit(REPO, adds({**first, **second}), commit_message="Nothing new", repo_type="dataset")
    assert len(hub_server.lfs_uploads()) == uploads and hub_server.head(REPO) == head
    assert hub_server.internal_errors == []


def test_parent_commit_mismatch_is_412(hub_server: HubServer, api: HfApi) -> None:
    stale = hub_server.head(REPO)
    api.create_commit(
        REPO, adds({"a.txt": b"a"}), commit_message="a", repo_type="dataset", parent_commit=stale
    )
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_commit(
            REPO, adds({"b.txt": b"b"}), commit_message="b", repo_type="dataset", parent_commit=stale
        )
    assert raised.value.response.status_code == 412
    assert "A commit has happened since" in str(raised.value)
    assert list(hub_server.files(REPO)) == [".gitattributes", "a.txt"]


def test_authentication(hub_server: HubServer, api: HfApi) -> None:
    anonymous = HfApi(endpoint=hub_server.endpoint, token=False)
    assert anonymous.dataset_info(REPO).sha == hub_server.head(REPO)  # public read without a token
    with pytest.raises(HfHubHTTPError) as raised:
        anonymous.create_commit(REPO, adds({"a.txt": b"a"}), commit_message="a", repo_type="dataset")
    assert raised.value.response.status_code == 401 and raised.value.server_message == AUTH_REQUIRED
    with pytest.raises(HfHubHTTPError) as raised:
        HfApi(endpoint=hub_server.endpoint, token="hf_wrong").dataset_info(REPO)
    assert raised.value.response.status_code == 401 and INVALID_TOKEN in str(raised.value)

    api.create_repo("test-user/private", repo_type="dataset", private=True)
    assert api.dataset_info("test-user/private").private is True
    with pytest.raises(RepositoryNotFoundError):
        anonymous.dataset_info("test-user/private")
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="no-such-branch")
    assert not anonymous.repo_exists("test-user/missing", repo_type="dataset")
    assert api.whoami()["name"] == hub_server.username


def test_429_on_preupload_is_retried(hub_server: HubServer, api: HfApi) -> None:
    fault = hub_server.inject("POST", r"/preupload/", status=429, retry_after=0)
    api.create_commit(
        REPO, adds({shard_path(0): parquet_shard(0, 5)}), commit_message="s0", repo_type="dataset"
    )
    assert fault.fired == 1
    preuploads = [r.status for r in hub_server.requests if r.path.endswith("/preupload/main")]
    assert preuploads == [429, 200]
    assert shard_path(0) in hub_server.files(REPO)


def test_dropped_lfs_upload_is_retried(hub_server: HubServer, api: HfApi) -> None:
    content = parquet_shard(0, 200)
    fault = hub_server.inject("PUT", r"^/lfs-upload/", drop=True)
    api.create_commit(REPO, adds({shard_path(0): content}), commit_message="s0", repo_type="dataset")
    puts = [r for r in hub_server.requests if r.method == "PUT"]
    assert fault.fired == 1 and [r.status for r in puts] == [None, 200]
    assert 0 < puts[0].bytes_in < len(content) == puts[1].bytes_in
    assert hub_server.lfs_uploads() == [(hashlib.sha256(content).hexdigest(), len(content))]
    assert hub_server.files(REPO)[shard_path(0)] == content


def test_status_fault_skip_and_times(hub_server: HubServer, api: HfApi) -> None:
    fault = hub_server.inject("GET", r"/api/datasets/test-user/ds$", status=503, skip=1, times=1, body="busy")
    api.dataset_info(REPO)  # skipped
    with pytest.raises(HfHubHTTPError) as raised:  # repo info is not retried by the client
        api.dataset_info(REPO)
    assert raised.value.response.status_code == 503 and raised.value.server_message == "busy"
    api.dataset_info(REPO)  # spent
    assert (fault.seen, fault.fired) == (2, 1)
    hub_server.clear_faults()


def test_commit_applied_but_answer_dropped(hub_server: HubServer, api: HfApi) -> None:
    before = hub_server.head(REPO)
    hub_server.inject("POST", r"/commit/main$", drop_after_body=True)
    with pytest.raises(httpx2.RemoteProtocolError):  # create_commit is not retried
        api.create_commit(REPO, adds({"a.txt": b"a"}), commit_message="a", repo_type="dataset")
    assert hub_server.commits(REPO)[-1].parents == (before,)
    assert hub_server.files(REPO)["a.txt"] == b"a"


def test_lfs_file_never_uploaded_is_rejected(hub_server: HubServer, api: HfApi) -> None:
    oid = hashlib.sha256(b"never uploaded").hexdigest()
    lines = [
        {"key": "header", "value": {"summary": "bad", "description": ""}},
        {"key": "lfsFile", "value": {"path": "x.parquet", "algo": "sha256", "oid": oid, "size": 14}},
    ]
    response = get_session().post(
        f"{hub_server.endpoint}/api/datasets/{REPO}/commit/main",
        content=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
        headers={"Authorization": f"Bearer {hub_server.token}", "Content-Type": "application/x-ndjson"},
    )
    assert (
        response.status_code == 400 and "LFS pointer pointed to a file that does not exist" in response.text
    )
    assert response.headers["X-Error-Message"].startswith("Your push was rejected")
    assert len(hub_server.commits(REPO)) == 1


def test_pull_request_branch_and_deletions(hub_server: HubServer, api: HfApi) -> None:
    first, _ = push_two_commits(api)
    main = hub_server.head(REPO)
    pr = api.create_commit(
        REPO,
        [CommitOperationDelete("data/")],
        commit_message="Drop data",
        repo_type="dataset",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1 and pr.oid == hub_server.head(REPO, "refs/pr/1")
    assert hub_server.head(REPO) == main and hub_server.commits(REPO, "refs/pr/1")[-1].parents == (main,)
    assert list(hub_server.files(REPO, "refs/pr/1")) == [".gitattributes", "README.md"]
    refs = api.list_repo_refs(REPO, repo_type="dataset", include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]

    api.create_branch(REPO, branch="dev", repo_type="dataset")
    api.create_branch(REPO, branch="dev", repo_type="dataset", exist_ok=True)
    api.create_commit(
        REPO, [CommitOperationDelete("README.md")], commit_message="rm", repo_type="dataset", revision="dev"
    )
    assert hub_server.commits(REPO, "dev")[-1].deleted == ("README.md",)
    assert "README.md" in hub_server.files(REPO) and api.revision_exists(REPO, "dev", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_commit(
            REPO,
            [CommitOperationDelete("nope.txt")],
            commit_message="rm",
            repo_type="dataset",
            revision="dev",
        )
    assert raised.value.response.status_code == 404
    assert hub_server.files(REPO, "refs/pr/1")["README.md"] == first["README.md"]


def test_upload_folder_with_unchanged_files_makes_no_commit(
    hub_server: HubServer, api: HfApi, tmp_path: Path
) -> None:
    folder = tmp_path / "folder"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_bytes(README)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(parquet_shard(0, 10))
    api.upload_folder(repo_id=REPO, folder_path=folder, repo_type="dataset")
    head = hub_server.head(REPO)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, repo_type="dataset")
    assert info.oid == head == hub_server.head(REPO) and len(hub_server.commits(REPO)) == 2


def test_load_dataset_reads_pushed_parquet(hub_server: HubServer, api: HfApi, tmp_path: Path) -> None:
    first, second = push_two_commits(api)
    expected = pa.concat_tables(
        pq.read_table(io.BytesIO(c)) for c in (first[shard_path(0)], second[shard_path(1)])
    )

    loaded = datasets.load_dataset(REPO, split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(loaded.to_list(), key=lambda row: row["id"]) == expected.to_pylist()
    old = hub_server.commits(REPO)[1].oid
    at_first_commit = datasets.load_dataset(
        REPO, split="train", revision=old, cache_dir=str(tmp_path / "cache2")
    )
    assert sorted(row["id"] for row in at_first_commit) == list(range(30))

    fs = HfFileSystem()
    path = f"datasets/{REPO}/{shard_path(1)}"
    assert fs.info(path)["size"] == len(second[shard_path(1)])
    with fs.open(path, "rb", block_size=64) as file:
        file.seek(10)
        assert file.read(100) == second[shard_path(1)][10:110]
    assert 206 in {r.status for r in hub_server.requests if "/resolve/" in r.path}
    assert hub_server.internal_errors == []


def test_storage_survives_a_restart(hub_server: HubServer, api: HfApi) -> None:
    first, _ = push_two_commits(api)
    hub_server.stop()
    with HubServer(hub_server.root) as restarted:
        assert restarted.commits(REPO) == hub_server.commits(REPO)
        assert restarted.files(REPO) == hub_server.files(REPO)
        assert restarted.files(REPO, restarted.commits(REPO)[1].oid) == {
            ".gitattributes": restarted.files(REPO)[".gitattributes"],
            **first,
        }


def test_lfs_upload_checks_sha256_of_a_chunked_body(hub_server: HubServer, api: HfApi) -> None:
    content = b"0123456789" * 100
    oid = hashlib.sha256(content).hexdigest()
    session, auth = get_session(), {"Authorization": f"Bearer {hub_server.token}"}
    batch = session.post(
        f"{hub_server.endpoint}/datasets/{REPO}.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(content)}]},
        headers=auth,
    ).json()
    actions = batch["objects"][0]["actions"]

    def chunks(data: bytes) -> Iterator[bytes]:  # no length known: sent with Transfer-Encoding: chunked
        yield from (data[i : i + 300] for i in range(0, len(data), 300))

    tampered = content[:-1] + b"!"
    assert session.put(actions["upload"]["href"], content=chunks(tampered)).status_code == 400
    assert session.put(actions["upload"]["href"] + "0", content=content).status_code == 403  # bad signature
    verify = {"oid": oid, "size": len(content)}
    assert session.post(actions["verify"]["href"], json=verify, headers=auth).status_code == 404
    assert session.put(actions["upload"]["href"], content=chunks(content)).status_code == 200
    assert session.post(actions["verify"]["href"], json=verify, headers=auth).status_code == 200
    assert hub_server.lfs_uploads() == [(oid, len(content))]
    again = session.post(
        f"{hub_server.endpoint}/datasets/{REPO}.git/info/lfs/objects/batch",
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(content)}]},
        headers=auth,
    ).json()
    assert "actions" not in again["objects"][0]  # already uploaded: nothing to do


def test_expanded_tree_listing_is_paginated(hub_server: HubServer, api: HfApi) -> None:
    files = {f"many/file-{i:03d}.txt": f"{i}\n".encode() for i in range(120)}
    api.create_commit(REPO, adds(files), commit_message="many", repo_type="dataset")
    listed = list(api.list_repo_tree(REPO, "many", repo_type="dataset", expand=True))
    assert sorted(e.path for e in listed) == sorted(files)
    assert all(e.last_commit is not None and e.last_commit.title == "many" for e in listed)
    pages = [r.query for r in hub_server.requests if r.path.endswith("/tree/main/many")]
    assert len(pages) == 3 and "cursor=100" in pages[-1]  # 50 entries per page when expanded
