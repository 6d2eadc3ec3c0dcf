"""The privacy gate core (bids/privacy.py) on real files: nibabel images written here and nibabel's
own test images, real sidecar dicts and tables, and the demo BIDS tree."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest

from bids_hub_dagster.bids.errors import BidsError
from bids_hub_dagster.bids.privacy import (
    BLOCK_KEYS,
    WARN_KEYS,
    Finding,
    PrivacyBlocked,
    PrivacyConfigError,
    PrivacyPolicy,
    apply_policy,
    count_anat_images,
    defacing_finding,
    run_gate,
    scan_nifti_header,
    scan_sidecar,
    scan_sidecar_sources,
    scan_table,
    strip_sidecar,
    strip_table,
    text_findings,
)
from bids_hub_dagster.demo import NIBABEL_DATA, build_demo_bids
from bids_hub_dagster.errors import UserError

IDENTIFYING = ("Doe", "John", "2021", "03-04", "1.2.840", "1234567")


def _image(
    path: Path,
    *,
    header: dict[str, bytes] | None = None,
    extensions: list[tuple[str, bytes]] = (),
    nifti2=False,
):
    cls = nibabel.Nifti2Image if nifti2 else nibabel.Nifti1Image
    img = cls(np.zeros((4, 4, 4), np.int16), np.eye(4))
    for key, value in (header or {}).items():
        img.header[key] = value
    for code, content in extensions:
        img.header.extensions.append(nibabel.nifti1.Nifti1Extension(code, content))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(path)
    return path


def _no_values(findings, *values):
    """No finding's text names a value it found."""
    values = values or IDENTIFYING
    for f in findings:
        for text in (f.finding, f.field, f.file):
            for value in values:
                assert value not in text, (value, f)


def _by_field(findings):
    return {(f.field, f.finding): f.severity for f in findings}


# --- NIfTI headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
@pytest.mark.parametrize("nifti2", [False, True])
def test_header_descrip_with_a_name_and_a_date_blocks(tmp_path, name, nifti2):
    path = _image(tmp_path / name, header={"descrip": b"Doe^John 2021-03-04"}, nifti2=nifti2)
    findings = scan_nifti_header(path, f"sub-01/anat/{name}")
    assert _by_field(findings) == {
        ("descrip", "a date (YYYY-MM-DD)"): "block",
        ("descrip", "a DICOM person name (Family^Given)"): "block",
    }
    assert {f.kind for f in findings} == {"header"}
    assert {f.file for f in findings} == {f"sub-01/anat/{name}"}
    _no_values(findings)


def test_header_fields_each_searched(tmp_path):
    path = _image(
        tmp_path / "img.nii.gz",
        header={
            "descrip": b"TE=30;Time=101112.500;phase=1",  # dcm2niix: a time of day, a float: nothing
            "aux_file": b"MRN 12345678901",
            "db_name": b"1.2.840.113619.2.55.3.6046",
            "intent_name": b"dob 31.12.1999",
        },
    )
    assert _by_field(scan_nifti_header(path, "x.nii.gz")) == {
        ("aux_file", "a long number (6+ digits, possibly an ID)"): "block",
        ("aux_file", "a personal keyword (mrn)"): "block",
        ("db_name", "a DICOM UID"): "block",
        ("intent_name", "a date (DD.MM.YYYY)"): "block",
        ("intent_name", "a personal keyword (dob)"): "block",
    }


def test_header_extensions_are_info_and_block_with_a_finding(tmp_path):
    path = _image(
        tmp_path / "img.nii.gz",
        extensions=[("comment", b"processed with FSL5.0"), ("comment", b"patient Doe^John born 19800412")],
    )
    findings = scan_nifti_header(path, "x.nii.gz")
    assert _by_field(findings) == {
        ("extension[0]", "header extension (code 6, comment, 21 bytes)"): "info",
        (
            "extension[1]",
            "header extension (code 6, comment, 30 bytes) holds a date (YYYYMMDD, DICOM DA)",
        ): "block",
        (
            "extension[1]",
            "header extension (code 6, comment, 30 bytes) holds a DICOM person name (Family^Given)",
        ): "block",
        (
            "extension[1]",
            "header extension (code 6, comment, 30 bytes) holds a personal keyword (patient)",
        ): "block",
        (
            "extension[1]",
            "header extension (code 6, comment, 30 bytes) holds a personal keyword (born)",
        ): "block",
    }
    _no_values(findings, "Doe", "John", "1980")


def test_header_read_without_the_image_data(tmp_path):
    """A .nii.gz cut short after its header: the data cannot be read, the header still is."""
    rng = np.random.default_rng(0)
    img = nibabel.Nifti1Image(rng.integers(0, 30000, (64, 64, 64), dtype=np.int16), np.eye(4))
    img.header["descrip"] = b"Doe^John"
    full = tmp_path / "full.nii.gz"
    img.to_filename(full)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[:4096])
    with pytest.raises((EOFError, OSError)):
        nibabel.load(cut).get_fdata()
    assert _by_field(scan_nifti_header(cut, "cut.nii.gz")) == {
        ("descrip", "a DICOM person name (Family^Given)"): "block"
    }


def test_unreadable_files_give_no_finding(tmp_path):
    (tmp_path / "garbage.nii").write_bytes(b"not a nifti file at all" * 10)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 20))
    assert scan_nifti_header(tmp_path / "garbage.nii", "garbage.nii") == []
    assert scan_nifti_header(tmp_path / "short.nii.gz", "short.nii.gz") == []
    assert scan_nifti_header(tmp_path / "missing.nii", "missing.nii") == []


# What nibabel's own NIfTI test images hold in the searched fields (read here, checked below):
#   anatomical.nii, functional.nii, reoriented_anat_moved.nii  descrip "spm - 3D normalized"
#   resampled_anat_moved.nii                                   descrip "spm - realigned"
#   example4d.nii.gz, example_nifti2.nii.gz  descrip "FSL3.3\0 v2.25 NIfTI-1 Single file format",
#                                            two comment extensions ("extcomment1", "extlongcomment2")
#   nifti1.hdr, nifti2.hdr (pairs)           descrip "FSL4.0"
#   row_major.dconn.nii (CIFTI-2)            intent_name "ConnDense", a CIFTI XML extension (code 32)
#   standard.nii.gz                          nothing
NIBABEL_IMAGES = {
    "anatomical.nii": {},
    "functional.nii": {},
    "reoriented_anat_moved.nii": {},
    "resampled_anat_moved.nii": {},
    "standard.nii.gz": {},
    "example4d.nii.gz": {"extension[0]": "info", "extension[1]": "info"},
    "example_nifti2.nii.gz": {"extension[0]": "info", "extension[1]": "info"},
    "nifti1.hdr": {},
    "nifti2.hdr": {},
    "row_major.dconn.nii": {"extension[0]": "info"},
}


@pytest.mark.parametrize("name", sorted(NIBABEL_IMAGES))
def test_nibabel_test_images_give_no_blocking_finding(tmp_path, name):
    source = NIBABEL_DATA / name
    shutil.copy(source, tmp_path / name)  # the pairs' .hdr come without their .img: the header suffices
    findings = scan_nifti_header(tmp_path / name, name)
    assert {f.field: f.severity for f in findings} == NIBABEL_IMAGES[name]


def _with_descrip(source: Path, target: Path, descrip: bytes) -> Path:
    """A byte copy of ``source`` whose header's descrip is ``descrip`` (the image data untouched)."""
    raw = source.read_bytes()
    gz = source.name.endswith(".gz")
    if gz:
        raw = gzip.decompress(raw)
    nifti2 = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    offset = (nibabel.Nifti2Header if nifti2 else nibabel.Nifti1Header).template_dtype.fields["descrip"][1]
    raw = raw[:offset] + descrip.ljust(80, b"\0") + raw[offset + 80 :]
    target.write_bytes(gzip.compress(raw) if gz else raw)
    return target


@pytest.mark.parametrize("name", sorted(NIBABEL_IMAGES))
def test_nibabel_test_images_are_read(tmp_path, name):
    """The control for the test above: each image's header is really read (NIfTI-1, NIfTI-2, a pair
    header without its .img, CIFTI-2): a name put in its descrip is found."""
    target = _with_descrip(NIBABEL_DATA / name, tmp_path / name, b"Doe^John")
    findings = scan_nifti_header(target, name)
    assert {f.field: f.severity for f in findings} == {**NIBABEL_IMAGES[name], "descrip": "block"}


def test_nibabel_test_data_holds_no_other_nifti_images():
    """The calibration above covers every NIfTI image nibabel ships."""
    names = {p.name for p in NIBABEL_DATA.iterdir() if p.name.endswith((".nii", ".nii.gz"))}
    names |= {p.name for p in NIBABEL_DATA.glob("nifti*.hdr")}
    assert names == set(NIBABEL_IMAGES)


# --- text patterns -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spm - 3D normalized", []),
        ("FSL3.3\x00 v2.25 NIfTI-1 Single file format", []),
        ("FSL5.0", []),
        ("dcm2niix v1.0.20211006", []),  # a version, not a date
        ("TE=2.9;Time=143012.780;phase=1;mb=4", []),
        ("voxels in mm^3", []),
        ("ICBM AVG 152 T1 TAL LIN", []),
        ("release 5.0.11", []),
        ("not a date 2021-13-45", []),
        ("1999-12-31", ["a date (YYYY-MM-DD)"]),
        ("19991231", ["a date (YYYYMMDD, DICOM DA)"]),
        ("scan_20210304", ["a date (YYYYMMDD, DICOM DA)"]),
        ("18991231", ["a long number (6+ digits, possibly an ID)"]),  # not a plausible year
        ("31.12.1999", ["a date (DD.MM.YYYY)"]),
        ("12/31/1999", ["a date (MM/DD/YYYY)"]),
        ("2021/03/04", ["a date (YYYY/MM/DD)"]),
        ("20210304101112.5", ["a DICOM date-time (YYYYMMDDhhmmss)"]),
        ("2021-03-04T10:11:12", ["a date-time (YYYY-MM-DDThh:mm:ss)"]),
        ("Thu Mar  4 10:11:12 2021", ["a date (month name, day, year)"]),
        ("4 March 2021", ["a date (day, month name, year)"]),
        ("Doe^John", ["a DICOM person name (Family^Given)"]),
        ("1.2.840.10008.5.1.4.1.1.4", ["a DICOM UID"]),
        ("Patient: X", ["a personal keyword (patient)"]),
        ("name= X", ["a personal keyword (name:)"]),
        ("subject 0012345", ["a long number (6+ digits, possibly an ID)"]),
    ],
)
def test_text_patterns(text, expected):
    assert text_findings(text) == expected


# --- sidecars ----------------------------------------------------------------------------------


def test_sidecar_block_and_warn_keys():
    sidecar = {
        "RepetitionTime": 2.0,
        "PatientPosition": "HFS",  # an acquisition parameter, not an identifier
        "ConversionSoftwareVersion": "v1.0.20211006",
        "PatientName": "Doe^John",
        "PatientBirthdate": "19800412",  # a variant spelling
        "patient_id": "1234567",
        "AcquisitionDateTime": "2021-03-04T10:11:12",
        "InstitutionName": "Hospital",
        "DeviceSerialNumber": "35119",
        "StudyID": "",  # empty: nothing published
    }
    findings = scan_sidecar("sub-01/anat/sub-01_T1w.json", sidecar)
    assert {f.field: f.severity for f in findings} == {
        "PatientName": "block",
        "PatientBirthdate": "block",
        "patient_id": "block",
        "AcquisitionDateTime": "block",
        "InstitutionName": "warn",
        "DeviceSerialNumber": "warn",
    }
    variant = next(f for f in findings if f.field == "PatientBirthdate")
    assert variant.finding.endswith("a variant of PatientBirthDate")
    assert "PS3.15" in variant.finding
    _no_values(findings, "Doe", "John", "19800412", "1234567", "2021", "Hospital", "35119")


def test_every_listed_key_is_found():
    findings = scan_sidecar("x.json", {key: "x" for key in BLOCK_KEYS + WARN_KEYS})
    assert {f.field: f.severity for f in findings} == {
        **{k: "block" for k in BLOCK_KEYS},
        **{k: "warn" for k in WARN_KEYS},
    }
    for key in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientWeight",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "AcquisitionDateTime",
        "AcquisitionDate",
    ):
        assert key in BLOCK_KEYS
    for key in (
        "DeviceSerialNumber",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "ImageComments",
        "ProcedureStepDescription",
    ):
        assert key in WARN_KEYS


def test_sidecar_findings_name_the_source_json():
    sources = {
        "task-rest_bold.json": {"InstitutionName": "X", "RepetitionTime": 2},
        "sub-01/func/sub-01_task-rest_bold.json": {"PatientName": "Doe^John"},
    }
    findings = scan_sidecar_sources(sources)
    assert sorted((f.file, f.field) for f in findings) == [
        ("sub-01/func/sub-01_task-rest_bold.json", "PatientName"),
        ("task-rest_bold.json", "InstitutionName"),
    ]
    merged = {"InstitutionName": "X", "PatientName": "Doe^John"}
    by_key = scan_sidecar(
        "sub-01/func/sub-01_task-rest_bold.nii.gz",
        merged,
        source_of={"InstitutionName": "task-rest_bold.json"},
    )
    assert {f.field: f.file for f in by_key} == {
        "InstitutionName": "task-rest_bold.json",
        "PatientName": "sub-01/func/sub-01_task-rest_bold.nii.gz",
    }


# --- tables ------------------------------------------------------------------------------------


def test_scans_acq_time_blocks():
    findings = scan_table(
        "sub-01/sub-01_scans.tsv",
        ["filename", "acq_time", "scan_date", "operator"],
        [
            ["anat/sub-01_T1w.nii.gz", "2021-03-04T10:11:12", "20210304", "A"],
            ["func/sub-01_task-rest_bold.nii.gz", "n/a", "20210304", "B"],
        ],
    )
    assert _by_field(findings) == {
        ("acq_time", "an acquisition date-time (YYYY-MM-DDThh:mm:ss)"): "block",
        ("scan_date", "a date (YYYYMMDD)"): "block",
    }
    _no_values(findings, "2021", "10:11", "0304")


def test_shifted_acq_times_are_info():
    """bids-examples' synthetic dataset shifts its dates to the 1800s, as BIDS recommends."""
    findings = scan_table(
        "sub-01_scans.tsv", ["filename", "acq_time"], [["anat/a.nii", "1800-05-21T11:18:59"]]
    )
    assert [(f.field, f.severity) for f in findings] == [("acq_time", "info")]
    mixed = scan_table(
        "sub-01_scans.tsv",
        ["filename", "acq_time"],
        [["anat/a.nii", "1800-05-21T11:18:59"], ["anat/b.nii", "2009-04-09T12:04:14"]],
    )
    assert [(f.field, f.severity) for f in mixed] == [("acq_time", "block")]


def test_participants_birth_dates_ages_and_values():
    header = [
        "participant_id",
        "age",
        "sex",
        "date_of_birth",
        "dob",
        "birth_year",
        "visit",
        "scan_time",
        "group",
    ]
    rows = [
        ["sub-01", "54", "F", "1900-01-02", "31.12.1950", "1950", "2020-01-05", "10:11:12", "1"],
        ["sub-02", "91", "M", "n/a", "n/a", "1931", "n/a", "n/a", "2"],
        ["sub-03", "90.5", "F", "n/a", "n/a", "n/a", "n/a", "11:00", "1"],
    ]
    findings = scan_table("participants.tsv", header, rows)
    assert _by_field(findings) == {
        ("age", "2 ages over 89 (HIPAA safe harbor: show them as 90+)"): "warn",
        ("date_of_birth", "date of birth: a date (YYYY-MM-DD)"): "block",  # 1900: births are never "shifted"
        ("dob", "date of birth: a date (DD.MM.YYYY or YYYY/MM/DD)"): "block",
        ("birth_year", "year of birth (HIPAA safe harbor allows years, except for ages over 89)"): "warn",
        ("visit", "a date (YYYY-MM-DD)"): "block",  # found by its values
        ("scan_time", "a time of day (hh:mm:ss)"): "warn",
    }
    _no_values(findings, "1950", "2020", "91", "90.5", "10:11")


def test_ages_up_to_89_and_plain_columns_give_nothing():
    header = ["participant_id", "age_at_scan", "sex", "reaction_time", "genetic_id"]
    rows = [["sub-01", "89", "F", "0.53", "125425"], ["sub-02", "89+", "M", "n/a", "125426"]]
    assert scan_table("participants.tsv", header, rows) == []


# --- policy and report -------------------------------------------------------------------------


def test_policy_from_mapping_validates():
    policy = PrivacyPolicy.from_mapping(
        {"allow": ["InstitutionName"], "strip": ["AcquisitionDateTime"], "defaced": True}
    )
    assert policy == PrivacyPolicy(frozenset({"InstitutionName"}), frozenset({"AcquisitionDateTime"}), True)
    assert PrivacyPolicy.from_mapping(policy.to_mapping()) == policy
    assert PrivacyPolicy.from_mapping(None) == PrivacyPolicy()
    bad = [
        ({"alow": ["x"]}, "unknown key"),
        ({"allow": "InstitutionName"}, "must be a list"),
        ({"strip": [3]}, "must list field names"),
        ({"defaced": "yes"}, "true or false"),
        ({"allow": ["acq_time"], "strip": ["acq_time"]}, "both allow and strip"),
        ({"strip": ["descrip"]}, "header fields cannot be stripped"),
        (["InstitutionName"], "must be a mapping"),
    ]
    for raw, message in bad:
        with pytest.raises(PrivacyConfigError, match=message):
            PrivacyPolicy.from_mapping(raw)
    assert issubclass(PrivacyConfigError, ValueError) and issubclass(PrivacyConfigError, UserError)


def _mixed_findings(tmp_path):
    image = _image(tmp_path / "sub-01/anat/sub-01_T1w.nii.gz", header={"descrip": b"Doe^John"})
    return (
        scan_sidecar(
            "sub-01/anat/sub-01_T1w.json",
            {"AcquisitionDateTime": "2021-03-04T10:11:12", "InstitutionName": "H"},
        )
        + scan_nifti_header(image, "sub-01/anat/sub-01_T1w.nii.gz")
        + scan_table(
            "sub-01/sub-01_scans.tsv", ["filename", "acq_time"], [["anat/a.nii", "2021-03-04T10:11:12"]]
        )
    )


def test_allow_and_strip_stay_in_the_report(tmp_path):
    findings = _mixed_findings(tmp_path)
    blocked = apply_policy(findings, PrivacyPolicy())
    assert sorted(f.field for f in blocked.blocking) == ["AcquisitionDateTime", "acq_time", "descrip"]
    assert [f.field for f in blocked.warnings] == ["InstitutionName"]
    assert not blocked.ok

    policy = PrivacyPolicy.from_mapping(
        {"allow": ["descrip", "institution_name", "Unused"], "strip": ["AcquisitionDateTime", "ACQ_TIME"]}
    )
    report = apply_policy(findings, policy)
    assert report.ok and report.blocking == [] and report.warnings == []
    assert {(f.field, f.outcome, f.shown_severity) for f in report.findings} == {
        ("AcquisitionDateTime", "stripped", "stripped (block)"),
        ("acq_time", "stripped", "stripped (block)"),
        ("descrip", "allowed", "allowed (block)"),
        ("InstitutionName", "allowed", "allowed (warn)"),
    }
    assert report.unmatched_allow == ("Unused",)
    assert report.summary_line() == "privacy: 0 blocking, 0 warnings, 0 info, 2 allowed, 2 stripped"
    data = report.to_json()
    assert (data["blocking"], data["allowed"], data["stripped"]) == (0, 2, 2)
    assert json.loads(json.dumps(data))["findings"][0].keys() == {
        "file",
        "field",
        "finding",
        "severity",
        "kind",
        "outcome",
    }
    markdown = report.to_markdown()
    assert markdown.splitlines()[0] == "| file | field | finding | severity |"
    assert (
        "| sub-01/anat/sub-01_T1w.nii.gz | descrip | a DICOM person name (Family^Given) | allowed (block) |"
        in markdown
    )
    assert "Doe" not in markdown and "2021" not in markdown and "| H |" not in markdown


def test_stripping_a_header_field_is_refused(tmp_path):
    findings = _mixed_findings(tmp_path)
    # built directly (from_mapping refuses it already): apply_policy refuses it too, naming the file
    policy = PrivacyPolicy(strip=frozenset({"descrip"}))
    with pytest.raises(
        PrivacyConfigError, match=r"header fields cannot be stripped: the bytes are published as they are"
    ) as caught:
        apply_policy(findings, policy)
    assert "sub-01/anat/sub-01_T1w.nii.gz" in str(caught.value)
    assert "allow" in str(caught.value)
    extension = [Finding("a.nii", "extension[0]", "header extension", "info", "header")]
    with pytest.raises(PrivacyConfigError):
        apply_policy(extension, PrivacyPolicy(strip=frozenset({"extension[0]"})))
    assert (
        apply_policy(extension, PrivacyPolicy(allow=frozenset({"extensions"}))).findings[0].outcome
        == "allowed"
    )


def test_strip_sidecar_and_table():
    policy = PrivacyPolicy.from_mapping({"strip": ["AcquisitionDateTime", "acq_time"]})
    sidecar = {
        "AcquisitionDateTime": "2021-03-04T10:11:12",
        "acquisition_date_time": "x",
        "RepetitionTime": 2,
    }
    assert strip_sidecar(sidecar, policy) == {"RepetitionTime": 2}
    assert "AcquisitionDateTime" in sidecar  # a copy
    header, rows = strip_table(["filename", "acq_time"], [["a.nii", "2021-03-04T10:11:12"]], policy)
    assert (header, rows) == (["filename"], [["a.nii"]])


def test_privacy_blocked_message(tmp_path):
    report = apply_policy(_mixed_findings(tmp_path), PrivacyPolicy())
    with pytest.raises(PrivacyBlocked) as caught:
        report.raise_if_blocked()
    error = caught.value
    assert isinstance(error, BidsError) and error.report is report
    message = str(error)
    assert message.startswith("Publishing refused: 3 findings may identify participants")
    assert (
        "| sub-01/sub-01_scans.tsv | acq_time | an acquisition date-time (YYYY-MM-DDThh:mm:ss) | block |"
        in message
    )
    assert "strip: [AcquisitionDateTime, acq_time]" in message
    assert "allow: [descrip]" in message
    assert "Header fields cannot be stripped" in message
    assert "InstitutionName" not in message  # only the blocking rows
    assert "Doe" not in message and "2021" not in message
    apply_policy(
        _mixed_findings(tmp_path),
        PrivacyPolicy.from_mapping({"allow": ["descrip", "acq_time", "AcquisitionDateTime"]}),
    ).raise_if_blocked()


# --- defacing ----------------------------------------------------------------------------------


def test_defacing_decision():
    public = defacing_finding(3, destination_is_public_hub=True, affirmed=False)
    assert (public.severity, public.kind, public.field) == ("block", "defacing", "defaced")
    assert "--affirm-defaced" in public.finding
    assert (
        defacing_finding(3, destination_is_public_hub=False, affirmed=False).severity == "warn"
    )  # private / local
    assert defacing_finding(3, destination_is_public_hub=True, affirmed=True).severity == "info"
    assert defacing_finding(0, destination_is_public_hub=True, affirmed=False) is None
    # a blocking defacing finding is not released by allow: only the affirmation does that
    report = apply_policy([public], PrivacyPolicy(allow=frozenset({"defaced"})))
    assert [f.severity for f in report.blocking] == ["block"]
    with pytest.raises(PrivacyBlocked, match="--affirm-defaced"):
        report.raise_if_blocked()


def test_count_anat_images():
    files = [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii",
        "sub-01/func/sub-01_task-rest_bold.nii.gz",
        "derivatives/masks/sub-01/anat/sub-01_desc-lesion_mask.nii.gz",
        "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
    ]
    assert count_anat_images(files) == 3


# --- the whole gate ----------------------------------------------------------------------------


def _demo_inputs(root: Path):
    sources = {
        p.relative_to(root).as_posix(): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))
    }
    images = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.nii*"))]
    tables = []
    for p in sorted(root.rglob("*.tsv")):
        with p.open(newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        tables.append((p.relative_to(root).as_posix(), rows[0], rows[1:]))
    return sources, images, tables


def test_demo_gives_only_info_findings(tmp_path):
    root = build_demo_bids(tmp_path / "bids")
    sources, images, tables = _demo_inputs(root)
    assert len(images) == 12 and any(t[0] == "participants.tsv" for t in tables)
    report = run_gate(root, sources, images, tables, PrivacyPolicy())
    assert report.blocking == [] and report.warnings == []
    assert {(f.file.split("/")[-1], f.field, f.severity) for f in report.findings} == {
        ("sub-01_ses-1_task-rest_run-2_bold.nii.gz", "extension[0]", "info"),
        ("sub-01_ses-1_task-rest_run-2_bold.nii.gz", "extension[1]", "info"),
        ("sub-01_ses-2_task-rest_run-10_bold.nii.gz", "extension[0]", "info"),
        ("sub-01_ses-2_task-rest_run-10_bold.nii.gz", "extension[1]", "info"),
    }
    public = run_gate(root, sources, images, tables, PrivacyPolicy(), destination_is_public_hub=True)
    assert [(f.kind, f.file) for f in public.blocking] == [("defacing", "4 anatomical images (anat)")]
    local = run_gate(root, sources, images, tables, PrivacyPolicy(), destination_is_public_hub=False)
    assert [f.kind for f in local.warnings] == ["defacing"] and local.ok
    affirmed = run_gate(
        root, sources, images, tables, PrivacyPolicy(defaced=True), destination_is_public_hub=True
    )
    assert affirmed.ok and [f.kind for f in affirmed.infos if f.kind == "defacing"] == ["defacing"]


def test_run_gate_on_an_identifying_tree(tmp_path):
    root = tmp_path / "bids"
    _image(root / "sub-01/anat/sub-01_T1w.nii.gz", header={"descrip": b"Doe^John"})
    _image(root / "sub-01/func/sub-01_task-rest_bold.nii", extensions=[("comment", b"acquired 2021-03-04")])
    sources = {
        "task-rest_bold.json": {"InstitutionName": "H", "AcquisitionDateTime": "2021-03-04T10:11:12"},
        "sub-01/anat/sub-01_T1w.json": {"PatientName": "Doe^John"},
    }
    tables = [("participants.tsv", ["participant_id", "age"], [["sub-01", "93"]])]
    report = run_gate(
        root,
        sources,
        ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/func/sub-01_task-rest_bold.nii"],
        tables,
        PrivacyPolicy.from_mapping({"strip": ["AcquisitionDateTime"]}),
        destination_is_public_hub=True,
    )
    assert sorted((f.file, f.field, f.shown_severity) for f in report.findings) == [
        ("1 anatomical image (anat)", "defaced", "block"),
        ("participants.tsv", "age", "warn"),
        ("sub-01/anat/sub-01_T1w.json", "PatientName", "block"),
        ("sub-01/anat/sub-01_T1w.nii.gz", "descrip", "block"),
        ("sub-01/func/sub-01_task-rest_bold.nii", "extension[0]", "block"),
        ("task-rest_bold.json", "AcquisitionDateTime", "stripped (block)"),
        ("task-rest_bold.json", "InstitutionName", "warn"),
    ]
    _no_values(report.findings, "Doe", "John", "2021", "93")
    with pytest.raises(PrivacyBlocked) as caught:
        report.raise_if_blocked()
    assert "Publishing refused: 4 findings" in str(caught.value)


# --- places a new user hid identifying data in ---------------------------------------------------


def test_a_key_nested_in_a_sidecar_is_found_and_stripped_at_any_depth():
    from bids_hub_dagster.bids.privacy import PrivacyPolicy, scan_sidecar, strip_sidecar

    sidecar = {"Extra": {"PatientName": "Doe^Jane"}, "List": [{"PatientID": "123456"}], "TaskName": "rest"}
    found = {(f.field, f.severity) for f in scan_sidecar("task-rest_bold.json", sidecar)}
    assert ("PatientName", "block") in found and ("PatientID", "block") in found
    stripped = strip_sidecar(sidecar, PrivacyPolicy(strip=frozenset({"PatientName", "PatientID"})))
    assert stripped == {"Extra": {}, "List": [{}], "TaskName": "rest"}


def test_free_text_under_any_key_or_in_a_table_cell_is_scanned():
    from bids_hub_dagster.bids.privacy import scan_sidecar, scan_table

    sidecar = {"SeriesDescription": "Doe^Jane 2023-03-12", "ProtocolName": "T1_MPRAGE", "RepetitionTime": 2.0}
    findings = scan_sidecar("sub-01/anat/sub-01_T1w.json", sidecar)
    assert [(f.field, f.severity) for f in findings] == [("SeriesDescription", "block")]
    assert "Doe" not in findings[0].finding and "2023" not in findings[0].finding
    rows = [["sub-01", "born 03/12/1980", "30"], ["sub-02", "healthy", "41"]]
    table = scan_table("participants.tsv", ["participant_id", "notes", "age"], rows)
    assert [(f.field, f.severity) for f in table] == [("notes", "block")]
    assert "1980" not in table[0].finding


def test_events_files_are_scanned_and_their_stripped_columns_leave_every_record(tmp_path):
    import json

    import nibabel
    import numpy as np

    from bids_hub_dagster.bids.index import build_index
    from bids_hub_dagster.bids.privacy import PrivacyPolicy

    root = tmp_path / "ds"
    (root / "sub-01/func").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "e", "BIDSVersion": "1.10.0"}))
    image = nibabel.Nifti1Image(np.arange(64 * 2, dtype=np.int16).reshape(4, 4, 4, 2), np.eye(4))
    image.to_filename(root / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    (root / "sub-01/func/sub-01_task-rest_events.tsv").write_text(
        "onset\tduration\tpatient_name\tacq_time\n1\t1\tDoe^Jane\t2023-03-12T10:00:00\n"
    )
    report = build_index(root, privacy=PrivacyPolicy()).privacy_report
    blocked = {(f.file, f.field) for f in report.blocking}
    assert blocked == {
        ("sub-01/func/sub-01_task-rest_events.tsv", "patient_name"),
        ("sub-01/func/sub-01_task-rest_events.tsv", "acq_time"),
    }
    policy = PrivacyPolicy(strip=frozenset({"patient_name", "acq_time"}))
    index = build_index(root, privacy=policy)
    assert not index.privacy_report.blocking
    events = index.file_companions["sub-01/func/sub-01_task-rest_bold.nii.gz"]["events"]
    assert events == [{"onset": 1.0, "duration": 1.0}]


def test_a_study_arm_named_patient_is_not_an_identity():
    from bids_hub_dagster.bids.privacy import scan_sidecar, scan_table

    rows = [["sub-01", "patient"], ["sub-02", "control"]]  # genetics_ukbb's participants.tsv has this
    assert scan_table("participants.tsv", ["participant_id", "group"], rows) == []
    assert scan_sidecar("task-rest_bold.json", {"TaskDescription": "patients rest with eyes open"}) == []
