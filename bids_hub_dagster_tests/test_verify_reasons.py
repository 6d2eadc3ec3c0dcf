"""A failed verification says why: the row, column and file, the expected and found sha256, the extra or
missing columns; and the reasons reach the user of the CLI when the upload's check fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from huggingface_hub import DatasetCard

from bids_hub_dagster.cli import main
from bids_hub_dagster.defs import assets as assets_module
from bids_hub_dagster.defs.outcomes import failed_check_problems
from bids_hub_dagster.publish.verify import DIGEST_CHARS, verify_published
from bids_hub_dagster.spec import DatasetSpec
from bids_hub_dagster_tests.conftest import materialize_all

FIRST_SHARD = "data/train-00000-of-00003.parquet"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def published(demo_spec: DatasetSpec, tmp_path: Path) -> tuple[DatasetSpec, Path, pa.Table]:
    """The demo published to a folder through Dagster; its spec file and the index table."""
    storage = tmp_path / "storage"
    materialize_all(demo_spec, storage)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    return demo_spec, spec_file, pq.read_table(storage / "demo" / "bids_index.parquet")


def rewrite(path: Path, change) -> None:
    """Rewrite a parquet file with pyarrow after ``change(table)``: still a file load_dataset reads."""
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def flip_last_byte(table: pa.Table, column: str, row: int) -> tuple[pa.Table, bytes]:
    """``table`` with the last byte of one Nifti() cell inverted; and the new bytes."""
    cells = table.column(column).to_pylist()
    data = bytearray(cells[row]["bytes"])
    data[-1] ^= 0xFF
    cells[row] = {**cells[row], "bytes": bytes(data)}
    i = table.schema.get_field_index(column)
    return table.set_column(
        i, table.schema.field(column), pa.array(cells, type=table.schema.field(column).type)
    ), bytes(data)


def test_a_changed_nifti_cell_names_row_column_file_and_both_digests(published, tmp_path):
    spec, spec_file, index = published
    shard = Path(spec.destination) / FIRST_SHARD
    table = pq.read_table(shard)
    sub, ses = table.column("subject_id")[0].as_py(), table.column("session_id")[0].as_py()
    row = next(
        i
        for i, (s, e) in enumerate(
            zip(index["subject_id"].to_pylist(), index["session_id"].to_pylist(), strict=True)
        )
        if (s, e) == (sub, ses)
    )
    rel = index.column("t1w")[row].as_py()
    changed, data = flip_last_byte(table, "t1w", 0)
    pq.write_table(changed, shard)

    source = sha((spec.bids_root / rel).read_bytes())
    expected_line = (
        f"{sub}/{ses} t1w: bytes differ from {rel} (sha256 expected {source[:DIGEST_CHARS]}… from the "
        f"source, found {sha(data)[:DIGEST_CHARS]}…; {FIRST_SHARD} row 0)"
    )
    report = verify_published(spec.destination, index, cache_dir=str(tmp_path / "cache"))
    assert not report.ok
    assert report.problems == [expected_line]

    result = invoke("verify", spec.destination, "--spec", str(spec_file))
    assert result.exit_code == 1
    assert result.output.startswith("FAILED: 4/4 rows")
    assert f"  - {expected_line}\n" in result.output


def test_an_extra_column_fails_whether_or_not_the_card_lists_it(published, tmp_path):
    spec, spec_file, index = published
    dest = Path(spec.destination)
    rewrite(dest / FIRST_SHARD, lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)))

    report = verify_published(str(dest), index, cache_dir=str(tmp_path / "c1"))
    assert not report.ok
    assert report.problems[0] == (
        f"{FIRST_SHARD}: extra column 'note' (string) that the BIDS index does not produce"
    )
    assert any(p.startswith(f"reading {dest} failed") and "the columns differ" in p for p in report.problems)

    # the card lists it too: datasets reads every row without complaint, and this used to pass
    readme = dest / "README.md"
    card = readme.read_text()
    assert card.count("  splits:") == 2  # one per config in dataset_info: default, then preview
    # the feature goes at the end of the default config's features, before its splits
    at = card.index("  splits:", card.index("- config_name: default"))
    assert at < card.index("- config_name: preview")
    readme.write_text(card[:at] + "  - name: note\n    dtype: string\n" + card[at:])
    infos = {i["config_name"]: i for i in DatasetCard.load(readme).data.to_dict()["dataset_info"]}
    assert [f["name"] for f in infos["default"]["features"]][-1] == "note"
    assert "note" not in [f["name"] for f in infos["preview"]["features"]]
    report = verify_published(str(dest), index, cache_dir=str(tmp_path / "c2"))
    assert not report.ok and report.rows_found == 4
    assert report.problems == [
        "the published features (README.md dataset_info): extra column 'note' (Value('string')) that the "
        "BIDS index does not produce",
        f"{FIRST_SHARD}: extra column 'note' (string) that the BIDS index does not produce",
    ]
    result = invoke("verify", str(dest), "--spec", str(spec_file))
    assert result.exit_code == 1 and "extra column 'note'" in result.output


def test_a_missing_column_a_changed_type_and_a_changed_phenotype_value_fail(published, tmp_path):
    spec, _, index = published
    dest = Path(spec.destination)
    shards = sorted((dest / "data").glob("*.parquet"))
    rewrite(shards[0], lambda t: t.drop_columns(["sex"]))
    rewrite(
        shards[1], lambda t: t.set_column(t.schema.get_field_index("age"), "age", t["age"].cast(pa.string()))
    )
    second = pq.read_table(shards[2])
    label = f"{second['subject_id'][0].as_py()}/{second['session_id'][0].as_py()}"
    old = second["group"][0].as_py()
    rewrite(
        shards[2],
        lambda t: t.set_column(t.schema.get_field_index("group"), "group", pa.array(["99"] * t.num_rows)),
    )

    report = verify_published(str(dest), index, cache_dir=str(tmp_path / "c"))
    assert not report.ok
    problems = "\n".join(report.problems)
    assert f"{FIRST_SHARD}: column 'sex' (string) is missing" in report.problems
    assert "data/train-00001-of-00003.parquet: column 'age' is string, expected double" in report.problems
    assert (
        f"{label} group: '99', expected {old!r} from participants.tsv (data/train-00002-of-00003.parquet row 0)"
        in report.problems
    )
    assert "sex: None" not in problems  # a missing column is said once, not once per row


def test_the_failed_upload_check_prints_its_reasons_in_the_cli(demo_spec, tmp_path, monkeypatch):
    """The published copy is damaged after it is written (a concurrent writer, a bad disk): the upload's
    blocking check fails, and the CLI prints why, naming the row, the file and the digests."""
    real = assets_module.publish_shards

    def publish_then_damage(*args, **kwargs):
        result = real(*args, **kwargs)
        rewrite(Path(demo_spec.destination) / FIRST_SHARD, lambda t: flip_last_byte(t, "t1w", 0)[0])
        return result

    monkeypatch.setattr(assets_module, "publish_shards", publish_then_damage)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(demo_spec.to_yaml())
    result = invoke("publish", "--spec", str(spec_file), "--no-progress", "--workers", "1")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert f"error: publishing to {demo_spec.destination} failed:" in lines
    reason = next(line for line in lines if line.startswith("published_copy_verifies: "))
    assert "t1w: bytes differ from sub-01/ses-1/anat/sub-01_ses-1_T1w.nii (sha256 expected " in reason
    assert f"; {FIRST_SHARD} row 0)" in reason
    assert "published_copy_verifies: failed" not in result.output

    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(filters=dg.RunsFilter(job_name="demo_upload"))[0]
        events = [e.dagster_event for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
    assert failed_check_problems(events) == [reason]


def test_a_replaced_hub_file_is_named_with_both_digests_and_sizes(hub_server, demo_spec, tmp_path):
    from huggingface_hub import HfApi

    from bids_hub_dagster.dataset.shards import plan_for_index
    from bids_hub_dagster.publish.digests import file_digest
    from bids_hub_dagster.publish.hub import HubRepo
    from bids_hub_dagster.publish.publication import publish_shards

    spec = demo_spec.with_overrides(destination="hf://datasets/lab/reasons", num_shards=2)
    storage = tmp_path / "storage"
    keys = materialize_all(spec, storage)
    index = pq.read_table(storage / "demo" / "bids_index.parquet")
    files = {k: storage / "demo" / "hub_shards" / f"{k}.parquet" for k in keys}
    repo = HubRepo("lab/reasons", token=hub_server.token, endpoint=hub_server.endpoint)
    result = publish_shards(spec.name, index, plan_for_index(index, spec.max_shard_size, 2), files, repo)
    assert repo.verify_quick(result.shard_files, result.card, index).ok

    replacement = b"not a shard"
    HfApi().upload_file(
        path_or_fileobj=replacement, path_in_repo="data/train-00001-of-00002.parquet", repo_id="lab/reasons",
        repo_type="dataset",
    )  # fmt: skip
    later = HubRepo("lab/reasons", token=hub_server.token, endpoint=hub_server.endpoint)
    report = later.verify_quick(result.shard_files, result.card, index)
    local = result.shard_files[1]
    assert not report.ok
    (problem,) = report.problems
    assert problem.startswith(f"data/train-00001-of-00002.parquet differs from {local}: sha256 expected ")
    assert f"expected {file_digest(local)[:DIGEST_CHARS]}…" in problem
    assert f"size expected {local.stat().st_size}, found {len(replacement)}" in problem
    assert f"found {sha(replacement)[:DIGEST_CHARS]}…" in problem  # *.parquet are LFS files on the Hub
