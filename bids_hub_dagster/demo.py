"""A small BIDS dataset built from the real NIfTI images that nibabel ships.

Three subjects with sessions, several runs (``run-10`` after ``run-2``), a subject
with no functional runs, a derivatives lesion mask, participants.tsv/json (one listed
participant without data), inherited sidecars, and a dataset_description.json.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel

from .spec import DatasetSpec, load_spec

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

DEMO_SPEC = """\
# The demo dataset: edit and copy this file to describe your own.
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
"""


def build_demo_bids(target: Path | str) -> Path:
    """Write the demo BIDS tree to ``target`` (replacing what is there); return its path."""
    root = Path(target)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, source in DEMO_FILES.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".gz") and not source.endswith(".gz"):
            dest.write_bytes(gzip.compress((NIBABEL_DATA / source).read_bytes(), mtime=0))
        else:
            shutil.copyfile(NIBABEL_DATA / source, dest)
    (root / "dataset_description.json").write_text(json.dumps(DESCRIPTION, indent=2))
    (root / "participants.tsv").write_text(PARTICIPANTS_TSV)
    (root / "participants.json").write_text(json.dumps(PARTICIPANTS_JSON, indent=2))
    (root / "task-rest_bold.json").write_text(json.dumps({"TaskName": "rest", "RepetitionTime": 2.0}))
    (root / "sub-01" / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    (root / "README").write_text("Demo BIDS dataset built by bids_hub_dagster from nibabel's test images.\n")
    deriv = root / "derivatives" / "lesion_masks"
    (deriv / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "lesion masks",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "manual"}],
            }
        )
    )
    return root


def write_demo(folder: Path | str) -> Path:
    """Build the demo BIDS tree in ``folder/bids`` and its spec in ``folder/demo.yaml``."""
    folder = Path(folder).resolve()
    build_demo_bids(folder / "bids")
    spec_path = folder / "demo.yaml"
    spec_path.write_text(DEMO_SPEC)
    return spec_path


def demo_home() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home) if home else Path.home() / ".bids_hub_dagster") / "demo"


def ensure_demo_spec() -> DatasetSpec:
    """The demo spec, building the demo tree first if it is not there yet."""
    folder = demo_home()
    spec_path = folder / "demo.yaml"
    if not spec_path.is_file() or not (folder / "bids" / "dataset_description.json").is_file():
        write_demo(folder)
    return load_spec(spec_path)
