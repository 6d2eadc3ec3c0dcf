"""A small BIDS dataset built from the real NIfTI images that nibabel ships.

Three subjects with sessions, several runs (``run-10`` after ``run-2``), a subject
with no functional runs, a derivatives lesion mask, participants.tsv/json (one listed
participant without data), inherited sidecars, and a dataset_description.json.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel

from .errors import UserError

if TYPE_CHECKING:
    from .spec import DatasetSpec

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"

#: relative path in the demo tree → image file in nibabel's test data (all NIfTI-1, which
#: datasets can decode; a ``.nii`` source copied to a ``.nii.gz`` name is gzipped)
DEMO_FILES = {
    "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii": "anatomical.nii",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii": "functional.nii",
    "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz": "example4d.nii.gz",
    "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz": "anatomical.nii",  # gzipped on copy
    "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.nii": "functional.nii",
    "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.nii": "reoriented_anat_moved.nii",
    "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-10_bold.nii.gz": "example4d.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii": "resampled_anat_moved.nii",
    "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii": "anatomical.nii",
    "sub-03/ses-1/func/sub-03_ses-1_task-rest_run-1_bold.nii": "functional.nii",
    "derivatives/lesion_masks/sub-01/ses-1/anat/sub-01_ses-1_desc-lesion_mask.nii.gz": "standard.nii.gz",
    "derivatives/lesion_masks/sub-03/ses-1/anat/sub-03_ses-1_desc-lesion_mask.nii.gz": "standard.nii.gz",
}

DESCRIPTION = {
    "Name": "bids_hub_dagster demo",
    "BIDSVersion": "1.10.0",
    "DatasetType": "raw",
    "License": "CC0",
    "Authors": ["nibabel developers (images)", "bids_hub_dagster (layout)"],
    "HowToAcknowledge": "Cite nibabel (https://nipy.org/nibabel) for the images.",
    "ReferencesAndLinks": ["https://nipy.org/nibabel"],
}

PARTICIPANTS_TSV = (
    "participant_id\tsex\tage\tgroup\n"
    "sub-01\tF\t54\t1\n"
    "sub-02\tM\tn/a\t2\n"
    "sub-03\tF\t61.5\t1\n"
    "sub-04\tM\t47\t2\n"  # listed, but has no data: gives no row
)
PARTICIPANTS_JSON = {
    "sex": {"Description": "sex of the participant", "Levels": {"F": "female", "M": "male"}},
    "age": {"Description": "age at first session", "Units": "years"},
    "group": {"Description": "study arm", "Levels": {"1": "treatment", "2": "control"}},
}

#: the file that marks a BIDS tree as the demo's: only a tree that carries it is ever replaced
DEMO_MARKER = ".bids_hub_demo"
#: the first line of the spec the demo writes: only a spec file that starts with it is ever rewritten
DEMO_SPEC_MARK = (
    "# Written by `bids-hub-dagster demo` (rewritten by each demo run): copy it to describe your own."
)
#: the first line of the spec of releases before the mark: such a spec is the demo's when it is unedited
_OLD_DEMO_SPEC_MARK = "# The demo dataset: edit and copy this file to describe your own."

DEMO_SPEC = (
    DEMO_SPEC_MARK
    + """
name: demo
bids_root: bids
destination: ./published/demo
row: session
columns:
  t1w:    {datatype: anat, suffix: T1w}
  bold:   {datatype: func, suffix: bold, task: rest, many: true}
  lesion: {scope: derivatives/lesion_masks, datatype: anat, suffix: mask, desc: lesion}
phenotype: [sex, age, group]
max_shard_size: 400KB
privacy:
  # nibabel's test images, at most 33x41x25 voxels of 2 mm or more: no face can be rendered from them
  defaced: true
"""
)


class DemoFolderError(UserError):
    """The demo would replace files it did not write."""


def demo_contents() -> dict[str, bytes]:
    """Every file of the demo BIDS tree (its marker aside): relative path → bytes."""
    files: dict[str, bytes] = {}
    for rel, source in DEMO_FILES.items():
        data = (NIBABEL_DATA / source).read_bytes()
        files[rel] = (
            gzip.compress(data, mtime=0) if rel.endswith(".gz") and not source.endswith(".gz") else data
        )
    texts = {
        "dataset_description.json": json.dumps(DESCRIPTION, indent=2),
        "participants.tsv": PARTICIPANTS_TSV,
        "participants.json": json.dumps(PARTICIPANTS_JSON, indent=2),
        "task-rest_bold.json": json.dumps({"TaskName": "rest", "RepetitionTime": 2.0}),
        "sub-01/sub-01_task-rest_bold.json": json.dumps({"RepetitionTime": 2.5}),
        "README": "Demo BIDS dataset built by bids_hub_dagster from nibabel's test images.\n",
        "derivatives/lesion_masks/dataset_description.json": json.dumps(
            {
                "Name": "lesion masks",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "manual"}],
            }
        ),
    }
    files.update({rel: text.encode() for rel, text in texts.items()})
    return files


def _other_files(root: Path, contents: dict[str, bytes]) -> list[str]:
    """The files under ``root`` that are not the demo's (its marker aside), and links of any kind."""
    others = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or (path.is_file() and rel not in contents and rel != DEMO_MARKER):
            others.append(rel)
        elif not path.is_dir() and not path.is_file():
            others.append(rel)
    return others


def _check_demo_tree(root: Path, contents: dict[str, bytes]) -> None:
    """Raise :class:`DemoFolderError` unless ``root`` is missing, empty, or a demo tree holding only the demo's files.

    A tree from before the marker is the demo's when every file in it is byte for byte one the demo writes.
    """
    from .bids.errors import shown

    if not root.exists() and not root.is_symlink():
        return
    advice = "the demo replaces only a tree it built; move them away or choose another --workdir."
    if root.is_symlink() or not root.is_dir():
        raise DemoFolderError(
            f"{shown(root)} exists and is not a folder the demo built: choose another --workdir."
        )
    if not any(root.iterdir()):
        return
    others = _other_files(root, contents)
    if others:
        listed = ", ".join(map(shown, others[:5])) + (
            f" (and {len(others) - 5} more)" if len(others) > 5 else ""
        )
        raise DemoFolderError(f"{shown(root)} holds files the demo did not write ({listed}): {advice}")
    if (root / DEMO_MARKER).is_file():
        return
    changed = [
        rel for rel, data in contents.items() if (root / rel).is_file() and (root / rel).read_bytes() != data
    ]
    if changed:
        raise DemoFolderError(
            f"{shown(root)} is not marked as the demo's ({DEMO_MARKER}) and {shown(changed[0])} differs from the "
            f"demo's: {advice}"
        )


def _check_demo_spec(path: Path) -> None:
    """Raise :class:`DemoFolderError` unless ``path`` is missing or a spec file the demo wrote."""
    from .bids.errors import shown

    if not path.exists() and not path.is_symlink():
        return
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() and not path.is_symlink() else None
    except (OSError, UnicodeDecodeError):
        text = None
    old = _OLD_DEMO_SPEC_MARK + DEMO_SPEC[len(DEMO_SPEC_MARK) :]  # an earlier demo's, unedited
    if text is not None and (text.startswith(DEMO_SPEC_MARK + "\n") or text == old):
        return
    raise DemoFolderError(
        f"{shown(path)} exists and was not written by the demo (its first line is not {DEMO_SPEC_MARK!r}): "
        "the demo would replace it; move it away or choose another --workdir."
    )


def build_demo_bids(target: Path | str) -> Path:
    """Write the demo BIDS tree to ``target``; return its path.

    ``target`` may be missing or empty, or a tree the demo built (marked by :data:`DEMO_MARKER`), which is
    rebuilt; anything else raises :class:`DemoFolderError` and is left as it is.
    """
    root = Path(target)
    contents = demo_contents()
    _check_demo_tree(root, contents)  # so it holds none but the demo's files
    root.mkdir(parents=True, exist_ok=True)
    marker = root / DEMO_MARKER
    if not marker.is_file():
        marker.write_text("Built by `bids-hub-dagster demo`, which rewrites the files of this folder.\n")
    for rel, data in contents.items():
        dest = root / rel
        if dest.is_file() and dest.read_bytes() == data:
            continue  # unchanged: a demo run again rebuilds no shard
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return root


def write_demo(folder: Path | str) -> Path:
    """Build the demo BIDS tree in ``folder/bids`` and its spec in ``folder/demo.yaml``.

    Nothing is replaced that the demo did not write: both are checked before either is written.
    """
    folder = Path(folder).resolve()
    spec_path = folder / "demo.yaml"
    _check_demo_tree(folder / "bids", demo_contents())
    _check_demo_spec(spec_path)
    build_demo_bids(folder / "bids")
    if not spec_path.is_file() or spec_path.read_text(encoding="utf-8") != DEMO_SPEC:
        spec_path.write_text(DEMO_SPEC, encoding="utf-8")
    return spec_path


def demo_home() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home) if home else Path.home() / ".bids_hub_dagster") / "demo"


def ensure_demo_spec() -> DatasetSpec:
    """The demo spec, building the demo tree first if it is not there yet."""
    from .spec import load_spec

    folder = demo_home()
    spec_path = folder / "demo.yaml"
    if not spec_path.is_file() or not (folder / "bids" / "dataset_description.json").is_file():
        write_demo(folder)
    return load_spec(spec_path)
