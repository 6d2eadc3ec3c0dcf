"""A second config, ``preview``, published beside the full data: real shards, real preview files.

The data shards are built by the real pipeline (Dagster, the demo's nibabel images); each
preview file is a parquet file of ``datasets.Image()`` thumbnails (PNG, made with nibabel
and Pillow from the shard's own NIfTI bytes) carrying its data shard's record, written and
digest-recorded as the IO manager writes shards. Both are published to a local folder and
to the Hub test server and read back with ``datasets.load_dataset``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, Image, Json, List, Nifti, Value, load_dataset
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, HfApi
from PIL import Image as PILImage

from bids_hub_dagster.dataset.parquet import write_row_groups
from bids_hub_dagster.dataset.shards import SHARD_META_KEY, ShardPlan
from bids_hub_dagster.demo import write_demo
from bids_hub_dagster.errors import UserError
from bids_hub_dagster.publish.card import CardFacts, is_tool_card, render_card
from bids_hub_dagster.publish.destinations import STAGING_PREFIX, DestinationError, LocalFolder, PublishResult
from bids_hub_dagster.publish.digests import record_digest
from bids_hub_dagster.publish.hub import Backoff, HubAccessError, HubOptions, HubRepo, plan_commits
from bids_hub_dagster.publish.manifest import MANIFEST_NAME, Manifest
from bids_hub_dagster.publish.publication import ShardsNotReadyError, publish_shards
from bids_hub_dagster.publish.verify import verify_published
from bids_hub_dagster.spec import DatasetSpec, load_spec
from bids_hub_dagster_tests.conftest import isolate_home, materialize_all

REPO_ID = "lab/preview"
FAST = Backoff(attempts=4, base=0.01, cap=0.05)
PREVIEW_FEATURES = Features(
    {"subject_id": Value("string"), "session_id": Value("string"), "t1w_thumbnail": Image()}
)


# -- real preview files -----------------------------------------------------------------------


def thumbnail(data: bytes) -> bytes:
    """Three orthogonal mid-slices (middle volume of a 4D image) side by side, as a grayscale PNG."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    volume = np.nan_to_num(np.asarray(nib.Nifti1Image.from_bytes(data).dataobj, dtype=np.float64))
    if volume.ndim == 4:
        volume = volume[..., volume.shape[3] // 2]
    x, y, z = (n // 2 for n in volume.shape[:3])
    panels = [volume[x, :, :], volume[:, y, :], volume[:, :, z]]
    height = max(p.shape[1] for p in panels)
    tiles = []
    for panel in panels:
        panel = np.rot90(panel)
        low, high = np.percentile(panel, (1, 99))
        scaled = np.clip((panel - low) / ((high - low) or 1.0) * 255, 0, 255).astype(np.uint8)
        tile = np.zeros((height, scaled.shape[1]), dtype=np.uint8)
        tile[: scaled.shape[0]] = scaled
        tiles.append(tile)
    out = io.BytesIO()
    PILImage.fromarray(np.hstack(tiles)).save(out, format="PNG")
    return out.getvalue()


def write_preview(shard: Path, dest: Path, *, record_from: Path | None = None) -> Path:
    """The preview of one data shard: its rows' ids and a t1w thumbnail, with the record of
    ``record_from`` (default: the shard itself) in the schema; digest recorded like a shard."""
    table = pq.read_table(shard, columns=["subject_id", "session_id", "t1w"])
    cells = []
    for row in table.to_pylist():
        t1w = row["t1w"]
        cells.append(
            None if not t1w else {"bytes": thumbnail(t1w["bytes"]), "path": f"{Path(t1w['path']).name}.png"}
        )
    record = (pq.read_schema(record_from or shard).metadata or {})[SHARD_META_KEY]
    schema = PREVIEW_FEATURES.arrow_schema
    schema = schema.with_metadata({**schema.metadata, SHARD_META_KEY: record})
    preview = pa.Table.from_pydict(
        {
            "subject_id": table.column("subject_id").to_pylist(),
            "session_id": table.column("session_id").to_pylist(),
            "t1w_thumbnail": cells,
        },
        schema=schema,
    )
    write_row_groups(dest, schema, [preview])
    record_digest(dest)
    return dest


def png_of(text: str) -> bytes:
    out = io.BytesIO()
    PILImage.new("L", (8, 4), color=len(text) % 256).save(out, format="PNG")
    return out.getvalue()


# -- built once per module, copied per test ------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[DatasetSpec, Path, list[str]]:
    """The demo's shards (3), built by the real pipeline once; and their previews."""
    root = tmp_path_factory.mktemp("preview-built")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_home(monkeypatch, root / "home")
        spec = load_spec(write_demo(root / "demo")).with_overrides(destination=str(root / "first"))
        keys = materialize_all(spec, root / "storage")
    previews = root / "storage" / "demo" / "previews"
    previews.mkdir()
    for key in keys:
        write_preview(
            root / "storage" / "demo" / "hub_shards" / f"{key}.parquet", previews / f"{key}.parquet"
        )
    return spec, root / "storage", keys


@dataclasses.dataclass
class Built:
    spec: DatasetSpec
    storage: Path
    keys: list[str]

    @property
    def files(self) -> dict[str, Path]:
        return {k: self.storage / "demo" / "hub_shards" / f"{k}.parquet" for k in self.keys}

    @property
    def previews(self) -> dict[str, Path]:
        return {k: self.storage / "demo" / "previews" / f"{k}.parquet" for k in self.keys}

    @property
    def table(self) -> pa.Table:
        return pq.read_table(self.storage / "demo" / "bids_index.parquet")

    @property
    def plan(self) -> ShardPlan:
        return self.spec.shard_plan(self.table)

    def publish(self, destination, *, preview=True, png: bytes | None = None, default=False) -> PublishResult:
        return publish_shards(
            self.spec.name,
            self.table,
            self.plan,
            self.files,
            destination,
            preview_files=self.previews if preview else None,
            preview_png=png,
            preview_default=default,
        )


@pytest.fixture
def built(stored, tmp_path) -> Built:
    spec, template, keys = stored
    storage = tmp_path / "storage"
    shutil.copytree(template, storage)
    return Built(spec, storage, keys)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".bids_hub_lock"
    }


def header(card: str) -> dict:
    return DatasetCard(card).data.to_dict()


def assert_full(ds, built: Built) -> None:
    assert ds.features["t1w"] == Nifti() and "t1w_thumbnail" not in ds.features
    assert len(ds) == built.table.num_rows


def assert_preview(ds, built: Built) -> None:
    assert ds.features == PREVIEW_FEATURES  # no Nifti feature: the dataset viewer renders it
    assert len(ds) == built.table.num_rows
    ids = list(zip(ds["subject_id"], ds["session_id"], strict=True))
    table = built.table
    assert ids == list(
        zip(table.column("subject_id").to_pylist(), table.column("session_id").to_pylist(), strict=True)
    )
    pictures = [row["t1w_thumbnail"] for row in ds]
    assert any(p is not None for p in pictures)
    for picture in pictures:
        if picture is not None:  # decoded by datasets into a real PIL image
            assert isinstance(picture, PILImage.Image) and picture.width > picture.height > 0


# -- a local folder ----------------------------------------------------------------------------


def test_a_local_folder_gets_both_configs_and_the_full_data_stays_the_default(built, tmp_path):
    dest = tmp_path / "dest"
    png = png_of("mosaic")
    result = built.publish(LocalFolder(dest), png=png)
    n = len(built.keys)
    previews = [f"preview/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert set(previews) | {"preview.png"} <= set(result.files_written)
    assert result.preview_files == [built.previews[k] for k in built.keys] and result.preview_png == png
    assert result.configs == {"default": "data/train-*", "preview": "preview/train-*"}
    for name, key in zip(previews, built.keys, strict=True):
        assert os.path.samefile(dest / name, built.previews[key])  # linked, like the data files
    assert (dest / "preview.png").read_bytes() == png
    manifest = Manifest.parse((dest / MANIFEST_NAME).read_bytes(), "m")
    assert manifest.files == set(snapshot(dest)) - {MANIFEST_NAME}

    card = (dest / "README.md").read_text()
    assert is_tool_card(card)
    data = header(card)
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]},
        {"config_name": "preview", "data_files": [{"split": "train", "path": "preview/train-*"}]},
    ]
    infos = {info["config_name"]: info for info in data["dataset_info"]}
    assert set(infos) == {"default", "preview"}
    assert infos["preview"]["splits"] == [
        {"name": "train", "num_bytes": infos["preview"]["dataset_size"], "num_examples": built.table.num_rows}
    ]
    assert infos["preview"]["download_size"] == sum(p.stat().st_size for p in built.previews.values())
    assert {f["name"]: f for f in infos["preview"]["features"]}["t1w_thumbnail"] == {
        "name": "t1w_thumbnail",
        "dtype": "image",
    }
    assert "## Configs" in card and "![preview](preview.png)" in card
    assert f'load_dataset("{dest}", split="train")' in card
    assert f'load_dataset("{dest}", "preview", split="train")' in card
    assert "datasets >= 4.4.0" in card and "three orthogonal mid-slices" in card

    cache = str(tmp_path / "cache")
    assert_full(load_dataset(str(dest), split="train", cache_dir=cache), built)
    assert_full(load_dataset(str(dest), "default", split="train", cache_dir=cache), built)
    assert_preview(load_dataset(str(dest), "preview", split="train", cache_dir=cache), built)

    folder = LocalFolder(dest)
    report = folder.verify_after_publish(result, built.table)
    assert report.ok, report.summary()
    quick = folder.verify_quick(
        result.shard_files, result.card, built.table, preview_files=result.preview_files, preview_png=png
    )
    assert quick.ok, quick.summary()
    assert quick.summary().startswith(f"OK: 4/4 rows, {2 * n + 2} published files")


def test_with_preview_default_the_preview_opens_first_and_the_full_data_is_named_full(built, tmp_path):
    dest = tmp_path / "dest"
    result = built.publish(LocalFolder(dest), png=png_of("x"), default=True)
    assert result.configs == {"full": "data/train-*", "preview": "preview/train-*"}
    card = (dest / "README.md").read_text()
    data = header(card)
    assert data["configs"] == [
        {"config_name": "full", "data_files": [{"split": "train", "path": "data/train-*"}]},
        {
            "config_name": "preview",
            "data_files": [{"split": "train", "path": "preview/train-*"}],
            "default": True,
        },
    ]
    assert (
        MetadataConfigs.from_dataset_card_data(DatasetCard(card).data).get_default_config_name() == "preview"
    )
    assert {info["config_name"] for info in data["dataset_info"]} == {"full", "preview"}
    assert is_tool_card(card)
    assert f'load_dataset("{dest}", "full", split="train")' in card
    assert f'load_dataset("{dest}", "preview", split="train")' in card
    assert f'load_dataset("{dest}", split="train")' not in card  # that is the preview now

    cache = str(tmp_path / "cache")
    assert_preview(load_dataset(str(dest), split="train", cache_dir=cache), built)
    assert_preview(load_dataset(str(dest), "preview", split="train", cache_dir=cache), built)
    assert_full(load_dataset(str(dest), "full", split="train", cache_dir=cache), built)

    report = verify_published(str(dest), built.table)  # finds the full data although it is not the default
    assert report.ok, report.summary()
    assert report.files_checked == 12  # every NIfTI file of the full data, compared with its source


def test_a_publication_without_preview_removes_the_previous_preview(built, tmp_path):
    dest = tmp_path / "dest"
    built.publish(LocalFolder(dest), png=png_of("first"))
    (dest / "NOTES.md").write_text("mine")
    again = built.publish(LocalFolder(dest), preview=False)
    n = len(built.keys)
    assert sorted(again.files_removed) == sorted(
        [f"preview/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)] + ["preview.png"]
    )
    assert not (dest / "preview").exists() and not (dest / "preview.png").exists()
    assert (dest / "NOTES.md").read_text() == "mine"
    manifest = Manifest.parse((dest / MANIFEST_NAME).read_bytes(), "m")
    assert manifest.files == {"README.md", *(f"data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n))}
    card = (dest / "README.md").read_text()
    assert "preview" not in json.dumps(header(card)["configs"]) and "## Configs" not in card
    assert all(p.is_file() for p in built.previews.values())  # the stored previews are kept
    report = LocalFolder(dest).verify_after_publish(again, built.table)
    assert report.ok, report.summary()
    # and back: the preview returns
    built.publish(LocalFolder(dest))
    assert len(list((dest / "preview").iterdir())) == n and not (dest / "preview.png").exists()


def _file_under_preview(folder: Path) -> None:
    (folder / "preview").mkdir(exist_ok=True)
    (folder / "preview" / "notes.txt").write_text("mine")


FOREIGN = {
    "file-under-preview": (_file_under_preview, r"did not write.*preview/notes\.txt"),
    "own-preview-png": (
        lambda d: (d / "preview.png").write_bytes(b"my own picture"),
        r"did not write.*preview\.png",
    ),
    "preview-is-a-file": (lambda d: (d / "preview").write_text("a file"), "preview is not a folder"),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_preview_files_are_refused_by_name_and_kept(built, tmp_path, kind):
    make, message = FOREIGN[kind]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    make(fresh)
    before = snapshot(fresh)
    for preview in (True, False):  # whether or not the new publication has a preview
        with pytest.raises(DestinationError, match=message) as refused:
            built.publish(LocalFolder(fresh), preview=preview)
        assert isinstance(refused.value, UserError)  # exit 2 from the CLI
    assert snapshot(fresh) == before
    if kind == "preview-is-a-file":
        return
    # the same beside a publication of the tool (without preview.png)
    dest = tmp_path / "dest"
    built.publish(LocalFolder(dest))
    make(dest)
    before = snapshot(dest)
    for preview in (True, False):
        with pytest.raises(DestinationError, match=message):
            built.publish(LocalFolder(dest), preview=preview)
    assert snapshot(dest) == before
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))


def test_a_preview_publication_whose_manifest_was_lost_is_adopted_by_its_card(built, tmp_path):
    dest = tmp_path / "dest"
    built.publish(LocalFolder(dest), png=png_of("lost"))
    (dest / MANIFEST_NAME).unlink()
    (dest / "preview" / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match=r"did not write.*preview/notes\.txt"):
        LocalFolder(dest)  # the card's preview config adopts its files, never someone else's
    (dest / "preview" / "notes.txt").unlink()
    result = built.publish(LocalFolder(dest), preview=False)
    n = len(built.keys)
    assert {p for p in result.files_removed if p.startswith("preview")} == {
        *(f"preview/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)),
        "preview.png",
    }
    assert not (dest / "preview").exists() and not (dest / "preview.png").exists()


def test_a_hand_made_manifest_may_list_preview_files_but_nothing_else(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    ok = {
        "tool": "bids_hub_dagster",
        "format": 1,
        "files": ["preview/train-00000-of-00001.parquet", "preview.png"],
    }
    assert Manifest.parse(json.dumps(ok).encode(), "m").files == set(ok["files"])
    for bad in ("preview/notes.txt", "preview/train-0-of-1.parquet", "previews/train-00000-of-00001.parquet"):
        (dest / MANIFEST_NAME).write_text(json.dumps({**ok, "files": [bad]}))
        with pytest.raises(DestinationError, match="never writes"):
            LocalFolder(dest)


@pytest.mark.parametrize(
    "fault",
    ["ctrl-c-between-the-preview-renames", "ctrl-c-before-preview-png", "readme-rename-fails"],
)
def test_an_interrupted_swap_puts_the_whole_previous_publication_back(built, tmp_path, monkeypatch, fault):
    dest = tmp_path / "dest"
    built.publish(LocalFolder(dest), png=png_of("first"))
    before = {k: v for k, v in snapshot(dest).items() if k != MANIFEST_NAME}
    real_replace = os.replace
    fired = []

    def broken(src, dst):
        src, dst = Path(src), Path(dst)
        if not fired:
            if fault == "ctrl-c-between-the-preview-renames" and dst == dest / "preview":
                fired.append(dst)  # the old preview/ went out, the new one is not in yet
                raise KeyboardInterrupt
            if fault == "ctrl-c-before-preview-png" and dst == dest / "preview.png":
                fired.append(dst)  # data/ and preview/ swapped already
                raise KeyboardInterrupt
            if fault == "readme-rename-fails" and dst == dest / "README.md":
                fired.append(dst)  # everything else swapped already
                raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", broken)
    # a different publication: another preview file, another picture, the preview by default
    previews = built.previews | {
        built.keys[0]: write_preview(built.files[built.keys[0]], tmp_path / "p0.parquet")
    }
    expected = KeyboardInterrupt if fault.startswith("ctrl-c") else DestinationError
    with pytest.raises(expected):
        publish_shards(
            built.spec.name,
            built.table,
            built.plan,
            built.files,
            LocalFolder(dest),
            preview_files=previews,
            preview_png=png_of("second one"),
            preview_default=True,
        )
    monkeypatch.setattr(os, "replace", real_replace)
    assert fired
    assert {k: v for k, v in snapshot(dest).items() if k != MANIFEST_NAME} == before
    assert not list(dest.glob(f"{STAGING_PREFIX}*"))
    assert Manifest.parse((dest / MANIFEST_NAME).read_bytes(), "m").files >= set(before)
    report = verify_published(str(dest), built.table)
    assert report.ok, report.summary()
    # the next publish goes through
    built.publish(LocalFolder(dest), png=png_of("third"))


def test_previews_are_checked_like_shards(built, tmp_path):
    keys = built.keys
    missing = {k: p for k, p in built.previews.items() if k != keys[1]}
    with pytest.raises(ShardsNotReadyError, match=f"1 preview\\(s\\) not built yet: {keys[1]}"):
        publish_shards(
            built.spec.name,
            built.table,
            built.plan,
            built.files,
            LocalFolder(tmp_path / "d"),
            preview_files=missing,
        )
    # a preview carrying another shard's record: built for other rows
    wrong = built.previews | {
        keys[0]: write_preview(built.files[keys[0]], tmp_path / "w.parquet", record_from=built.files[keys[2]])
    }
    with pytest.raises(
        ShardsNotReadyError, match=f"preview\\(s\\) were built from an older index or plan: {keys[0]}"
    ):
        publish_shards(
            built.spec.name,
            built.table,
            built.plan,
            built.files,
            LocalFolder(tmp_path / "d"),
            preview_files=wrong,
        )
    # a stored preview changed after it was written
    victim = built.previews[keys[2]]
    with open(victim, "r+b") as fh:
        fh.seek(10)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ShardsNotReadyError, match=f"stored preview file\\(s\\) changed.*{keys[2]}"):
        publish_shards(
            built.spec.name, built.table, built.plan, built.files, LocalFolder(tmp_path / "d"),
            preview_files=built.previews,
        )  # fmt: skip
    assert not (tmp_path / "d").exists()


def test_verify_catches_a_tampered_preview(built, tmp_path):
    dest = tmp_path / "dest"
    png = png_of("mine")
    result = built.publish(LocalFolder(dest), png=png)
    folder = LocalFolder(dest)
    n = len(built.keys)
    first, second = (dest / "preview" / f"train-{i:05d}-of-{n:05d}.parquet" for i in (0, 1))

    # written through the hard link: the stored preview changed with it, its recorded digest catches it
    with open(first, "r+b") as fh:
        fh.seek(-20, 2)
        fh.write(b"\xff" * 4)
    # replaced by a copy of another preview: a parquet file that loads, with the wrong rows
    second.unlink()
    shutil.copyfile(dest / "preview" / f"train-{n - 1:05d}-of-{n:05d}.parquet", second)
    (dest / "preview.png").write_bytes(b"not the picture")
    (dest / "preview" / "extra.parquet").write_bytes(b"x")
    quick = folder.verify_quick(
        result.shard_files, result.card, built.table, preview_files=result.preview_files, preview_png=png
    )
    problems = "\n".join(quick.problems)
    assert not quick.ok
    assert f"{first} differs from what was published: {result.preview_files[0]} changed" in problems
    assert f"{second} differs from {result.preview_files[1]}: sha256 expected" in problems
    assert f"{dest / 'preview.png'} is not the preview picture of this publication" in problems
    assert f"{dest / 'preview' / 'extra.parquet'} is not a preview file of this publication" in problems

    # the full read-back: the preview config no longer holds each row once
    (dest / "preview" / "extra.parquet").unlink()
    first.unlink()
    shutil.copyfile(result.preview_files[1], first)  # a good file in the wrong place: loads, wrong rows
    report = verify_published(str(dest), built.table)
    assert not report.ok
    assert any(
        f"the preview config of {dest}" in p
        and "rows, expected 4" in p
        or "preview row" in p
        and "appears" in p
        for p in report.problems
    ), report.summary()
    assert report.rows_found == built.table.num_rows  # the full data itself is fine
    after = folder.verify_after_publish(result, built.table)
    assert any("preview.png" in p for p in after.problems)


def card_of(features: dict, **facts) -> str:
    base = dict(
        name="x",
        row="session",
        description={"Name": "x"},
        features=Features(features),
        num_rows=2,
        num_subjects=1,
        num_sessions=2,
        files_per_column={},
        bytes_per_column={},
        num_shards=1,
        download_size=10,
        dataset_size=20,
        load_id="lab/x",
        phenotype_descriptions={},
    )
    return str(render_card(CardFacts(**(base | facts))))


def test_the_card_explains_each_column_family_present_and_no_other():
    features = {
        "subject_id": Value("string"),
        "session_id": Value("string"),
        "t1w": Nifti(),
        "t1w_sidecar": Json(),
        "t1w_entities": Json(),
        "t1w_RepetitionTime": Value("float64"),
        "t1w_acq_time": Value("string"),
        "t1w_mask": Nifti(),  # a NIfTI column whose name starts like a companion of t1w
        "t1w_mask_sidecar": Json(),
        "bold": List(Nifti()),
        "bold_events": List(List(Json())),
        "dwi": Nifti(),
        "dwi_bval": List(Value("float64")),
        "dwi_bvec": List(List(Value("float64"))),
        "age": Value("float64"),
        "handedness": Value("string"),
    }
    card = card_of(features, session_columns=("handedness",), scans_columns=("acq_time",))
    families = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[2].strip(" |")
        for line in card.splitlines()
        if line.startswith("| `C_")
    }
    assert families == {
        "`C_sidecar`": "`t1w_sidecar`, `t1w_mask_sidecar`",
        "`C_entities`": "`t1w_entities`",
        "`C_events`": "`bold_events`",
        "`C_bval`": "`dwi_bval`",
        "`C_bvec`": "`dwi_bvec`",
        "`C_<Field>`": "`t1w_RepetitionTime`",
        "`C_<column>`": "`t1w_acq_time`",
    }
    assert "- from `participants.tsv`: `age`" in card
    assert "- from `sessions.tsv` (the row's session): `handedness`" in card
    assert "| `bold_events` | List(List(Json())) |" in card
    # only what is there: no companions, no family table
    plain = card_of({"subject_id": Value("string"), "session_id": Value("string"), "t1w": Nifti()})
    assert "## Column families" not in plain and "## Configs" not in plain
    assert 'load_dataset("lab/x", split="train")' in plain
    # preview.png without a preview config is still shown
    assert "![preview](preview.png)" in card_of(features, has_preview_png=True)


# -- the Hub ------------------------------------------------------------------------------------


def hub_repo(server, **options) -> HubRepo:
    return HubRepo(
        REPO_ID,
        token=server.token,
        endpoint=server.endpoint,
        options=HubOptions(**({"files_per_commit": 2} | options)),
        backoff=FAST,
    )


def test_the_hub_gets_both_configs_in_batches_and_loses_the_preview_when_a_publish_has_none(
    built, hub_server, tmp_path
):
    n = len(built.keys)
    png = png_of("hub")
    repo = hub_repo(hub_server)
    repo.ensure_repo()
    # what the plan will be: 3 shards + 3 previews + preview.png, 2 files a commit, widened manifest first
    batches, _ = plan_commits(
        [built.files[k] for k in built.keys], b"card", {}, 2,
        preview_files=[built.previews[k] for k in built.keys], preview_png=png,
    )  # fmt: skip
    assert all(len(b.adds) + len(b.deletes) + len(b.blobs) + (b.card is not None) + (b.manifest is not None) <= 2
               for b in batches)  # fmt: skip
    assert batches[0].adds == [] and batches[0].manifest is not None  # the widened manifest first
    assert batches[-1].card is not None and any("preview.png" in b.blobs for b in batches)  # the card last

    result = built.publish(repo, png=png)
    remote = hub_server.files(REPO_ID)
    for i, key in enumerate(built.keys):
        assert remote[f"preview/train-{i:05d}-of-{n:05d}.parquet"] == built.previews[key].read_bytes()
    assert remote["preview.png"] == png
    manifest = Manifest.parse(remote[MANIFEST_NAME], "m")
    assert manifest.files == {p for p in remote if p not in (MANIFEST_NAME, ".gitattributes")}
    commits = hub_server.commits(REPO_ID)[1:]
    assert len(commits) == len(batches) == len(result.commit_urls)

    quick = repo.verify_after_publish(result, built.table)
    assert quick.ok, quick.summary()
    cache = str(tmp_path / "cache")
    assert_full(load_dataset(REPO_ID, split="train", cache_dir=cache), built)
    assert_preview(load_dataset(REPO_ID, "preview", split="train", cache_dir=cache), built)
    full = repo.verify(built.table)
    assert full.ok, full.summary()

    # nothing changed: no commit
    again = built.publish(hub_repo(hub_server), png=png)
    assert again.commit_urls == [] and "preview.png" in again.files_skipped

    # preview by default: the card changes, the files are skipped
    flipped = built.publish(hub_repo(hub_server), png=png, default=True)
    assert flipped.files_written == ["README.md"]
    assert_preview(load_dataset(REPO_ID, split="train", cache_dir=str(tmp_path / "c2")), built)
    assert_full(load_dataset(REPO_ID, "full", split="train", cache_dir=str(tmp_path / "c2")), built)
    assert verify_published(REPO_ID, built.table).ok

    # a publish without preview deletes the preview files and the picture (the manifest lists them)
    plain = built.publish(hub_repo(hub_server), preview=False)
    assert sorted(plain.files_removed) == sorted(
        [f"preview/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)] + ["preview.png"]
    )
    remote = hub_server.files(REPO_ID)
    assert not [p for p in remote if p.startswith("preview")]
    assert plain.pr_url is None and hub_repo(hub_server).verify(built.table).ok


def test_a_foreign_file_under_preview_on_the_hub_is_refused_and_kept(built, hub_server):
    repo = hub_repo(hub_server)
    repo.ensure_repo()
    api = HfApi()
    api.upload_file(
        path_or_fileobj=b"theirs", path_in_repo="preview/notes.txt", repo_id=REPO_ID, repo_type="dataset"
    )
    commits = len(hub_server.commits(REPO_ID))
    with pytest.raises(DestinationError, match=r"did not write: preview/notes\.txt"):
        repo.check()
    for preview in (True, False):
        with pytest.raises(DestinationError, match=r"preview/notes\.txt"):
            built.publish(hub_repo(hub_server), preview=preview)
    assert len(hub_server.commits(REPO_ID)) == commits
    assert hub_server.files(REPO_ID)["preview/notes.txt"] == b"theirs"
    api.delete_file("preview/notes.txt", repo_id=REPO_ID, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=png_of("x"), path_in_repo="preview.png", repo_id=REPO_ID, repo_type="dataset"
    )
    with pytest.raises(DestinationError, match=r"did not write: preview\.png"):
        built.publish(hub_repo(hub_server))


def test_the_hub_quick_verify_catches_a_replaced_preview(built, hub_server):
    repo = hub_repo(hub_server)
    repo.ensure_repo()
    png = png_of("v")
    result = built.publish(repo, png=png)
    assert repo.verify_after_publish(result, built.table).ok
    n = len(built.keys)
    name = f"preview/train-00001-of-{n:05d}.parquet"
    api = HfApi()
    api.upload_file(path_or_fileobj=b"not a preview", path_in_repo=name, repo_id=REPO_ID, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"other", path_in_repo="preview.png", repo_id=REPO_ID, repo_type="dataset"
    )
    later = hub_repo(hub_server)
    later.published_head = hub_server.head(REPO_ID)
    report = later.verify_after_publish(result, built.table)
    problems = "\n".join(report.problems)
    assert not report.ok
    assert f"{name} differs from {result.preview_files[1]}" in problems
    assert "preview.png of" in problems and "is not the preview picture" in problems
    assert "cannot read its parquet footer" in problems or "cannot load the preview config" in problems


def test_a_hub_publish_interrupted_between_commits_lists_the_previews_it_committed(built, hub_server):
    n = len(built.keys)
    png = png_of("interrupted")
    repo = hub_repo(hub_server)
    repo.ensure_repo()
    built.publish(repo, preview=False)
    old_card = hub_server.files(REPO_ID)["README.md"]
    # one file a commit: the widened manifest, preview 0, then the LFS upload of preview 1 is refused
    hub_server.inject("POST", r"/info/lfs/objects/batch$", status=403, skip=1, times=100)
    with pytest.raises(HubAccessError):
        built.publish(hub_repo(hub_server, files_per_commit=1), png=png)
    hub_server.clear_faults()
    remote = hub_server.files(REPO_ID)
    previews = [f"preview/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert [p for p in remote if p.startswith("preview")] == previews[:1]
    assert remote["README.md"] == old_card  # the card comes last: readers still see the old configs
    assert Manifest.parse(remote[MANIFEST_NAME], "m").files >= {*previews, "preview.png"}  # widened first

    # a publish without preview now: the committed preview file is the tool's, and goes
    plain = built.publish(hub_repo(hub_server), preview=False)
    assert plain.files_removed == previews[:1]
    assert not [p for p in hub_server.files(REPO_ID) if p.startswith("preview")]

    # interrupted again, then resumed: only what is missing is sent
    hub_server.inject("POST", r"/info/lfs/objects/batch$", status=403, skip=1, times=100)
    with pytest.raises(HubAccessError):
        built.publish(hub_repo(hub_server, files_per_commit=1), png=png)
    hub_server.clear_faults()
    sent = {sha for sha, _ in hub_server.lfs_uploads()}
    result = built.publish(hub_repo(hub_server, files_per_commit=1), png=png)
    resent = [sha for sha, _ in hub_server.lfs_uploads()][len(sent) :]
    first = hashlib.sha256(built.previews[built.keys[0]].read_bytes()).hexdigest()
    assert first in sent and first not in resent
    assert previews[0] in result.files_skipped and set(previews[1:]) <= set(result.files_written)
    remote = hub_server.files(REPO_ID)
    assert [p for p in remote if p.startswith("preview/")] == previews and remote["preview.png"] == png
    report = hub_repo(hub_server).verify(built.table)
    assert report.ok, report.summary()
