"""The local folder destination: refused up front when it cannot work, staged when it can."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bids_hub_dagster.defs import names
from bids_hub_dagster.publish.destinations import STAGING_PREFIX, DestinationError, LocalFolder
from bids_hub_dagster.publish.publication import parse_destination, publish_shards
from bids_hub_dagster.publish.verify import verify_published
from bids_hub_dagster_tests.conftest import materialize_all, memory_instance


@pytest.mark.parametrize("name", ["pub[v1]", "pub*", "pub?x", "pub{a,b}"])
def test_glob_characters_are_refused(tmp_path, name):
    with pytest.raises(DestinationError, match="glob patterns"):
        parse_destination(str(tmp_path / name))


def test_a_file_in_the_path_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DestinationError, match="is a file, not a folder"):
        parse_destination(str(tmp_path / "afile"))
    with pytest.raises(DestinationError, match="is a file, not a folder"):
        parse_destination(str(tmp_path / "afile" / "below"))


def test_a_foreign_readme_is_never_overwritten(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "README.md").write_text("# my project\n")
    with pytest.raises(DestinationError, match="did not write"):
        parse_destination(str(tmp_path / "proj"))
    assert (tmp_path / "proj" / "README.md").read_text() == "# my project\n"


def test_other_schemes_are_refused():
    with pytest.raises(DestinationError, match="local folder or hf://"):
        parse_destination("s3://bucket/x")


def test_a_failure_while_staging_leaves_the_previous_publication_whole(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    dest = Path(demo_spec.destination)
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    shards = sorted((tmp_path / "storage" / "demo" / "hub_shards").iterdir())
    # the second of two shard files vanishes mid-publish (disk error, deleted storage…)
    with pytest.raises(DestinationError, match="previous publication is kept.*gone.parquet"):
        LocalFolder(dest).publish([shards[0], tmp_path / "gone.parquet"], card="---\n---\n")
    after = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes: nothing of the failed publish is visible
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))
    report = verify_published(str(dest), demo_spec.index_table())
    assert report.ok, report.summary()


def test_verify_reports_a_missing_or_empty_destination(demo_spec, tmp_path):
    table = demo_spec.index_table()
    missing = verify_published(str(tmp_path / "nothing-here"), table)
    assert not missing.ok and "cannot load" in missing.summary()
    (tmp_path / "empty").mkdir()
    empty = verify_published(str(tmp_path / "empty"), table)
    assert not empty.ok and "cannot load" in empty.summary()


def test_verify_reports_a_corrupt_data_file(demo_spec, tmp_path):
    materialize_all(demo_spec, tmp_path / "storage")
    data = sorted((Path(demo_spec.destination) / "data").iterdir())
    data[1].write_bytes(data[1].read_bytes()[:-100])  # footer cut off
    report = verify_published(demo_spec.destination, demo_spec.index_table())
    assert not report.ok
    assert "failed after" in report.summary() or "cannot load" in report.summary()


def _republished(spec, storage: Path):
    """The folder destination of ``spec`` and the result of publishing its stored shards again (no change)."""
    index = pq.read_table(storage / spec.name / "bids_index.parquet")
    files = {p.stem: p for p in (storage / spec.name / "hub_shards").glob("shard-*.parquet")}
    folder = LocalFolder(spec.destination)
    return folder, publish_shards(spec.name, index, spec.shard_plan(index), files, folder), index


def test_the_quick_verify_compares_published_files_and_names_a_tampered_one(demo_spec, tmp_path):
    storage = tmp_path / "storage"
    materialize_all(demo_spec, storage)
    folder, result, index = _republished(demo_spec, storage)
    assert result.files_written == ["README.md"] and len(result.files_skipped) == len(result.shard_files)
    report = folder.verify_quick(result.shard_files, result.card, index)
    n = len(result.shard_files)
    assert report.ok, report.summary()
    assert report.summary().startswith(f"OK: {index.num_rows}/{index.num_rows} rows, {n + 1} published files")

    # written through the hard link: the stored shard changed with it, so its recorded digest catches it
    first = folder.folder / "data" / f"train-00000-of-{n:05d}.parquet"
    with open(first, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    # replaced by another file: its sha256 differs from the shard's
    second = folder.folder / "data" / f"train-00001-of-{n:05d}.parquet"
    second.unlink()
    second.write_bytes(b"not a shard")
    (folder.folder / "README.md").write_text("# edited\n")
    report = folder.verify_quick(result.shard_files, result.card, index)
    assert not report.ok
    problems = "\n".join(report.problems)
    assert f"{first} differs from what was published: {result.shard_files[0]} changed" in problems
    assert f"{second} differs from {result.shard_files[1]}: sha256 expected" in problems
    assert "found 11" in problems  # the replacement's size
    assert f"{folder.folder / 'README.md'} is not the card of this publication" in problems
    assert len(report.problems) == 3


def test_upload_shards_on_a_local_destination_builds_and_publishes_without_a_pre_upload(demo_spec, tmp_path):
    spec = demo_spec.with_overrides(hub={"upload_shards": True})
    storage = tmp_path / "storage"
    with memory_instance() as instance:
        materialize_all(spec, storage, instance)
        shards = instance.fetch_materializations(names(spec).hub_shards, limit=10).records
        metadata = [r.asset_materialization.metadata for r in shards]
    assert metadata and all("hub_bytes_sent" not in m for m in metadata)  # nothing to send ahead
    assert verify_published(spec.destination, spec.index_table()).ok
