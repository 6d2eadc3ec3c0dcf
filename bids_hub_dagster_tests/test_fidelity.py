"""Fidelity of the companion columns and of the preview config, end to end through the CLI.

A BIDS tree of real NIfTI images (nibabel's test data, and a 6-volume diffusion image made
here) with sidecars at three levels and different key sets, events (``n/a``, Levels), diffusion
gradients, a sessions table and a scans table is published with ``bids-hub-dagster publish``;
what ``datasets.load_dataset`` (and plain pyarrow) reads back is compared, value for value,
with the source files, parsed here independently of the package's readers.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Features, Image, Json, List, Nifti, Value, load_dataset
from PIL import Image as PILImage

from bids_hub_dagster.cli import cli
from bids_hub_dagster.demo import NIBABEL_DATA
from bids_hub_dagster_tests.conftest import isolate_home, run_cli

# ------------------------------------------------------------------------------ the BIDS tree

#: relpath -> nibabel test image ("dwi6" is the 6-volume image made here)
IMAGES = {
    "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii": "anatomical.nii",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-01_bold.nii": "functional.nii",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-02_bold.nii.gz": "example4d.nii.gz",
    "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz": "dwi6",
    "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz": "anatomical.nii",  # gzipped on copy
    "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-01_bold.nii": "functional.nii",
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii": "reoriented_anat_moved.nii",
    "sub-02/ses-1/func/sub-02_ses-1_task-nback_bold.nii": "functional.nii",  # no sidecar, no events
    "sub-02/ses-1/func/sub-02_ses-1_task-rest_run-01_bold.nii": "functional.nii",
    "sub-02/ses-1/dwi/sub-02_ses-1_dwi.nii": "dwi6",
    "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii": "resampled_anat_moved.nii",  # NaN voxels; no bold, no dwi
}

#: the rows (row: session), in the order the dataset has them
ROWS = [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "ses-1"), ("sub-03", "ses-1")]

JSONS: dict[str, Any] = {
    "dataset_description.json": {"Name": "fidelity", "BIDSVersion": "1.10.0", "License": "CC0"},
    "participants.json": {
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "age": {"Description": "age", "Units": "years"},
    },
    # three levels of bold sidecars: dataset, subject, file (which overrides both)
    "task-rest_bold.json": {"TaskName": "rest", "RepetitionTime": 2, "EchoTime": 0.03},
    "sub-01/sub-01_task-rest_bold.json": {"RepetitionTime": 2.5, "SliceTiming": [0.0, 0.5, 1.0]},
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-02_bold.json": {
        "RepetitionTime": 3.0,
        "FlipAngle": 90,
        "EchoTime": None,  # a null the file itself says: kept, never dropped
    },
    # T1w: keys that differ from file to file; sub-02's has no sidecar at any level
    "sub-01/ses-1/anat/sub-01_ses-1_T1w.json": {"MagneticFieldStrength": 3, "InversionTime": 0.9},
    "sub-01/ses-2/anat/sub-01_ses-2_T1w.json": {
        "PulseSequenceType": "MPRAGE",
        "Extra": {
            "list": [1, 2.5, "x"],
            "nested": {"deep": True},
            "big": 12345678901234567890,
            "tiny": 1e-300,
        },
        "Instructions": "Schließen Sie die Augen",
    },
    "dwi.json": {"PhaseEncodingDirection": "j-"},
    "sub-02/ses-1/dwi/sub-02_ses-1_dwi.json": {"TotalReadoutTime": 0.05},
    # events descriptions: Levels make trial_type and code strings ("1", "10")
    "task-rest_events.json": {
        "trial_type": {"Levels": {"go": "go trial", "stop": "stop trial"}},
        "code": {"Levels": {"1": "one", "2": "two", "10": "ten"}},
        "n_stim": {"Description": "stimuli shown", "Format": "number"},  # ints, declared numbers: floats
    },
}

TEXTS = {
    "participants.tsv": "participant_id\tsex\tage\nsub-01\tF\t54\nsub-02\tM\t61.5\nsub-03\tF\tn/a\n",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-01_events.tsv": (
        "onset\tduration\ttrial_type\tcode\tresponse_time\tn_stim\tnote\n"
        "0.5\t1.0\tgo\t1\t0.42\t3\tfirst\n"
        "2\tn/a\tstop\t2\tn/a\t4\tn/a\n"
        "3.5\t1.5\tn/a\t10\t1.1\t5\t007\n"
    ),
    "sub-02/ses-1/func/sub-02_ses-1_task-rest_run-01_events.tsv": (
        "onset\tduration\ttrial_type\n1.25\t0.5\tgo\nn/a\t2\tstop\n"
    ),
    # sub-01 ses-1: its own gradients; sub-02: the dataset-level ones (inheritance)
    "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval": "0 1000 1000 2000 2000 3000\n",
    "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec": ("0 1 0 0 0.7071 -0.5\n0 0 1 0 0.7071 0.5\n0 0 0 1 0 0.7071\n"),
    "dwi.bval": "0\n5\n500\n500\n1000\n1e3\n",
    "dwi.bvec": "0 0.6 0 0 1 0\n0 0.8 1 0 0 0\n1 0 0 1 0 1\n",
    "sub-01/sub-01_sessions.tsv": "session_id\tweight\tscanner\tvisit\nses-1\t70.5\tA\t1\nses-2\t71\tn/a\t2\n",
    "sub-02/sub-02_sessions.tsv": "session_id\tscanner\tweight\nses-1\tB\t80\n",  # no visit; 80 is 80.0
    "sub-01/ses-1/sub-01_ses-1_scans.tsv": (
        "filename\tquality\n"
        "anat/sub-01_ses-1_T1w.nii\tgood\n"
        "func/sub-01_ses-1_task-rest_run-01_bold.nii\tpoor\n"
        "dwi/sub-01_ses-1_dwi.nii.gz\tn/a\n"
    ),
    "sub-02/ses-1/sub-02_ses-1_scans.tsv": "filename\tquality\nfunc/sub-02_ses-1_task-rest_run-01_bold.nii\tok\n",
}


def dwi6() -> nib.Nifti1Image:
    """A real 8×8×8 image of 6 volumes (structure, so that its thumbnail is not constant)."""
    rng = np.random.default_rng(0)
    grid = np.indices((8, 8, 8)).sum(axis=0).astype("float32")
    data = np.stack([grid * (k + 1) + rng.normal(size=(8, 8, 8)) for k in range(6)], axis=-1)
    return nib.Nifti1Image(data.astype("float32"), np.eye(4))


def build_tree(root: Path) -> Path:
    for rel, source in IMAGES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if source == "dwi6":
            nib.save(dwi6(), path)
            continue
        data = (NIBABEL_DATA / source).read_bytes()
        if rel.endswith(".gz") and not source.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
    for rel, obj in JSONS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(obj, indent=1))
    for rel, text in TEXTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ------------------------------------------------- the expected values, read here from the sources

_INT_TEXT = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def strip_extension(name: str) -> str:
    return name.split(".", 1)[0]


def name_parts(name: str) -> tuple[dict[str, str], str]:
    """``sub-01_ses-1_task-rest_run-02_bold.nii.gz`` → ({sub: 01, ...}, "bold"): labels as written."""
    *pairs, suffix = strip_extension(name).split("_")
    return dict(p.split("-", 1) for p in pairs if "-" in p), suffix


def expected_sidecar(root: Path, rel: str) -> dict | None:
    """The BIDS inheritance principle over the tree: every ``.json`` of the file's suffix in its folder
    or an ancestor, whose entities are a subset of the file's, merged least specific first."""
    entities, suffix = name_parts(rel.rsplit("/", 1)[1])
    folders = rel.split("/")[:-1]
    found = []
    for depth in range(len(folders) + 1):
        folder = root.joinpath(*folders[:depth])
        for path in sorted(folder.glob(f"*{suffix}.json")):
            cand, cand_suffix = name_parts(path.name)
            if cand_suffix == suffix and cand.items() <= entities.items():
                found.append((depth, len(cand), path))
    if not found:
        return None
    merged: dict = {}
    for _, _, path in sorted(found):
        merged.update(json.loads(path.read_text()))
    return merged


def read_tsv(path: Path) -> list[dict[str, str | None]]:
    with path.open(newline="") as f:
        return [
            {k: (None if v == "n/a" else v) for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")
        ]


def infer(texts: list[str | None]) -> type:
    present = [t for t in texts if t is not None]
    if present and all(_INT_TEXT.match(t) for t in present):
        return int
    if present and all(_NUMBER_TEXT.match(t) for t in present):
        return float
    return str


def typed(records: list[dict[str, str | None]], kinds: dict[str, type] | None = None) -> list[dict]:
    """TSV records typed column by column: ``kinds`` where given, else inferred from the texts."""
    kinds = dict(kinds or {})
    for column in records[0] if records else []:
        kinds.setdefault(column, infer([r[column] for r in records]))
    return [{k: None if v is None else kinds[k](v) for k, v in r.items()} for r in records]


def expected_events(root: Path, rel: str) -> list[dict] | None:
    folder, name = rel.rsplit("/", 1)
    events = root / folder / (strip_extension(name).removesuffix("_bold") + "_events.tsv")
    if not events.is_file():
        return None
    described = json.loads((root / "task-rest_events.json").read_text())
    kinds = {"onset": float, "duration": float} | {c: str for c, d in described.items() if "Levels" in d}
    formats = {"number": float, "integer": int}
    kinds |= {c: formats[d["Format"]] for c, d in described.items() if d.get("Format") in formats}
    return typed(read_tsv(events), kinds)


def numbers(text: str) -> list[list[float]]:
    return [[float(t) for t in line.split()] for line in text.splitlines() if line.strip()]


def expected_gradients(root: Path, rel: str) -> tuple[list[float], list[list[float]]] | None:
    own = root / (rel.split(".", 1)[0])
    bval, bvec = own.with_suffix(".bval"), own.with_suffix(".bvec")
    if not bval.is_file():
        bval, bvec = root / "dwi.bval", root / "dwi.bvec"
    values = [v for line in numbers(bval.read_text()) for v in line]
    vectors = numbers(bvec.read_text())
    assert len(values) == nib.load(root / rel).shape[3] == len(vectors[0]) and len(vectors) == 3
    return values, vectors


def expected_sessions(root: Path, sub: str, ses: str) -> dict[str, Any]:
    """The row's sessions.tsv values, typed as inferred over every subject's sessions.tsv."""
    tables = {p.parent.name: read_tsv(p) for p in sorted(root.glob("sub-*/sub-*_sessions.tsv"))}
    columns = [c for table in tables.values() for c in table[0] if c != "session_id"]
    kinds = {c: infer([r.get(c) for t in tables.values() for r in t]) for c in columns}
    record = next((r for r in tables.get(sub, []) if r["session_id"] == ses), {})
    return {c: None if record.get(c) is None else kinds[c](record[c]) for c in columns}


def expected_scans(root: Path, rel: str, column: str) -> Any:
    sub, ses = rel.split("/")[:2]
    path = root / sub / ses / f"{sub}_{ses}_scans.tsv"
    for record in read_tsv(path) if path.is_file() else []:
        if f"{sub}/{ses}/{record['filename']}" == rel:
            return record[column]
    return None


def files_of(sub: str, ses: str, datatype: str, root: Path | None = None) -> list[str]:
    """The images of a row and datatype (of IMAGES, or as found under ``root``), in name order."""
    if root is not None:
        return sorted(p.relative_to(root).as_posix() for p in (root / sub / ses / datatype).glob("*.nii*"))
    return sorted(r for r in IMAGES if r.startswith(f"{sub}/{ses}/{datatype}/"))


#: NIfTI column -> (datatype, many), as zero-config names them
COLUMNS = {"t1w": ("anat", False), "dwi": ("dwi", False), "bold": ("func", True)}


def cells(values: list, many: bool) -> Any:
    return values if many else (values[0] if values else None)


def strict(value: Any) -> str:
    """``value`` as canonical JSON: equal texts mean equal values of equal types (3 is not 3.0)."""
    return json.dumps(value, sort_keys=True)


def has_feature(feature: Any, kind: type) -> bool:
    if isinstance(feature, kind):
        return True
    if isinstance(feature, (dict, Features)):
        return any(has_feature(f, kind) for f in feature.values())
    if isinstance(feature, (list, tuple)):
        return any(has_feature(f, kind) for f in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and has_feature(inner, kind)


# -------------------------------------------------------------------------- publishing (CLI)


def publish_captured(*args: str) -> tuple[int, str]:
    """Like conftest.run_cli, for module-scoped fixtures (no capsys there)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["bids-hub-dagster", *args])
        try:
            cli()
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, Path]:
    """The tree published zero-config (one CLI run for the module): (BIDS root, destination)."""
    base = tmp_path_factory.mktemp("fidelity")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_home(monkeypatch, base / "home")
        root = build_tree(base / "bids")
        dest = base / "out"
        code, output = publish_captured("publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 0, output
    assert "verified: OK: 4/4 rows" in output, output
    return root, dest


def load(dest: Path, tmp_path: Path, *config: str):
    return load_dataset(
        str(dest), *config, split="train", cache_dir=str(tmp_path / f"cache-{'-'.join(config)}")
    )


def write_spec(path: Path, **raw: Any) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def card_configs(dest: Path) -> list[dict]:
    header = (dest / "README.md").read_text().split("---")[1]
    return yaml.safe_load(header).get("configs", [])


# ------------------------------------------------------------------------------------ the tests


def test_full_config_matches_every_source_file(published, tmp_path):
    root, dest = published
    ds = load(dest, tmp_path)
    f = ds.features
    assert len(ds) == len(ROWS)
    assert [
        (r["subject_id"], r["session_id"]) for r in ds.select_columns(["subject_id", "session_id"])
    ] == ROWS
    # the companion columns of the default config, typed as promised
    assert isinstance(f["t1w_sidecar"], Json) and isinstance(f["t1w_entities"], Json)
    assert f["bold_sidecar"] == List(Json()) and f["bold_entities"] == List(Json())
    assert f["bold_events"] == List(List(Json()))
    assert f["dwi_bval"] == List(Value("float64")) and f["dwi_bvec"] == List(List(Value("float64")))
    assert {"t1w_events", "dwi_events", "t1w_bval", "bold_bval"}.isdisjoint(f)  # no events/gradients there
    assert not [c for c in f if c.endswith("_quality")]  # scans.tsv columns: not unless the spec names them
    assert (f["weight"], f["scanner"], f["visit"]) == (Value("float64"), Value("string"), Value("int64"))
    assert (f["sex"], f["age"]) == (Value("string"), Value("float64"))

    data = ds.select_columns([c for c in ds.column_names if c not in COLUMNS])  # no NIfTI decoding
    for (sub, ses), row in zip(ROWS, data, strict=True):
        for column, (datatype, many) in COLUMNS.items():
            rels = files_of(sub, ses, datatype)
            where = f"{sub}/{ses} {column}"
            sidecars = [expected_sidecar(root, r) for r in rels]
            assert row[f"{column}_sidecar"] == cells(sidecars, many), where  # exactly its own keys
            assert strict(row[f"{column}_sidecar"]) == strict(cells(sidecars, many)), where
            if many:  # one by one: no key of another file's sidecar, not even as null
                for got, want in zip(row[f"{column}_sidecar"], sidecars, strict=True):
                    assert got is None if want is None else sorted(got) == sorted(want), where
            entities = [name_parts(r.rsplit("/", 1)[1])[0] for r in rels]
            assert row[f"{column}_entities"] == cells(entities, many), where
        bold = files_of(sub, ses, "func")
        events = [expected_events(root, r) for r in bold]
        assert row["bold_events"] == events and strict(row["bold_events"]) == strict(events), (sub, ses)
        dwi = files_of(sub, ses, "dwi")
        gradients = expected_gradients(root, dwi[0]) if dwi else None
        assert row["dwi_bval"] == (gradients[0] if gradients else None), f"{sub}/{ses}"
        assert row["dwi_bvec"] == (gradients[1] if gradients else None), f"{sub}/{ses}"
        for column, value in expected_sessions(root, sub, ses).items():
            assert row[column] == value and (value is None or type(row[column]) is type(value)), (
                sub,
                ses,
                column,
            )

    # the values of the hand-written sources, spelled out once (so the parsers above are checked too)
    first = data[0]
    assert first["bold_entities"][1] == {"sub": "01", "ses": "1", "task": "rest", "run": "02"}
    assert first["bold_sidecar"][1] == {
        "TaskName": "rest",
        "RepetitionTime": 3.0,
        "EchoTime": None,
        "SliceTiming": [0.0, 0.5, 1.0],
        "FlipAngle": 90,
    }
    assert first["bold_events"][0][1] == {
        "onset": 2.0,
        "duration": None,
        "trial_type": "stop",
        "code": "2",
        "response_time": None,
        "n_stim": 4.0,
        "note": None,
    }
    assert first["bold_events"][0][2]["code"] == "10" and first["bold_events"][0][2]["note"] == "007"
    assert first["bold_events"][1] is None  # run-02 has no events file
    assert data[2]["dwi_bval"] == [0.0, 5.0, 500.0, 500.0, 1000.0, 1000.0]  # inherited from dwi.bval
    assert data[2]["t1w_sidecar"] is None and data[3]["t1w_sidecar"] is None  # no sidecar at any level
    assert data[2]["bold_sidecar"][0] is None and data[2]["bold_events"][0] is None  # task-nback: none
    assert data[2]["bold_entities"][0] == {"sub": "02", "ses": "1", "task": "nback"}
    assert data[3]["bold_sidecar"] == [] and data[3]["bold_events"] == [] and data[3]["dwi_bval"] is None
    assert (first["weight"], first["scanner"], first["visit"]) == (70.5, "A", 1)
    assert (data[1]["weight"], data[1]["scanner"], data[2]["weight"], data[2]["visit"]) == (
        71.0,
        None,
        80.0,
        None,
    )
    assert (data[3]["weight"], data[3]["scanner"], data[3]["visit"]) == (None, None, None)  # no sessions.tsv


def test_nifti_bytes_and_json_columns_round_trip_through_plain_pyarrow(published):
    root, dest = published
    shards = sorted((dest / "data").glob("train-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    rows = table.to_pylist()
    assert [(r["subject_id"], r["session_id"]) for r in rows] == ROWS
    for (sub, ses), row in zip(ROWS, rows, strict=True):
        for column, (datatype, many) in COLUMNS.items():
            rels = files_of(sub, ses, datatype)
            images = row[column] if many else ([row[column]] if row[column] is not None else [])
            assert [i["bytes"] for i in images] == [(root / r).read_bytes() for r in rels], column
            for suffix, want in (
                ("_sidecar", [expected_sidecar(root, r) for r in rels]),
                ("_entities", [name_parts(r.rsplit("/", 1)[1])[0] for r in rels]),
            ):
                texts = row[column + suffix] if many else [row[column + suffix]] if rels else []
                assert all(t is None or isinstance(t, str) for t in texts), (column, suffix, texts)
                assert strict([None if t is None else json.loads(t) for t in texts]) == strict(want), (
                    sub,
                    ses,
                    column,
                    suffix,
                )
        texts = row["bold_events"]
        got = [None if e is None else [json.loads(t) for t in e] for e in texts]
        assert strict(got) == strict([expected_events(root, r) for r in files_of(sub, ses, "func")])


def test_preview_config_same_rows_with_real_thumbnails(published, tmp_path):
    root, dest = published
    assert sorted(p.name for p in (dest / "preview").iterdir()) == ["train-00000-of-00001.parquet"]
    configs = {c["config_name"]: c for c in card_configs(dest)}
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert configs["preview"]["data_files"] == [{"split": "train", "path": "preview/train-*"}]
    assert not configs["preview"].get("default")
    card_png = PILImage.open(dest / "preview.png")
    card_png.load()
    assert card_png.format == "PNG" and np.ptp(np.asarray(card_png.convert("L"))) > 0

    preview = load(dest, tmp_path, "preview")
    full = load(dest, tmp_path).select_columns(["subject_id", "session_id", "sex", "age", "weight", "visit"])
    assert not has_feature(preview.features, Nifti)
    assert preview.features["t1w_thumbnail"] == Image() and preview.features["bold_thumbnail"] == List(
        Image()
    )
    assert preview.features["t1w_sidecar"] == Value("string")
    assert preview.features["bold_sidecar"] == List(Value("string"))
    assert len(preview) == len(full) == len(ROWS)
    for (sub, ses), row, data in zip(ROWS, preview, full, strict=True):
        assert (row["subject_id"], row["session_id"]) == (sub, ses)
        assert {k: row[k] for k in data} == data  # phenotype and sessions columns as in the full data
        for column, (datatype, many) in COLUMNS.items():
            rels = files_of(sub, ses, datatype)
            sidecars = row[f"{column}_sidecar"] if many else [row[f"{column}_sidecar"]] if rels else []
            assert [None if t is None else json.loads(t) for t in sidecars] == [
                expected_sidecar(root, r) for r in rels
            ], (sub, ses, column)
            entities = row[f"{column}_entities"] if many else [row[f"{column}_entities"]] if rels else []
            assert [json.loads(t) for t in entities] == [name_parts(r.rsplit("/", 1)[1])[0] for r in rels]
            pictures = row[f"{column}_thumbnail"] if many else [row[f"{column}_thumbnail"]] if rels else []
            assert len(pictures) == len(rels), (sub, ses, column)
            if not many and not rels:
                assert row[f"{column}_thumbnail"] is None
            for picture, rel in zip(pictures, rels, strict=True):
                assert isinstance(picture, PILImage.Image), rel
                assert picture.mode == "L", rel
                assert np.ptp(np.asarray(picture)) > 0, f"{rel}: a constant thumbnail"


def test_bval_count_that_differs_from_the_volumes_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    root = build_tree(tmp_path / "bids")
    (root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval").write_text("0 1000 1000 2000 2000\n")  # 5 for 6 volumes
    dest = tmp_path / "out"
    code, output = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 2, output
    assert "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval" in output, output
    assert "5 b-values" in output and "6 volumes" in output, output
    assert "Traceback" not in output
    assert not dest.exists() or not any(dest.iterdir())

    (root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bval").write_text("0 1000 1000 2000 2000 3000\n")
    (root / "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec").write_text(
        "0 1 0 0 1 0 0\n0 0 1 0 0 1 0\n0 0 0 1 0 0 1\n"
    )
    code, output = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 2 and "sub-01/ses-1/dwi/sub-01_ses-1_dwi.bvec" in output and "6 volumes" in output, output
    assert not dest.exists() or not any(dest.iterdir())


def test_spec_variants_sessions_clash_rename_fields_scans_events_off_and_preview(
    tmp_path, monkeypatch, capsys
):
    root = build_tree(tmp_path / "bids")
    (root / "sub-01/sub-01_sessions.tsv").write_text(  # "age" is a participants.tsv column too
        "session_id\tweight\tscanner\tvisit\tage\nses-1\t70.5\tA\t1\t54.2\nses-2\t71\tn/a\t2\t55\n"
    )
    # a second diffusion run of sub-02 with its own gradients (dwi becomes a many column)
    run2 = "sub-02/ses-1/dwi/sub-02_ses-1_run-02_dwi.nii.gz"
    nib.save(dwi6(), root / run2)
    (root / run2.replace(".nii.gz", ".bval")).write_text("0 300 300 300 300 300\n")
    (root / run2.replace(".nii.gz", ".bvec")).write_text("1 0 0 1 0 0\n0 1 0 0 1 0\n0 0 1 0 0 1\n")
    columns = COLUMNS | {"dwi": ("dwi", True)}
    dest = tmp_path / "out"

    # zero-config: the clash is refused, naming the spec key that fixes it; nothing written
    code, output = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 2, output
    assert "rename:" in output and "age" in output, output
    assert not dest.exists() or not any(dest.iterdir())

    raw: dict[str, Any] = {
        "name": "variants",
        "bids_root": str(root),
        "destination": str(dest),
        "columns": {
            "t1w": {"datatype": "anat", "suffix": "T1w"},
            "bold": {
                "datatype": "func",
                "suffix": "bold",
                "many": True,
                "fields": ["RepetitionTime", "EchoTime"],
            },
            "dwi": {"datatype": "dwi", "suffix": "dwi", "many": True},
        },
        "num_shards": 2,
        "companions": {"events": False},
        "scans_columns": ["quality"],
        "rename": {"age": "session_age"},
        "preview": {"default": True},
    }
    spec = write_spec(tmp_path / "spec.yaml", **raw)
    code, output = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, output
    assert "verified: OK: 4/4 rows" in output, output

    # preview: {default: true}: load_dataset(dest) gives the thumbnails, the full data is "full"
    default = load(dest, tmp_path)
    assert "t1w_thumbnail" in default.features and not has_feature(default.features, Nifti)
    assert [
        (r["subject_id"], r["session_id"]) for r in default.select_columns(["subject_id", "session_id"])
    ] == ROWS
    assert isinstance(default[0]["t1w_thumbnail"], PILImage.Image)
    assert default.features["session_age"] == Value("float64") and "age" in default.features
    assert default.select_columns(["session_age"])["session_age"] == [54.2, 55.0, None, None]
    assert sorted(p.name for p in (dest / "preview").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    configs = {c["config_name"]: c for c in card_configs(dest)}
    assert configs["preview"].get("default") is True and "full" in configs and "default" not in configs

    full = load(dest, tmp_path, "full")
    f = full.features
    assert "bold_events" not in f  # companions: {events: false}
    assert f["bold_RepetitionTime"] == List(Value("float64")) and f["bold_EchoTime"] == List(Value("float64"))
    assert f["t1w_quality"] == Value("string") and f["bold_quality"] == List(Value("string"))
    assert f["session_age"] == Value("float64") and f["age"] == Value("float64")
    assert f["dwi_bval"] == List(List(Value("float64"))) and f["dwi_bvec"] == List(
        List(List(Value("float64")))
    )
    assert f["dwi_sidecar"] == List(Json())
    data = full.select_columns([c for c in full.column_names if c not in columns])
    for (sub, ses), row in zip(ROWS, data, strict=True):
        bold = files_of(sub, ses, "func")
        want = [(expected_sidecar(root, r) or {}).get("RepetitionTime") for r in bold]
        assert row["bold_RepetitionTime"] == [None if v is None else float(v) for v in want], (sub, ses)
        assert all(
            type(v) is float for v in row["bold_RepetitionTime"] if v is not None
        )  # the top-level 2: 2.0
        for column, (datatype, many) in columns.items():
            rels = files_of(sub, ses, datatype, root)
            assert row[f"{column}_quality"] == cells([expected_scans(root, r, "quality") for r in rels], many)
            sidecars = cells([expected_sidecar(root, r) for r in rels], many)
            assert strict(row[f"{column}_sidecar"]) == strict(sidecars), (sub, ses, column)
        gradients = [expected_gradients(root, r) for r in files_of(sub, ses, "dwi", root)]
        assert row["dwi_bval"] == [g[0] for g in gradients] and row["dwi_bvec"] == [g[1] for g in gradients]
        sessions = expected_sessions(root, sub, ses)
        assert row["session_age"] == sessions["age"], (sub, ses)
        assert row["weight"] == sessions["weight"] and row["visit"] == sessions["visit"]
    assert data[0]["bold_RepetitionTime"] == [2.5, 3.0] and data[2]["bold_RepetitionTime"] == [None, 2.0]
    assert data[0]["bold_EchoTime"] == [0.03, None]  # the file-level null overrides the inherited 0.03
    assert data[2]["dwi_bval"][1] == [0.0, 300.0, 300.0, 300.0, 300.0, 300.0]  # run-02: its own
    assert data[2]["dwi_bval"][0] == [0.0, 5.0, 500.0, 500.0, 1000.0, 1000.0]  # run-less: the dataset's
    assert data[1]["dwi_bval"] == [] and data[3]["dwi_sidecar"] == []
    assert data[0]["t1w_quality"] == "good" and data[0]["dwi_quality"] == [None]
    assert data[2]["t1w_quality"] is None and data[2]["bold_quality"] == [None, "ok"]
    assert data[0]["age"] == 54.0 and data[0]["session_age"] == 54.2  # the participants column is kept

    # preview: {enabled: false}, published again: the preview files and preview.png are removed
    write_spec(spec, **(raw | {"preview": {"enabled": False}}))
    code, output = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, output
    assert not (dest / "preview").exists() and not (dest / "preview.png").exists()
    assert [c["config_name"] for c in card_configs(dest)] == ["default"]
    again = load(dest, tmp_path, "default")
    assert "t1w_thumbnail" not in again.features and isinstance(again.features["t1w"], Nifti)
    assert again.select_columns(["bold_RepetitionTime"])[0]["bold_RepetitionTime"] == [2.5, 3.0]
    shutil.rmtree(tmp_path / "bids")  # nothing of the publication refers to the source tree
    assert len(load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache-last"))) == len(ROWS)


# ---------------------------------------- companions: {sidecar: false} and the privacy gate

IDENTIFYING = {"PatientName": "Doe^John", "AcquisitionDateTime": "2021-03-04T10:11:12"}


def published_texts(dest: Path) -> str:
    """Every text cell of every published parquet file (bytes columns aside), as one string."""
    texts = []
    for path in sorted(dest.rglob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            if "binary" not in str(table.schema.field(name).type):  # NIfTI and PNG bytes aside
                texts.append(json.dumps(table.column(name).to_pylist(), default=str))
    return "\n".join(texts)


def test_sidecars_turned_off_publish_no_sidecar_value_ungated(tmp_path, monkeypatch, capsys):
    """``companions: {sidecar: false}`` makes the privacy gate skip the sidecars, so no sidecar value
    may be published then: not in the preview config (its ``C_sidecar``), not as a lifted field
    (``fields: [AcquisitionDateTime]``). With sidecars on, the same tree is refused."""
    root = build_tree(tmp_path / "bids")
    (root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json").write_text(json.dumps(IDENTIFYING))
    dest = tmp_path / "out"
    spec = write_spec(
        tmp_path / "spec.yaml",
        name="nosidecar",
        bids_root=str(root),
        destination=str(dest),
        columns={"t1w": {"datatype": "anat", "suffix": "T1w", "fields": ["AcquisitionDateTime"]}},
        companions={"sidecar": False},
    )
    code, output = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    if code == 2:  # refusing is right: the gate scanned the sidecars whose values are published
        assert "AcquisitionDateTime" in output and not (dest / "data").exists(), output
        return
    assert code == 0, output
    assert "t1w_sidecar" not in pq.read_schema(next((dest / "data").glob("*.parquet"))).names
    preview = pq.read_schema(next((dest / "preview").glob("*.parquet"))).names
    problems = []
    if "t1w_sidecar" in preview:
        problems.append("the preview config publishes t1w_sidecar although companions: {sidecar: false}")
    leaked = published_texts(dest)
    for key, value in IDENTIFYING.items():
        if value in leaked:
            problems.append(f"{key} (a key the gate blocks) was published without the gate")
    assert not problems, problems


def test_an_image_in_two_columns_has_its_thumbnail_in_both(tmp_path, monkeypatch, capsys):
    """Column rules may overlap (``t1w`` and every ``anat`` image): the file is published in both
    columns, so the preview must show its thumbnail in both, not in the first one only."""
    root = build_tree(tmp_path / "bids")
    dest = tmp_path / "out"
    spec = write_spec(
        tmp_path / "spec.yaml",
        name="overlap",
        bids_root=str(root),
        destination=str(dest),
        columns={
            "t1w": {"datatype": "anat", "suffix": "T1w"},
            "anat": {"datatype": "anat", "many": True},
        },
        companions={"events": False, "gradients": False},
    )
    code, output = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, output
    full = pq.read_table(next((dest / "data").glob("*.parquet")), columns=["t1w", "anat"]).to_pylist()
    preview = pq.read_table(
        next((dest / "preview").glob("*.parquet")), columns=["t1w_thumbnail", "anat_thumbnail"]
    ).to_pylist()
    assert len(full) == len(preview) == len(ROWS)
    missing = []
    for (sub, ses), data, row in zip(ROWS, full, preview, strict=True):
        assert [i["bytes"] for i in data["anat"]] == [data["t1w"]["bytes"]]  # the same file, twice
        for column in ("t1w", "anat"):
            cells = row[f"{column}_thumbnail"]
            for cell in cells if isinstance(cells, list) else [cells]:
                if cell is None or not cell.get("bytes"):
                    missing.append(f"{sub}/{ses} {column}")
    assert not missing, f"published images without their thumbnail: {missing}"
