"""The privacy gate and zero-config strictness end to end, through the CLI: a catalogue of real BIDS
trees (real NIfTI images written by nibabel), one per finding, each with the exact outcome of
``bids-hub-dagster index`` and ``publish``: exit code, the report's rows, no identifying value in the
output, nothing at the destination when refused. Then the policy (allow, strip, header fields),
defacing on the test Hub, the demo, the bids_index metadata and the report beside the data.

The gate's core is unit-tested in test_privacy.py, strictness in test_strict_bids.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import nibabel
import numpy as np
import pytest
from datasets import load_dataset

from bids_hub_dagster.defs import names
from bids_hub_dagster.demo import build_demo_bids
from bids_hub_dagster.publish.privacy_report import REPORT_NAME
from bids_hub_dagster.spec import spec_for_folder
from bids_hub_dagster_tests.conftest import run_cli

NAME = "ds"  # the BIDS folder's name, so the dataset's name (zero config)
T1 = "sub-01/anat/sub-01_T1w.nii.gz"
BOLD = "sub-01/func/sub-01_task-rest_bold.nii.gz"
REFUSED = "Publishing refused"
BLOCKED_HINT = "publishing is blocked until each blocking finding is fixed"


# --- trees -------------------------------------------------------------------------------------------


def nifti(path: Path, descrip: bytes | None = None, extensions: tuple[tuple[int, bytes], ...] = ()) -> Path:
    """A real NIfTI-1 image (.nii or .nii.gz by its name), its header text and extensions as given."""
    img = nibabel.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    if descrip is not None:
        img.header["descrip"] = descrip
    for code, content in extensions:
        img.header.extensions.append(nibabel.nifti1.Nifti1Extension(code, content))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: dict) -> Path:
    return write(path, json.dumps(data))


def base_tree(root: Path) -> Path:
    """Two subjects, a T1w and a resting-state run each, a participants.tsv with plain ages: no finding."""
    write_json(root / "dataset_description.json", {"Name": "privacy gate", "BIDSVersion": "1.9.0"})
    for sub in ("01", "02"):
        nifti(root / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")
        nifti(root / f"sub-{sub}/func/sub-{sub}_task-rest_bold.nii.gz")
    write(root / "participants.tsv", "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\t41\tM\n")
    return root


def outside(tmp: Path) -> Path:
    """Another patient's data, outside the dataset."""
    other = tmp / "other_patient"
    nifti(other / "anat" / "sub-03_T1w.nii.gz")
    return other


# --- the catalogue -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path, Path], None]  # (the BIDS root, the test's tmp folder)
    rows: tuple[tuple[str, str, str], ...] = ()  # every row `index` prints: (file, field, severity)
    secrets: tuple[str, ...] = ()  # identifying values that must never be printed
    error: str | None = None  # a validation error: both commands exit 2 with this message
    output: tuple[str, ...] = ()  # more text `index` prints (validation summary, warnings)

    @property
    def blocked(self) -> bool:
        return self.error is not None or any(sev == "block" for _, _, sev in self.rows)


def _sidecar_top(root: Path, tmp: Path) -> None:
    write_json(root / "task-rest_bold.json", {"RepetitionTime": 2.0, "PatientName": "Doe^Jane"})


def _sidecar_subject(root: Path, tmp: Path) -> None:
    write_json(
        root / "sub-01/sub-01_task-rest_bold.json", {"TaskName": "rest", "PatientBirthDate": "19540302"}
    )


def _sidecar_file(root: Path, tmp: Path) -> None:
    write_json(
        root / "sub-01/func/sub-01_task-rest_bold.json",
        {"RepetitionTime": 2.0, "AcquisitionDateTime": "2021-03-04T10:11:12.5", "PatientID": "MRN4471234"},
    )


def _sidecar_warn(root: Path, tmp: Path) -> None:
    write_json(
        root / "sub-01/anat/sub-01_T1w.json",
        {"DeviceSerialNumber": "SN88123", "InstitutionName": "St Elsewhere Hospital"},
    )


def _descrip(root: Path, tmp: Path) -> None:
    nifti(root / T1, descrip=b"Doe^Jane 2021-03-04")


def _extension_comment(root: Path, tmp: Path) -> None:
    nifti(root / BOLD, extensions=((6, b"protocol B, shimmed twice"),))


def _extension_date(root: Path, tmp: Path) -> None:
    nifti(root / BOLD, extensions=((6, b"scanned 2021-03-04"),))


def _participants_birth(root: Path, tmp: Path) -> None:
    write(
        root / "participants.tsv",
        "participant_id\tage\tbirth_date\nsub-01\t34\t1987-05-06\nsub-02\t41\t1980-11-12\n",
    )


def _sessions_acq_time(root: Path, tmp: Path) -> None:
    for ses in ("1", "2"):
        nifti(root / f"sub-03/ses-{ses}/anat/sub-03_ses-{ses}_T1w.nii.gz")
    write(
        root / "sub-03/sub-03_sessions.tsv",
        "session_id\tacq_time\tscanner\nses-1\t2021-03-04T10:11:12\tA\nses-2\t2021-09-10T08:07:06\tA\n",
    )


def _ages(root: Path, tmp: Path) -> None:
    write(root / "participants.tsv", "participant_id\tage\nsub-01\t93\nsub-02\t41\n")


def _folder_label(root: Path, tmp: Path) -> None:
    nifti(root / "sub-03 copy/anat/sub-03_T1w.nii.gz")


def _file_label(root: Path, tmp: Path) -> None:
    nifti(root / "sub-01/anat/sub-01_acq-fast scan_T1w.nii.gz")


def _stray(root: Path, tmp: Path) -> None:
    nifti(root / "sub-01/anat/notes_backup.nii")
    nifti(root / "sub-02/anat/sub-02_T1w.nii/inner.nii")  # a folder named like an image


def _duplicate(root: Path, tmp: Path) -> None:
    nifti(root / "sub-01/anat/sub-01_T1w.nii")  # beside sub-01_T1w.nii.gz


def _external_file(root: Path, tmp: Path) -> None:
    (root / "sub-03/anat").mkdir(parents=True)
    os.symlink(outside(tmp) / "anat/sub-03_T1w.nii.gz", root / "sub-03/anat/sub-03_T1w.nii.gz")


def _external_folder(root: Path, tmp: Path) -> None:
    os.symlink(outside(tmp), root / "sub-03")


def _annex(root: Path, tmp: Path) -> None:
    key = "SHA256E-s400--0123abcd.nii.gz"
    nifti(root / ".git/annex/objects/Qx/8v" / key / key)
    (root / "sub-03/anat").mkdir(parents=True)
    os.symlink(f"../../.git/annex/objects/Qx/8v/{key}/{key}", root / "sub-03/anat/sub-03_T1w.nii.gz")


SIDECAR = "identifying DICOM attribute"
CASES = [
    Case(
        "sidecar-top-level",
        _sidecar_top,
        rows=(("task-rest_bold.json", "PatientName", "block"),),
        secrets=("Doe^Jane", "Doe", "Jane"),
    ),
    Case(
        "sidecar-subject-level",
        _sidecar_subject,
        rows=(("sub-01/sub-01_task-rest_bold.json", "PatientBirthDate", "block"),),
        secrets=("19540302",),
    ),
    Case(
        "sidecar-file-level",
        _sidecar_file,
        rows=(
            ("sub-01/func/sub-01_task-rest_bold.json", "AcquisitionDateTime", "block"),
            ("sub-01/func/sub-01_task-rest_bold.json", "PatientID", "block"),
        ),
        secrets=("2021-03-04", "10:11:12", "MRN4471234", "4471234"),
    ),
    Case(
        "sidecar-warn-keys",
        _sidecar_warn,
        rows=(
            ("sub-01/anat/sub-01_T1w.json", "DeviceSerialNumber", "warn"),
            ("sub-01/anat/sub-01_T1w.json", "InstitutionName", "warn"),
        ),
        secrets=("SN88123", "Elsewhere"),
    ),
    Case(
        "header-descrip",
        _descrip,
        rows=((T1, "descrip", "block"), (T1, "descrip", "block")),  # a person name, a date
        secrets=("Doe^Jane", "Doe", "Jane", "2021-03-04"),
    ),
    Case(
        "header-extension-comment",
        _extension_comment,
        rows=((BOLD, "extension[0]", "info"),),
        secrets=("shimmed",),
    ),
    Case(
        "header-extension-with-a-date",
        _extension_date,
        rows=((BOLD, "extension[0]", "block"),),
        secrets=("2021-03-04", "scanned"),
    ),
    Case(
        "participants-birth-date",
        _participants_birth,
        rows=(("participants.tsv", "birth_date", "block"),),
        secrets=("1987-05-06", "1980-11-12", "1987", "1980"),
    ),
    Case(
        "sessions-acq-time",
        _sessions_acq_time,
        rows=(("sub-03/sub-03_sessions.tsv", "acq_time", "block"),),
        secrets=("2021-03-04", "2021-09-10", "10:11:12", "08:07:06"),
    ),
    Case(
        "ages-over-89",
        _ages,
        rows=(("participants.tsv", "age", "warn"),),
        secrets=("93",),
        output=("1 age over 89",),
    ),
    Case(
        "folder-label-with-a-space",
        _folder_label,
        error="folder sub-03 copy: the sub label '03 copy' is not a BIDS label",
    ),
    Case(
        "file-label-with-a-space",
        _file_label,
        error="sub-01/anat/sub-01_acq-fast scan_T1w.nii.gz: the acq label 'fast scan' is not a BIDS label",
    ),
    Case(
        "stray-file-and-folder",
        _stray,
        output=(
            "files indexed  4 of 4 NIfTI files found",
            "skipped        2 (names the BIDS schema does not allow)",
            "sub-01/anat/notes_backup.nii: not a BIDS name",
            "sub-02/anat/sub-02_T1w.nii/: a folder where BIDS expects a file",
            "warning: 2 file(s) skipped, their names are not BIDS",
        ),
    ),
    Case(
        "duplicate-nii-and-nii-gz",
        _duplicate,
        error="sub-01/anat/sub-01_T1w.nii and sub-01/anat/sub-01_T1w.nii.gz",
    ),
    Case(
        "external-symlink-file",
        _external_file,
        error="1 symlink(s) lead outside the BIDS folder",
        output=("sub-03/anat/sub-03_T1w.nii.gz -> ", "follow_external_symlinks: true"),
    ),
    Case(
        "external-symlink-folder",
        _external_folder,
        error="1 symlink(s) lead outside the BIDS folder",
        output=("sub-03/ -> ", "follow_external_symlinks: true"),
    ),
    Case(
        "git-annex-link",
        _annex,
        output=("files indexed  5 of 5 NIfTI files found", "skipped        0"),
    ),
]


def table_rows(output: str) -> list[tuple[str, str, str, str]]:
    """The rows of the findings tables printed: (file, field, finding, severity)."""
    rows = []
    for line in output.splitlines():
        if not line.startswith("| ") or line.startswith(("| file |", "| --- |")):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[0]:
            rows.append((cells[0], cells[1], cells[2], cells[3]))
    return rows


def shown_rows(output: str) -> list[tuple[str, str, str]]:
    return sorted((file, field, sev) for file, field, _, sev in table_rows(output))


def assert_no_secret(output: str, secrets: tuple[str, ...]) -> None:
    for secret in secrets:
        assert secret not in output, f"the identifying value {secret!r} was printed:\n{output}"


def assert_nothing_at(dest: Path) -> None:
    assert not dest.exists(), f"refused, yet {dest} was made: {sorted(p.name for p in dest.iterdir())}"


def tree_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``folder`` (hidden ones too): its mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_report(dest: Path) -> dict:
    path = dest / REPORT_NAME
    assert path.is_file(), (
        f"no privacy report beside the published data: {sorted(p.name for p in dest.iterdir())}"
    )
    return json.loads(path.read_text(encoding="utf-8"))


def report_rows(report: dict, kind: str | None = None) -> list[tuple[str, str, str, str]]:
    return sorted(
        (f["file"], f["field"], f["severity"], f["outcome"])
        for f in report["findings"]
        if kind is None or f["kind"] == kind
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case, tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    case.make(root, tmp_path)

    code, out = run_cli(monkeypatch, capsys, "index", str(root))
    assert "Traceback" not in out
    assert_no_secret(out, case.secrets)
    for text in case.output:
        assert text in out, out
    if case.id == "stray-file-and-folder":  # one warning lists every skipped name
        assert out.count("warning: ") == 1 and "inner.nii" not in out, out
    if case.error is not None:
        assert code == 2, out
        assert out.startswith("error: ") and case.error in out, out
    else:
        assert code == 0, out
        # the validation summary, then the findings table: exactly the case's rows
        assert "validation\n  files indexed" in out and "\n  privacy        " in out, out
        assert shown_rows(out) == sorted(case.rows), out
        assert (BLOCKED_HINT in out) == case.blocked, out
        if not case.rows:
            assert "privacy        no findings" in out, out

    dest = tmp_path / "published"
    if not case.blocked:
        return  # published: see test_non_blocking_cases_publish
    code, out = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 2, out
    assert "Traceback" not in out
    assert_no_secret(out, case.secrets)
    if case.error is not None:
        assert case.error in out, out
    else:
        assert REFUSED in out, out
        # the refusal lists exactly the blocking rows, without the warnings and infos
        assert shown_rows(out) == sorted(r for r in case.rows if r[2] == "block"), out
    assert_nothing_at(dest)


NON_BLOCKING = [c for c in CASES if not c.blocked and c.rows]


def test_non_blocking_cases_publish_with_their_report_beside_the_data(tmp_path, monkeypatch, capsys):
    """Warnings and infos never block: one tree holding every non-blocking case publishes, and the
    report beside the data (hidden, not part of the dataset) lists each finding without its value."""
    root = base_tree(tmp_path / NAME)
    for case in [*NON_BLOCKING, *(c for c in CASES if c.id in ("stray-file-and-folder", "git-annex-link"))]:
        case.make(root, tmp_path)
    dest = tmp_path / "published"
    code, out = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 0, out
    assert f"published {NAME} to {dest}" in out and "verified: OK: 3/3 rows" in out, out
    secrets = tuple(s for c in NON_BLOCKING for s in c.secrets)
    assert_no_secret(out, secrets)

    report = read_report(dest)
    expected = sorted((f, fi, sev, "") for c in NON_BLOCKING for f, fi, sev in c.rows)
    scanned = [row for kind in ("sidecar", "header", "table") for row in report_rows(report, kind)]
    assert sorted(scanned) == expected
    # a local folder: anatomical images not affirmed defaced only warn
    assert report_rows(report, "defacing") == [("3 anatomical images (anat)", "defaced", "warn", "")]
    assert report["blocking"] == 0 and report["warnings"] == 4 and report["written_by"] == "bids_hub_dagster"
    assert_no_secret(json.dumps(report), secrets)
    # never published: the manifest does not list it and load_dataset does not read it
    assert REPORT_NAME not in (dest / ".bids_hub_manifest.json").read_text(encoding="utf-8")
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3


def test_publish_prints_the_warnings_of_the_report(tmp_path, monkeypatch, capsys):
    """The report is printed by the CLI: a publish that goes through still says what it warned about
    (the site keys, the defacing of a local folder), as `index` does, never the values."""
    root = base_tree(tmp_path / NAME)
    _sidecar_warn(root, tmp_path)
    dest = tmp_path / "published"
    code, out = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 0, out
    assert_no_secret(out, ("SN88123", "Elsewhere"))
    for field in ("DeviceSerialNumber", "InstitutionName", "defaced"):
        assert field in out, f"publish printed no privacy warning about {field}:\n{out}"


def test_follow_external_symlinks_in_the_spec_indexes_them(tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    _external_file(root, tmp_path)
    spec = write(tmp_path / "spec.yaml", f"bids_root: {root}\nfollow_external_symlinks: true\n")
    code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
    assert code == 0, out
    assert "files indexed  5 of 5 NIfTI files found" in out and "privacy        no findings" in out, out


def test_only_the_columns_that_would_be_published_are_scanned(tmp_path, monkeypatch, capsys):
    """A participants column left out by `phenotype`, a sessions.tsv with `row: subject`, sidecars
    with `companions: {sidecar: false}`: not published, so nothing to find."""
    root = base_tree(tmp_path / NAME)
    _participants_birth(root, tmp_path)
    _sessions_acq_time(root, tmp_path)
    _sidecar_file(root, tmp_path)
    spec = write(
        tmp_path / "spec.yaml",
        f"bids_root: {root}\nrow: subject\nphenotype: [age]\ncompanions: {{sidecar: false}}\n",
    )
    code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
    assert code == 0, out
    assert "privacy        no findings" in out and table_rows(out) == [], out


def test_scans_tsv_acquisition_times_block_only_when_published(tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    write(
        root / "sub-01/sub-01_scans.tsv",
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2021-03-04T10:11:12\n"
        "func/sub-01_task-rest_bold.nii.gz\t2021-03-04T10:31:12\n",
    )
    code, out = run_cli(monkeypatch, capsys, "index", str(root))  # zero config publishes no scans.tsv column
    assert code == 0 and "privacy        no findings" in out, out
    spec = write(tmp_path / "spec.yaml", f"bids_root: {root}\nscans_columns: [acq_time]\n")
    code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
    assert code == 0 and BLOCKED_HINT in out, out
    assert shown_rows(out) == [("sub-01/sub-01_scans.tsv", "acq_time", "block")], out
    assert_no_secret(out, ("2021-03-04", "10:11:12"))


# --- the policy --------------------------------------------------------------------------------------


def identifying_tree(root: Path, tmp: Path) -> Path:
    """A sidecar name, a header name and date, a site key, dates of birth and acquisition times."""
    base_tree(root)
    _sidecar_file(root, tmp)
    _sidecar_warn(root, tmp)
    _descrip(root, tmp)
    _participants_birth(root, tmp)
    _sessions_acq_time(root, tmp)
    return root


SECRETS = ("MRN4471234", "Doe^Jane", "2021-03-04", "1987-05-06", "SN88123", "Elsewhere")


def spec_file(tmp: Path, root: Path, dest: Path, privacy: str) -> Path:
    return write(
        tmp / "spec.yaml", f"name: {NAME}\nbids_root: {root}\ndestination: {dest}\nprivacy: {privacy}\n"
    )


def test_allow_publishes_and_the_report_acknowledges(tmp_path, monkeypatch, capsys):
    root = identifying_tree(tmp_path / NAME, tmp_path)
    dest = tmp_path / "published"
    spec = spec_file(
        tmp_path, root, dest, "{allow: [AcquisitionDateTime, PatientID, descrip, birth_date, acq_time]}"
    )
    code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
    assert code == 0 and BLOCKED_HINT not in out, out
    rows = table_rows(out)
    allowed = sorted((f, fi) for f, fi, _, sev in rows if sev == "allowed (block)")
    assert allowed == sorted(
        [
            ("sub-01/func/sub-01_task-rest_bold.json", "AcquisitionDateTime"),
            ("sub-01/func/sub-01_task-rest_bold.json", "PatientID"),
            (T1, "descrip"),
            (T1, "descrip"),
            ("participants.tsv", "birth_date"),
            ("sub-03/sub-03_sessions.tsv", "acq_time"),
        ]
    ), out
    assert "privacy        0 blocking, 3 warnings, 0 info, 6 allowed" in out, out
    assert_no_secret(out, SECRETS)

    code, out = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, out
    assert_no_secret(out, SECRETS)
    report = read_report(dest)
    assert report["allowed"] == 6 and report["blocking"] == 0
    assert ("participants.tsv", "birth_date", "block", "allowed") in report_rows(report)
    # allowed means published as it is
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert "birth_date" in ds.column_names
    assert any("PatientID" in _sidecar(s) for s in ds["bold_sidecar"] if s is not None)

    # the bids_index materialization of the CLI's own instance holds the report as markdown
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(names(spec_for_folder(root)).bids_index)
    assert event is not None
    markdown = event.asset_materialization.metadata["privacy"]
    assert isinstance(markdown, dg.MarkdownMetadataValue)
    assert (
        "| participants.tsv | birth_date | date of birth: a date (YYYY-MM-DD) | allowed (block) |"
        in markdown.value
    )
    assert "| sub-01/anat/sub-01_T1w.json | InstitutionName |" in markdown.value
    assert_no_secret(markdown.value, SECRETS)

    # the policy changes to strip the sidecar keys (only the sidecars change, not the files): the
    # next publish must not keep the shards that hold them
    spec_file(
        tmp_path,
        root,
        dest,
        "{allow: [descrip, birth_date, acq_time], strip: [AcquisitionDateTime, PatientID]}",
    )
    code, out = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, out
    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache2"))
    sidecars = [_sidecar(s) for s in ds["bold_sidecar"] if s is not None]
    assert sidecars and not any("PatientID" in s or "AcquisitionDateTime" in s for s in sidecars), sidecars
    for parquet in (dest / "data").glob("*.parquet"):
        assert b"MRN4471234" not in parquet.read_bytes(), f"a stripped value stayed in {parquet.name}"
    assert read_report(dest)["stripped"] == 2


def _sidecar(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value)


def test_strip_publishes_without_the_fields_and_a_new_finding_leaves_the_copy_untouched(
    tmp_path, monkeypatch, capsys
):
    root = identifying_tree(tmp_path / NAME, tmp_path)
    nifti(root / T1)  # no header text: header fields cannot be stripped (next test)
    dest = tmp_path / "published"
    spec = spec_file(
        tmp_path,
        root,
        dest,
        "{strip: [AcquisitionDateTime, PatientID, birth_date, acq_time, InstitutionName, DeviceSerialNumber]}",
    )
    code, out = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 0, out
    assert_no_secret(out, SECRETS)
    report = read_report(dest)
    assert report["stripped"] == 6 and report["blocking"] == 0
    assert ("sub-01/func/sub-01_task-rest_bold.json", "PatientID", "block", "stripped") in report_rows(report)
    assert ("sub-01/anat/sub-01_T1w.json", "InstitutionName", "warn", "stripped") in report_rows(report)

    ds = load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "cache"))
    assert "birth_date" not in ds.column_names and "acq_time" not in ds.column_names
    assert "age" in ds.column_names and "scanner" in ds.column_names  # the rest of the tables stays
    sidecars = [_sidecar(s) for s in ds["bold_sidecar"] if s is not None]
    assert sidecars and all("PatientID" not in s and "AcquisitionDateTime" not in s for s in sidecars)
    assert any(s.get("RepetitionTime") == 2.0 for s in sidecars)  # the other keys stay
    t1 = [_sidecar(s) for s in ds["t1w_sidecar"] if s is not None]
    assert t1 and all("InstitutionName" not in s for s in t1)
    for parquet in (dest / "data").glob("*.parquet"):
        data = parquet.read_bytes()
        for secret in (b"MRN4471234", b"1987-05-06", b"2021-03-04T10:11:12", b"Elsewhere"):
            assert secret not in data, f"{secret!r} reached {parquet.name}"

    code, out = run_cli(monkeypatch, capsys, "verify", str(dest), "--spec", str(spec))
    assert code == 0 and out.startswith("OK: 4/4 rows"), out

    # a new identifying key appears: refused, and the published copy stays as it was
    before = tree_state(dest)
    write_json(root / "sub-02/func/sub-02_task-rest_bold.json", {"PatientName": "Roe^Richard"})
    code, out = run_cli(monkeypatch, capsys, "publish", "--spec", str(spec), "--no-progress")
    assert code == 2 and REFUSED in out, out
    assert shown_rows(out) == [("sub-02/func/sub-02_task-rest_bold.json", "PatientName", "block")], out
    assert_no_secret(out, ("Roe", "Richard"))
    assert tree_state(dest) == before


@pytest.mark.parametrize("name", ["acq_time", "scan_time"])
def test_strip_of_a_sessions_column_renamed_by_the_spec(name, tmp_path, monkeypatch, capsys):
    """`rename: {acq_time: scan_time}` publishes acq_time as scan_time: stripping it by either name
    removes the published column, and the report says so (never "stripped" while it is published)."""
    root = base_tree(tmp_path / NAME)
    _sessions_acq_time(root, tmp_path)
    spec = write(
        tmp_path / "spec.yaml",
        f"bids_root: {root}\nrename: {{acq_time: scan_time}}\nprivacy: {{strip: [{name}]}}\n",
    )
    code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
    assert code == 0, out
    published = next(line for line in out.splitlines() if line.startswith("sessions  "))
    rows = shown_rows(out)
    assert "scan_time" not in published, f"strip: [{name}] left the dates published as scan_time:\n{out}"
    assert rows == [("sub-03/sub-03_sessions.tsv", "acq_time", "stripped (block)")], out
    assert BLOCKED_HINT not in out, out


@pytest.mark.parametrize("field", ["descrip", "extension"])
def test_stripping_a_header_field_is_refused_with_what_to_do(field, tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    _descrip(root, tmp_path)
    dest = tmp_path / "published"
    spec = spec_file(tmp_path, root, dest, f"{{strip: [{field}]}}")
    for args in (["index", "--spec", str(spec)], ["publish", "--spec", str(spec), "--no-progress"]):
        code, out = run_cli(monkeypatch, capsys, *args)
        assert code == 2, out
        assert (
            f"privacy.strip names {field} (a NIfTI header field): header fields cannot be stripped" in out
        ), out
        assert f"`privacy: {{allow: [{field}]}}`" in out and "Traceback" not in out, out
        assert_no_secret(out, ("Doe^Jane", "2021-03-04"))
    assert_nothing_at(dest)


# --- defacing ----------------------------------------------------------------------------------------


def test_defacing_is_decided_by_the_destination_in_index(tmp_path, monkeypatch, capsys):
    """`index --spec` with a Hub destination shows the decision: block for a public repo, info once
    affirmed, nothing to decide for a private one (a warning)."""
    root = base_tree(tmp_path / NAME)
    cases = {
        "": ("block", BLOCKED_HINT),
        "privacy: {defaced: true}\n": ("info", "affirmed defaced"),
        "hub: {private: true}\n": ("warn", "not affirmed defaced"),
    }
    for extra, (severity, text) in cases.items():
        spec = write(tmp_path / "spec.yaml", f"bids_root: {root}\ndestination: hf://datasets/lab/x\n{extra}")
        code, out = run_cli(monkeypatch, capsys, "index", "--spec", str(spec))
        assert code == 0, out
        assert shown_rows(out) == [("2 anatomical images (anat)", "defaced", severity)], out
        assert text in out, out


def hub_repo(server, repo_id: str) -> dict[str, bytes] | None:
    """The files of a repo on the test Hub, or None when it does not exist."""
    try:
        return server.files(repo_id)
    except KeyError:
        return None


HUB = ["--no-progress", "--workers", "1"]


def test_a_public_repo_without_the_affirmation_is_refused_before_anything_reaches_the_hub(
    hub_server, tmp_path, monkeypatch, capsys
):
    root = base_tree(tmp_path / NAME)
    code, out = run_cli(monkeypatch, capsys, "publish", str(root), "--to", "hf://datasets/lab/public", *HUB)
    assert code == 2, out
    assert REFUSED in out and "--affirm-defaced" in out, out
    assert shown_rows(out) == [("2 anatomical images (anat)", "defaced", "block")], out
    assert hub_server.lfs_uploads() == []
    assert not [r for r in hub_server.requests if r.method == "POST" and "/commit/" in r.path]
    made = [r.path for r in hub_server.requests if r.path == "/api/repos/create"]
    # no (public) repo is made for data that may not go there
    assert hub_repo(hub_server, "lab/public") is None and not made, (
        f"refused, yet the public repo lab/public was created ({made}) holding {sorted(hub_repo(hub_server, 'lab/public') or {})}"
    )


def test_a_private_repo_only_warns_about_defacing(hub_server, tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    code, out = run_cli(
        monkeypatch, capsys, "publish", str(root), "--to", "hf://datasets/lab/private", "--private", *HUB
    )
    assert code == 0, out
    assert f"published {NAME} to {hub_server.endpoint}/datasets/lab/private" in out, out
    files = hub_repo(hub_server, "lab/private")
    assert "data/train-00000-of-00001.parquet" in files and REPORT_NAME not in files  # never published
    assert "defaced" in out, f"publishing to a private repo gave no defacing warning:\n{out}"


def test_private_does_not_bypass_the_affirmation_for_an_existing_public_repo(
    hub_server, tmp_path, monkeypatch, capsys
):
    """`--private` only applies when the repo is created: to a repo that exists and is public, the
    anatomical images would go out publicly, so the affirmation is still required."""
    from huggingface_hub import HfApi

    HfApi().create_repo("lab/existing", repo_type="dataset", private=False)
    root = base_tree(tmp_path / NAME)
    code, out = run_cli(
        monkeypatch, capsys, "publish", str(root), "--to", "hf://datasets/lab/existing", "--private", *HUB
    )
    files = hub_repo(hub_server, "lab/existing")
    assert not any(path.startswith("data/") for path in files), (
        f"anat images unaffirmed went to the public repo lab/existing (exit {code}):\n{out}"
    )
    assert code == 2 and "--affirm-defaced" in out, out


def test_affirm_defaced_publishes_publicly_and_the_card_records_it(hub_server, tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    code, out = run_cli(
        monkeypatch, capsys, "publish", str(root), "--to", "hf://datasets/lab/affirmed", "--affirm-defaced",
        *HUB,
    )  # fmt: skip
    assert code == 0, out
    files = hub_server.files("lab/affirmed")
    assert "data/train-00000-of-00001.parquet" in files and REPORT_NAME not in files
    card = files["README.md"].decode("utf-8")
    assert "defaced" in card.lower(), f"the card does not record the defacing affirmation:\n{card}"


# --- the demo ----------------------------------------------------------------------------------------


def test_the_demo_publishes_locally_with_no_blocking_finding(tmp_path, monkeypatch, capsys):
    root = build_demo_bids(tmp_path / "demo")
    dest = tmp_path / "published"
    code, out = run_cli(monkeypatch, capsys, "publish", str(root), "--to", str(dest), "--no-progress")
    assert code == 0, out
    report = read_report(dest)
    assert report["blocking"] == 0
    # nothing in its sidecars, headers or tables warns; nibabel's comment extensions are info
    scanned = [f for f in report["findings"] if f["kind"] != "defacing"]
    assert scanned and all(f["severity"] == "info" and f["kind"] == "header" for f in scanned), scanned
    # its anatomical images go to a local folder unaffirmed: the one warning
    assert report_rows(report, "defacing") == [("4 anatomical images (anat)", "defaced", "warn", "")]
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(names(spec_for_folder(root)).bids_index)
    markdown = event.asset_materialization.metadata["privacy"].value
    assert markdown.startswith("privacy: 0 blocking, 1 warning, 4 info")
    assert "| sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz | extension[0] |" in markdown


def test_a_refusal_keeps_the_report_in_the_failed_bids_index_step(tmp_path, monkeypatch, capsys):
    root = base_tree(tmp_path / NAME)
    _descrip(root, tmp_path)
    code, out = run_cli(
        monkeypatch, capsys, "publish", str(root), "--to", str(tmp_path / "out"), "--no-progress"
    )
    assert code == 2, out
    with dg.DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    (record,) = records
    metadata = record.event_log_entry.dagster_event.step_failure_data.user_failure_data.metadata
    markdown = metadata["privacy"].value
    assert markdown.startswith("privacy: 2 blocking")
    assert f"| {T1} | descrip | a DICOM person name (Family^Given) | block |" in markdown
    assert_no_secret(markdown, ("Doe^Jane", "2021-03-04"))
