"""Data versions (pipeline/versions.py) and the stale-shard rule (pipeline/refresh.py), on the demo tree.

No Dagster here: the versions are plain hashes of index tables, and the rule compares them.
"""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bids_hub_dagster.dataset.shards import plan_for_index
from bids_hub_dagster.pipeline.refresh import (
    FILE_CHANGED,
    FILE_MISSING,
    NEVER_BUILT,
    SOURCES_CHANGED,
    StoredShard,
    shards_to_build,
    stored_shard_file,
)
from bids_hub_dagster.pipeline.versions import (
    index_fingerprint,
    plan_version,
    publication_version,
    shard_versions,
    structure_version,
)
from bids_hub_dagster.publish.digests import record_digest

# the demo's rows, in order; with num_shards=4 row i is shard i
T1W_OF_ROW_2 = "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"


def indexed(spec):
    table = spec.index_table()
    return table, plan_for_index(table, spec.max_shard_size, spec.num_shards)


@pytest.fixture
def spec(demo_spec):
    return demo_spec.with_overrides(num_shards=4)


def bump_mtime(path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_structure_version_ignores_what_the_rows_hold(spec):
    table, _ = indexed(spec)
    structure = structure_version(table)
    assert structure_version(table.slice(0, 2)) == structure  # fewer rows: same columns and types
    bump_mtime(spec.bids_root / T1W_OF_ROW_2)
    (spec.bids_root / "sub-03/ses-1/func/sub-03_ses-1_task-rest_run-1_bold.nii").unlink()
    again, _ = indexed(spec)
    assert index_fingerprint(again) != index_fingerprint(table)
    assert structure_version(again) == structure
    # another column is another structure
    narrower, _ = indexed(spec.with_overrides(phenotype=["sex"]))
    assert structure_version(narrower) != structure


@pytest.mark.parametrize("change", ["mtime", "size", "path"])
def test_a_changed_file_changes_only_its_shards_version(spec, change):
    table, plan = indexed(spec)
    before = shard_versions(table, plan)
    assert list(before) == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    assert len(set(before.values())) == 4
    path = spec.bids_root / T1W_OF_ROW_2
    if change == "mtime":
        bump_mtime(path)
    elif change == "size":
        with open(path, "ab") as fh:
            fh.write(b"\0" * 16)
    else:  # the same file under another name (a run label): another layout for that row only
        shutil.move(path, path.with_name("sub-02_ses-1_run-1_T1w.nii"))
    after_table, after_plan = indexed(spec)
    after = shard_versions(after_table, after_plan)
    assert {k for k in before if before[k] != after[k]} == {"shard-00002"}
    assert structure_version(after_table) == structure_version(table)


def test_plan_version_follows_the_shard_plan_not_the_files(spec):
    table, plan = indexed(spec)
    version = plan_version(table, plan)
    bump_mtime(spec.bids_root / T1W_OF_ROW_2)
    again, again_plan = indexed(spec)
    assert plan_version(again, again_plan) == version
    _, two = indexed(spec.with_overrides(num_shards=2))
    assert two.ranges == ((0, 2), (2, 4))
    assert plan_version(table, two) != version


def test_publication_version_is_the_shard_versions_and_the_destination():
    shards = {"shard-00000": "a", "shard-00001": "b"}
    version = publication_version(shards, "/pub")
    assert publication_version(dict(reversed(shards.items())), "/pub") == version  # order of the mapping
    assert publication_version(shards, "/elsewhere") != version
    assert publication_version(shards | {"shard-00001": "c"}, "/pub") != version
    assert publication_version({"shard-00000": "a"}, "/pub") != version


# --------------------------------------------------------------------------------------
# The stale-shard rule: one function for the CLI, the sensors and the schedule
# --------------------------------------------------------------------------------------


def test_the_rule_names_why_each_shard_is_stale():
    current = {
        "shard-00000": "v0",
        "shard-00001": "v1",
        "shard-00002": "v2",
        "shard-00003": "v3",
        "shard-00004": "v4",
    }
    built = {
        "shard-00000": "v0",
        "shard-00001": "old",
        "shard-00002": "v2",
        "shard-00003": "v3",
        "shard-00004": "",
    }
    states = {
        "shard-00000": StoredShard(True),
        "shard-00002": StoredShard(False),
        "shard-00003": StoredShard(True, "x.parquet changed since it was written", "beef"),
    }
    stale = shards_to_build(current, built, states.__getitem__)
    assert [(s.key, s.cause) for s in stale] == [
        ("shard-00001", SOURCES_CHANGED),
        ("shard-00002", FILE_MISSING),
        ("shard-00003", FILE_CHANGED),
        ("shard-00004", NEVER_BUILT),
    ]
    assert [s.warning for s in stale] == [None, None, "x.parquet changed since it was written", None]
    assert stale[2].digest == "beef" and stale[2].reason == "x.parquet changed since it was written"
    assert stale[0].reason == "its source files changed since it was built"
    # without the stored files, versions only: a shard built from the current sources is fresh
    assert [s.key for s in shards_to_build(current, built)] == ["shard-00001", "shard-00004"]


def test_a_stored_shard_file_is_missing_intact_or_changed(tmp_path):
    path = tmp_path / "shard-00000.parquet"
    assert stored_shard_file(path) == StoredShard(exists=False)
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    record_digest(path)
    assert stored_shard_file(path) == StoredShard(True)
    bump_mtime(path)  # touched, same bytes: hashed again, still intact
    assert stored_shard_file(path) == StoredShard(True)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    state = stored_shard_file(path)
    assert state.exists and state.digest and f"{path} changed since it was written" in state.changed
