"""The privacy gate: find what may identify a participant before anything is published.

Four sources are scanned; a finding names the file, the field and *what* was found, never the
value itself (no names, no dates: "a date (YYYY-MM-DD)", "a DICOM person name"):

* **Sidecars** (:func:`scan_sidecar_sources`, :func:`scan_sidecar`): the keys of a JSON sidecar.
  Our block/warn split follows the DICOM PS3.15 basic application level confidentiality profile
  (PS3.15 Annex E, Table E.1-1), which removes or replaces every key listed here:
  :data:`BLOCK_KEYS` (patient identity, dates, study/series UIDs, physicians) **block** publishing;
  :data:`WARN_KEYS` (institution, device, free-text comments) only **warn**, as they identify a
  site rather than a person. Keys match exactly and also as obvious variants (case, ``_``/``-``/space
  ignored: ``PatientBirthdate``, ``patient_name``); never by substring (``PatientPosition`` is an
  acquisition parameter, not an identifier). Values are not searched: a sidecar value such as
  ``"ConversionSoftwareVersion": "v1.0.20211006"`` would look like a date. Empty values are skipped.
* **NIfTI headers** (:func:`scan_nifti_header`): the text fields ``descrip``, ``aux_file``, ``db_name``
  and ``intent_name`` are searched with the patterns below and a hit **blocks**. Header extensions
  are listed as **info** (nibabel's own test images carry ``comment`` extensions) and **block** when
  their text holds a hit. Header bytes are published as they are, so a header field cannot be
  stripped: the user fixes the file or allows the field. Only the header is read (NIfTI-1 and
  NIfTI-2, CIFTI's NIfTI-2 header, a ``.nii.gz`` decompressed only as far as the header); a file
  nibabel cannot read gives no finding (another component reports broken files).
* **Tables** (:func:`scan_table`: participants.tsv, sessions.tsv, scans.tsv): a column holding
  dates of birth, acquisition dates or date-times (``acq_time``), found by its name (``acq_time``,
  ``*birth*``, ``dob``, ``*date*``) or its values (ISO dates and date-times, the BIDS ``acq_time``
  form ``YYYY-MM-DDThh:mm:ss``, ``DD.MM.YYYY``, ``MM/DD/YYYY``, ``YYYY/MM/DD``), **blocks**. Dates
  shifted to the year 1925 or earlier (the BIDS convention for de-identified dates, as in
  bids-examples' ``synthetic``) are only **info**; a birth column is never taken as shifted. A
  ``*time*`` column of times of day and a birth column of years only **warn**. Ages (a column named
  ``age`` or ``age…``) over 89 **warn** (HIPAA safe harbor: aggregate them as 90+).
* **Defacing** (:func:`defacing_finding`): anatomical images bound for a public Hub repo **block**
  until the user affirms they are defaced; to a private repo or a local folder they only warn.

The header text patterns (:func:`text_findings`), tried in this order, each span reported once:

======================  ===================================================================
DICOM UID               ``1.2.840.10008.5.1.4``: a leading 0/1/2 and at least 4 more numeric
                        components, 10+ characters (versions like ``5.0.11`` are too short)
DICOM date-time (DT)    ``YYYYMMDDhhmm[ss][.ffffff][&zzzz]`` with a valid date, year 1900–2100
date-time (ISO)         ``YYYY-MM-DDThh:mm`` (or a space for ``T``) with a valid date
date (ISO)              ``YYYY-MM-DD`` with a valid date
date (YYYY/MM/DD)       ``YYYY/MM/DD`` or ``YYYY.MM.DD``, valid, year 1900–2100
date (DICOM DA)         ``YYYYMMDD``, valid, year 1900–2100, not inside a longer number or a
                        dotted version (``v1.0.20211006`` is a version, not a date)
date (DD.MM.YYYY)       ``DD.MM.YYYY`` or ``DD-MM-YYYY``, valid, year 1900–2100
date (MM/DD/YYYY)       ``MM/DD/YYYY`` (or ``DD/MM/YYYY``), valid either way, year 1900–2100
date (month name)       ``4 Mar 2021``, ``Mar 4 2021``, ``Thu Mar  4 10:11:12 2021`` (ctime)
DICOM person name       ``Doe^John``, ``Doe^``, ``^John``: 2+ letters beside a caret, not ``mm^3``
personal keyword        ``patient…``, ``dob``, ``born``, ``birth…``, ``mrn``, ``name:``/``name=``
long number             6+ digits, not part of a float or a dotted version (``FSL5.0``,
                        ``Time=101112.500`` as dcm2niix writes it) — possibly an ID
======================  ===================================================================

The spec's ``privacy`` block (:class:`PrivacyPolicy`) acknowledges fields (``allow``) or strips
them from the published sidecars and tables (``strip``); neither is silent: such findings stay in
the report (:class:`PrivacyReport`) with the outcome "allowed" or "stripped".
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import BidsError, shown

Severity = Literal["block", "warn", "info"]
Kind = Literal["sidecar", "header", "table", "defacing"]

# --- sidecar keys ------------------------------------------------------------------------------
# All of these are removed or replaced by the DICOM PS3.15 basic application level confidentiality
# profile (PS3.15 Annex E, Table E.1-1). Our policy: those identifying a person, a date or a study
# block publishing; those identifying a site or device, or free text, warn.

#: sidecar keys that block publishing (person, dates, study/series identifiers, physicians)
BLOCK_KEYS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientWeight",
    "PatientSize",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "OperatorsName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "StudyDate",
    "SeriesDate",
    "ContentDate",
    "InstanceCreationDate",
)
#: sidecar keys that warn (site, device, free-text descriptions)
WARN_KEYS: tuple[str, ...] = (
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ImageComments",
    "ProcedureStepDescription",
    "PerformedProcedureStepDescription",
)

#: the NIfTI (and Analyze) header text fields that are searched
HEADER_FIELDS: tuple[str, ...] = ("descrip", "aux_file", "db_name", "intent_name")

_SIDECAR_BLOCK_TEXT = "identifying DICOM attribute (removed by the PS3.15 basic profile)"
_SIDECAR_WARN_TEXT = "site/device or free-text DICOM attribute (removed by the PS3.15 basic profile)"

_SEVERITY_RANK = {"block": 0, "warn": 1, "info": 2}
_OUTCOME_RANK = {"": 0, "allowed": 1, "stripped": 2}


def _norm(name: str) -> str:
    """A field name as rules match it: case-folded, without ``_``, ``-``, ``.`` and spaces."""
    return re.sub(r"[\s_\-.]+", "", name).casefold()


_KEY_RULES: dict[str, tuple[str, Severity]] = {
    **{_norm(key): (key, "block") for key in BLOCK_KEYS},
    **{_norm(key): (key, "warn") for key in WARN_KEYS},
}


class PrivacyConfigError(BidsError, ValueError):
    """The spec's ``privacy`` block is malformed, or asks for what cannot be done."""


@dataclass(frozen=True)
class Finding:
    """One thing that may identify a participant; never holds the identifying value itself."""

    file: str  # relpath in the BIDS root: the JSON holding the key, the image, the .tsv
    field: str  # the key / header field / column: "PatientName", "descrip", "extension[0]", "acq_time"
    finding: str  # what it is, never the value: "a date (YYYY-MM-DD)"
    severity: Severity
    kind: Kind
    outcome: str = ""  # after the policy: "" (as severity), "allowed" or "stripped"

    @property
    def shown_severity(self) -> str:
        """The severity as the report shows it: ``block``, or ``allowed (block)`` once acknowledged."""
        return f"{self.outcome} ({self.severity})" if self.outcome else self.severity

    def to_json(self) -> dict[str, str]:
        return {
            "file": self.file,
            "field": self.field,
            "finding": self.finding,
            "severity": self.severity,
            "kind": self.kind,
            "outcome": self.outcome,
        }


# --- policy ------------------------------------------------------------------------------------


def _is_header_field(name: str) -> bool:
    key = _norm(name)
    return key in {_norm(f) for f in HEADER_FIELDS} or key.startswith("extension")


def _names(raw: Any, key: str) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if isinstance(raw, str) or not isinstance(raw, (list, tuple, set, frozenset)):
        raise PrivacyConfigError(
            f"privacy.{key} must be a list of field names, e.g. `privacy: {{{key}: [InstitutionName]}}`;"
            f" got {type(raw).__name__} {shown(raw)}"
        )
    names = []
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise PrivacyConfigError(
                f"privacy.{key} must list field names (non-empty text); got {shown(item)!s} ({type(item).__name__})"
            )
        names.append(item.strip())
    return frozenset(names)


@dataclass(frozen=True)
class PrivacyPolicy:
    """The spec's ``privacy`` block: fields acknowledged (``allow``) or stripped (``strip``), and
    whether the anatomical images are affirmed defaced (``defaced``)."""

    allow: frozenset[str] = frozenset()
    strip: frozenset[str] = frozenset()
    defaced: bool = False

    KEYS = ("allow", "strip", "defaced")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> PrivacyPolicy:
        """The policy of a spec's ``privacy`` block (``None``: the default, nothing allowed)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise PrivacyConfigError(
                f"privacy must be a mapping with the keys {', '.join(cls.KEYS)}, e.g."
                f" `privacy: {{allow: [InstitutionName], strip: [AcquisitionDateTime], defaced: true}}`;"
                f" got {type(raw).__name__}"
            )
        unknown = sorted(str(k) for k in raw if k not in cls.KEYS)
        if unknown:
            raise PrivacyConfigError(
                f"privacy has unknown key(s) {', '.join(shown(k) for k in unknown)}: the keys are {', '.join(cls.KEYS)}"
            )
        allow = _names(raw.get("allow"), "allow")
        strip = _names(raw.get("strip"), "strip")
        defaced = raw.get("defaced", False)
        if not isinstance(defaced, bool):
            raise PrivacyConfigError(
                f"privacy.defaced must be true or false; got {type(defaced).__name__} {shown(defaced)}"
            )
        both = sorted(a for a in allow if _norm(a) in {_norm(s) for s in strip})
        if both:
            raise PrivacyConfigError(
                f"privacy lists {', '.join(shown(b) for b in both)} under both allow and strip: choose one"
                " (allow publishes the field as it is, strip removes it)"
            )
        headers = sorted(s for s in strip if _is_header_field(s))
        if headers:
            raise PrivacyConfigError(header_strip_message(headers[0]))
        return cls(allow=allow, strip=strip, defaced=defaced)

    def to_mapping(self) -> dict[str, Any]:
        return {"allow": sorted(self.allow), "strip": sorted(self.strip), "defaced": self.defaced}

    def with_aliases(self, aliases: Mapping[str, str]) -> PrivacyPolicy:
        """This policy where a field published under another name (``old -> new``) answers to both."""

        def widened(names: frozenset[str]) -> frozenset[str]:
            extra = {old for old, new in aliases.items() if _matches(new, names)}
            extra |= {new for old, new in aliases.items() if _matches(old, names)}
            return names | extra

        return PrivacyPolicy(allow=widened(self.allow), strip=widened(self.strip), defaced=self.defaced)

    def allows(self, name: str) -> bool:
        return _matches(name, self.allow)

    def strips(self, name: str) -> bool:
        return _matches(name, self.strip)


def _matches(name: str, rules: Iterable[str]) -> bool:
    """Whether a rule names the field: same name up to case and ``_``/``-``; ``extension`` (or
    ``extensions``) names every ``extension[i]``."""
    key = _norm(name)
    for rule in rules:
        r = _norm(rule)
        if r == key or (key.startswith("extension[") and r in ("extension", "extensions")):
            return True
    return False


def header_strip_message(name: str, file: str | None = None) -> str:
    where = f" (a NIfTI header field of {shown(file)})" if file else " (a NIfTI header field)"
    return (
        f"privacy.strip names {shown(name)}{where}: header fields cannot be stripped: the bytes are"
        " published as they are; fix the file (e.g. with nibabel: img = nibabel.load(path);"
        " img.header['descrip'] = b'' (extensions: img.header.extensions.clear()); img.to_filename(fixed_path)) or allow the field"
        f" (`privacy: {{allow: [{name}]}}`)"
    )


# --- text patterns (NIfTI header fields and extensions) ----------------------------------------

_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_MONTH = (
    r"(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)


def _valid_date(year: int, month: int, day: int, *, plausible: bool = True) -> bool:
    if plausible and not 1900 <= year <= 2100:
        return False
    if not 1 <= month <= 12 or year < 1:
        return False
    return 1 <= day <= calendar.monthrange(year, month)[1]


def _ymd(m: re.Match[str]) -> bool:
    return _valid_date(int(m["y"]), int(m["m"]), int(m["d"]))


def _ymd_any_year(m: re.Match[str]) -> bool:
    return _valid_date(int(m["y"]), int(m["m"]), int(m["d"]), plausible=False)


def _slash_date(m: re.Match[str]) -> bool:
    a, b, y = int(m["a"]), int(m["b"]), int(m["y"])
    return _valid_date(y, a, b) or _valid_date(y, b, a)


def _month_name_date(m: re.Match[str]) -> bool:
    return _valid_date(int(m["y"]), _MONTHS[m["mon"][:3].casefold()], int(m["d"]))


_NUM_BEFORE = r"(?<![\d.])"  # not inside a number or a dotted version
_NUM_AFTER = r"(?!\.?\d)"  # not followed by more digits or a decimal part

#: (finding, compiled pattern, validator or None), tried in this order; a span matched once is
#: masked, so "20210304" is a date and not also a long number
_TEXT_PATTERNS: tuple[tuple[str, re.Pattern[str], Any], ...] = (
    (
        "a DICOM UID",
        re.compile(r"(?<![\w.])[0-2](?:\.(?:0|[1-9]\d*)){4,}(?![\w.]|\.\d)"),
        lambda m: len(m.group()) >= 10,
    ),
    (
        "a DICOM date-time (YYYYMMDDhhmmss)",
        re.compile(
            _NUM_BEFORE + r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})(?:[01]\d|2[0-3])[0-5]\d(?:[0-5]\d)?"
            r"(?:\.\d{1,6})?(?:[+-]\d{4})?(?!\d)"
        ),
        _ymd,
    ),
    (
        "a date-time (YYYY-MM-DDThh:mm:ss)",
        re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"),
        _ymd_any_year,
    ),
    (
        "a date (YYYY-MM-DD)",
        re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?!\d)"),
        _ymd_any_year,
    ),
    (
        "a date (YYYY/MM/DD)",
        re.compile(_NUM_BEFORE + r"(?P<y>\d{4})(?P<sep>[/.])(?P<m>\d{2})(?P=sep)(?P<d>\d{2})" + _NUM_AFTER),
        _ymd,
    ),
    (
        "a date (YYYYMMDD, DICOM DA)",
        re.compile(_NUM_BEFORE + r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})" + _NUM_AFTER),
        _ymd,
    ),
    (
        "a date (DD.MM.YYYY)",
        re.compile(
            _NUM_BEFORE + r"(?P<d>\d{1,2})(?P<sep>[.\-])(?P<m>\d{1,2})(?P=sep)(?P<y>\d{4})" + _NUM_AFTER
        ),
        _ymd,
    ),
    (
        "a date (MM/DD/YYYY)",
        re.compile(r"(?<![\d/])(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4})(?![\d/])"),
        _slash_date,
    ),
    (
        "a date (day, month name, year)",
        re.compile(
            r"(?i)(?<![\w])(?P<d>\d{1,2})[ \-]?"
            + _MONTH.replace("(", "(?P<mon>", 1)
            + r"\.?[ \-,]*(?P<y>\d{4})(?!\d)"
        ),
        _month_name_date,
    ),
    (
        "a date (month name, day, year)",
        re.compile(
            r"(?i)(?<![a-z])" + _MONTH.replace("(", "(?P<mon>", 1) + r"\.?\s+(?P<d>\d{1,2})(?:st|nd|rd|th)?,?"
            r"(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?\s+(?P<y>\d{4})(?!\d)"
        ),
        _month_name_date,
    ),
    (
        "a DICOM person name (Family^Given)",
        re.compile(r"[^\W\d_]{2,}\^(?!\d)|(?<!\w)\^[^\W\d_]{2,}"),
        None,
    ),
    ("a long number (6+ digits, possibly an ID)", re.compile(r"(?<![\d.,])\d{6,}(?!\d|[.,]\d)"), None),
)

#: personal keywords, each reported by its canonical form (never the matched text, which may run on
#: into a name)
_KEYWORDS = re.compile(
    r"(?i)(?P<patient>(?<![a-z])patient)|(?P<dob>\bd\.?o\.?b\b)|(?P<born>\bborn\b)"
    r"|(?P<birth>(?<![a-z])birth)|(?P<mrn>\bmrn\b)|(?P<name>(?<![a-z])(?:first|last|given|family|sur)?[ _]?name\s*[:=])"
)
_KEYWORD_SHOWN = {
    "patient": "patient",
    "dob": "dob",
    "born": "born",
    "birth": "birth",
    "mrn": "mrn",
    "name": "name:",
}

_MASK = "\x01"


def text_findings(text: str, *, long_numbers: bool = True, keywords: bool = True) -> list[str]:
    """What in ``text`` may identify a person, as finding texts (each kind once, in pattern order);
    never the matched text itself. ``long_numbers=False`` skips the 6+ digit rule (for machine
    written extensions such as CIFTI's XML, whose numbers are counts and indices);
    ``keywords=False`` the personal keywords (for data values: ``group: patient`` is a
    study arm, not an identity)."""
    found: list[str] = []
    work = text.replace("\x00", " ")
    for finding, pattern, valid in _TEXT_PATTERNS:
        if not long_numbers and finding.startswith("a long number"):
            continue
        hit = False

        def mask(m: re.Match[str], valid: Any = valid) -> str:
            nonlocal hit
            if valid is not None and not valid(m):
                return m.group()
            hit = True
            return _MASK * len(m.group())

        work = pattern.sub(mask, work)
        if hit:
            found.append(finding)
    words: list[str] = []
    for m in _KEYWORDS.finditer(work) if keywords else ():
        word = _KEYWORD_SHOWN[next(k for k, v in m.groupdict().items() if v is not None)]
        if word not in words:
            words.append(word)
    found.extend(f"a personal keyword ({word})" for word in words)
    return found


# --- sidecars ----------------------------------------------------------------------------------


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict, tuple)) and not value)


def scan_sidecar(
    relpath: str, sidecar: Mapping[str, Any], source_of: Mapping[str, str] | None = None
) -> list[Finding]:
    """The identifying keys of a (merged) sidecar. ``source_of`` maps a key to the JSON file that
    holds it (after BIDS inheritance): a finding names that file, else ``relpath``."""
    findings = []
    for key, value, within in _walk(sidecar):
        file = (source_of or {}).get(within[0] if within else key, relpath)
        nested = f" (nested in {'.'.join(within)})" if within else ""
        rule = _KEY_RULES.get(_norm(str(key)))
        if rule is not None and not _empty(value):
            canonical, severity = rule
            text = _SIDECAR_BLOCK_TEXT if severity == "block" else _SIDECAR_WARN_TEXT
            if key != canonical:
                text = f"{text}; a variant of {canonical}"
            findings.append(Finding(file, str(key), text + nested, severity, "sidecar"))
        elif isinstance(value, str):  # free text under any other key: a name or a date in it blocks
            found = text_findings(value, long_numbers=False, keywords=False)
            if found:
                findings.append(
                    Finding(
                        file, str(key), f"free text holding {', '.join(found)}{nested}", "block", "sidecar"
                    )
                )
    return findings


def _walk(value: Any, within: tuple[str, ...] = ()) -> Iterator[tuple[str, Any, tuple[str, ...]]]:
    """``(key, value, enclosing keys)`` of every key of a JSON object, nested objects and lists included."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key), item, within
            if isinstance(item, (Mapping, list)):
                yield from _walk(item, (*within, str(key)))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (Mapping, list)):
                yield from _walk(item, within)
            elif isinstance(item, str) and within:
                yield within[-1], item, within[:-1]


def scan_sidecar_sources(sources: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    """Each JSON sidecar file scanned once (relpath → its parsed content): a key inherited by many
    data files is reported once, on the file that holds it."""
    findings = []
    for relpath, content in sources.items():
        if isinstance(content, Mapping):
            findings.extend(scan_sidecar(relpath, content))
    return findings


def strip_sidecar(sidecar: Mapping[str, Any], policy: PrivacyPolicy) -> dict[str, Any]:
    """A copy of ``sidecar`` without the keys the policy strips, at any depth."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if not policy.strips(str(k))}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(sidecar)


# --- NIfTI headers -----------------------------------------------------------------------------

#: extension codes whose content is machine-written structure (numbers are counts, indices,
#: matrices): the long-number rule does not apply to them (nibabel.nifti1.extension_codes)
_STRUCTURED_EXTENSIONS = {4: "afni", 32: "cifti"}


_GZIP_MAGIC = b"\x1f\x8b"


def _read_header(path: Path) -> Any | None:
    """The NIfTI header of ``path`` with its extensions (a CIFTI file's NIfTI-2 header holds its
    XML), or ``None`` when it cannot be read as one.

    Reads the header once, from the file's first bytes (gunzipped when it is a gzip stream), with
    nibabel's own ``Nifti1Header``/``Nifti2Header.from_fileobj``, picked by ``sizeof_hdr`` (348 or
    540, either byte order). ``nibabel.load`` parses the same header three times (sniffing the
    image class, loading, copying it into the image), each with its battery of checks: 5× the
    cost per image. The checks are not run (``check=False``): a header they would refuse is still
    scanned, never skipped.
    """
    import gzip

    from nibabel.nifti1 import Nifti1Header
    from nibabel.nifti2 import Nifti2Header

    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
            head = stream.read(4)
            if len(head) < 4:
                return None
            sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
            kind = Nifti1Header if 348 in sizes else Nifti2Header if 540 in sizes else None
            if kind is None:
                return None
            stream.seek(0)
            return kind.from_fileobj(stream, check=False)
    except Exception:  # a broken or foreign file: another component reports it
        return None


def _header_text(header: Any, name: str) -> str | None:
    try:
        if name not in header.keys():
            return None
        value = header[name]
    except Exception:
        return None
    raw = value.item() if hasattr(value, "item") else value
    if isinstance(raw, bytes):
        return raw.decode("latin-1")
    return str(raw)


def _extension_bytes(ext: Any) -> bytes:
    content = getattr(ext, "content", None)
    if isinstance(content, bytes):
        return content
    content = ext.get_content()
    return content if isinstance(content, bytes) else str(content).encode("utf-8", "replace")


def _extension_label(code: int) -> str:
    from nibabel.nifti1 import extension_codes

    try:
        return str(extension_codes.label[code])
    except KeyError:
        return "unknown"


def scan_nifti_header(path: Path, relpath: str) -> list[Finding]:
    """Findings in the header of the image at ``path`` (reported as ``relpath``): its text fields
    (block) and its extensions (info, or block when their text holds a finding)."""
    header = _read_header(Path(path))
    if header is None:
        return []
    findings = []
    for name in HEADER_FIELDS:
        text = _header_text(header, name)
        if not text:
            continue
        for finding in text_findings(text):
            findings.append(Finding(relpath, name, finding, "block", "header"))
    for i, ext in enumerate(getattr(header, "extensions", None) or ()):
        try:
            code = int(ext.get_code())
            content = _extension_bytes(ext)
        except Exception:
            continue
        label = _extension_label(code)
        described = f"header extension (code {code}, {label}, {len(content)} bytes)"
        hits = text_findings(content.decode("latin-1"), long_numbers=code not in _STRUCTURED_EXTENSIONS)
        if hits:
            for hit in hits:
                findings.append(
                    Finding(relpath, f"extension[{i}]", f"{described} holds {hit}", "block", "header")
                )
        else:
            findings.append(Finding(relpath, f"extension[{i}]", described, "info", "header"))
    return findings


# --- tables ------------------------------------------------------------------------------------

_NA = {"", "n/a", "na", "nan", "none", "null"}
_ISO_DATETIME = re.compile(
    r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_ISO_DATE = re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})")
_OTHER_DATES = (
    re.compile(r"(?P<d>\d{1,2})(?P<sep>[.\-])(?P<m>\d{1,2})(?P=sep)(?P<y>\d{4})"),
    re.compile(r"(?P<y>\d{4})(?P<sep>[/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})"),
)
_SLASH_DATE = re.compile(r"(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4})")
_COMPACT_DATE = re.compile(r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})")
_TIME_OF_DAY = re.compile(r"([01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?")
_YEAR = re.compile(r"(?:19|20)\d{2}")
#: BIDS: "it is RECOMMENDED to set shifted dates to the year 1925 or earlier"
SHIFTED_YEAR_MAX = 1925
#: HIPAA safe harbor: ages over 89 are aggregated into a single category of 90 or older
AGE_MAX = 89
_DATE_FALSE_FRIENDS = {"update", "updated", "candidate", "validate", "validated", "mandate"}


def _value_date(value: str, *, compact: bool) -> tuple[str, int] | None:
    """(finding, year) when ``value`` is a date or date-time."""
    m = _ISO_DATETIME.fullmatch(value)
    if m and _ymd_any_year(m):
        return "a date-time (YYYY-MM-DDThh:mm:ss)", int(m["y"])
    m = _ISO_DATE.fullmatch(value)
    if m and _ymd_any_year(m):
        return "a date (YYYY-MM-DD)", int(m["y"])
    for pattern in _OTHER_DATES:
        m = pattern.fullmatch(value)
        if m and _ymd_any_year(m):
            return "a date (DD.MM.YYYY or YYYY/MM/DD)", int(m["y"])
    m = _SLASH_DATE.fullmatch(value)
    if m:
        a, b, y = int(m["a"]), int(m["b"]), int(m["y"])
        if _valid_date(y, a, b, plausible=False) or _valid_date(y, b, a, plausible=False):
            return "a date (MM/DD/YYYY)", y
    if compact:
        m = _COMPACT_DATE.fullmatch(value)
        if m and _ymd(m):
            return "a date (YYYYMMDD)", int(m["y"])
    return None


def _column_name_kind(name: str) -> str | None:
    """ "acq", "birth" or "date" from a column's name, else None."""
    n = name.casefold()
    tokens = [t for t in re.split(r"[\s_\-.]+", n) if t]
    if n in ("acq_time", "acq_date", "acq_datetime", "acquisition_time", "acquisition_date"):
        return "acq"
    if "birth" in n or "dob" in tokens or n in ("birthday", "dateofbirth"):
        return "birth"
    if any(t.startswith("date") or (t.endswith("date") and t not in _DATE_FALSE_FRIENDS) for t in tokens):
        return "date"
    return None


def _is_time_column(name: str) -> bool:
    return "time" in re.split(r"[\s_\-.]+", name.casefold()) or name.casefold().endswith("time")


def _is_age_column(name: str) -> bool:
    return name.strip().casefold().startswith("age")


def scan_table(relpath: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[Finding]:
    """Findings in a BIDS table (participants.tsv, sessions.tsv, scans.tsv): columns of dates and
    date-times (block; info when all are shifted to 1925 or earlier), times of day (warn), ages over
    89 (warn). One finding per column, never a value."""
    findings = []
    for index, name in enumerate(header):
        if index == 0 and name in ("participant_id", "session_id", "filename"):
            continue
        values = [
            str(row[index]).strip()
            for row in rows
            if index < len(row) and str(row[index]).strip().casefold() not in _NA
        ]
        finding = _column_finding(name, values)
        if finding is not None:
            text, severity = finding
            findings.append(Finding(relpath, name, text, severity, "table"))
    return findings


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")  # a plain number: no free text to scan


def _column_finding(name: str, values: list[str]) -> tuple[str, Severity] | None:
    if not values:
        return None
    kind = _column_name_kind(name)
    if _is_age_column(name) and kind is None:
        over = 0
        for value in values:
            try:
                over += float(value) > AGE_MAX
            except ValueError:
                continue
        if over:
            return (
                f"{over} age{'s' if over > 1 else ''} over {AGE_MAX} (HIPAA safe harbor: show them as 90+)",
                "warn",
            )
        return None
    dates = [d for d in (_value_date(v, compact=kind is not None) for v in values) if d is not None]
    if kind == "birth":
        if dates:
            return f"date of birth: {dates[0][0]}", "block"
        if all(_YEAR.fullmatch(v) for v in values):
            return f"year of birth (HIPAA safe harbor allows years, except for ages over {AGE_MAX})", "warn"
        return "a date-of-birth column", "block"
    if dates:
        what = dates[0][0]
        if all(year <= SHIFTED_YEAR_MAX for _, year in dates):
            return f"{what}, shifted to {SHIFTED_YEAR_MAX} or earlier (BIDS de-identified dates)", "info"
        if kind == "acq":
            what = what.replace("a date", "an acquisition date", 1)
        return what, "block"
    if (kind is not None or _is_time_column(name)) and all(_TIME_OF_DAY.fullmatch(v) for v in values):
        return "a time of day (hh:mm:ss)", "warn"
    if kind == "acq":
        return "a column named as an acquisition date/time (values in no known date form)", "block"
    if kind == "date":
        return "a column named as a date (values in no known date form)", "warn"
    free = sorted(
        {
            f
            for v in values
            if not _NUMBER.fullmatch(v)
            for f in text_findings(v, long_numbers=False, keywords=False)
        }
    )
    if free:
        return f"free text holding {', '.join(free)}", "block"
    return None


def strip_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], policy: PrivacyPolicy
) -> tuple[list[str], list[list[str]]]:
    """The table without the columns the policy strips."""
    keep = [i for i, name in enumerate(header) if not policy.strips(name)]
    return [header[i] for i in keep], [[row[i] for i in keep if i < len(row)] for row in rows]


# --- defacing ----------------------------------------------------------------------------------


def defacing_finding(anat_files: int, destination_is_public_hub: bool, affirmed: bool) -> Finding | None:
    """The defacing decision: anatomical images to a public Hub repo block until affirmed defaced;
    elsewhere (a private repo, a local folder) they warn; an affirmation is recorded as info."""
    if anat_files <= 0:
        return None
    images = f"{anat_files} anatomical image{'s' if anat_files != 1 else ''} (anat)"
    if affirmed:
        return Finding(
            images, "defaced", "affirmed defaced (--affirm-defaced / privacy.defaced)", "info", "defacing"
        )
    if destination_is_public_hub:
        return Finding(
            images,
            "defaced",
            "a public Hub repo needs anatomical images affirmed defaced (--affirm-defaced or privacy: {defaced: true})",
            "block",
            "defacing",
        )
    return Finding(
        images, "defaced", "not affirmed defaced: faces may be reconstructed from them", "warn", "defacing"
    )


_LABEL_SUFFIXES = ("_mask", "_dseg", "_probseg")


def count_anat_images(nifti_files: Iterable[str]) -> int:
    """The images in an ``anat`` folder, less label images (masks, segmentations) that have no face."""
    count = 0
    for relpath in nifti_files:
        parts = Path(relpath).parts
        stem = parts[-1].split(".", 1)[0] if parts else ""
        if "anat" in parts[:-1] and not stem.endswith(_LABEL_SUFFIXES):
            count += 1
    return count


# --- the report --------------------------------------------------------------------------------


def _sort_key(f: Finding) -> tuple[Any, ...]:
    return (
        _OUTCOME_RANK.get(f.outcome, 3),
        _SEVERITY_RANK[f.severity],
        f.kind == "defacing",
        f.file,
        f.field,
        f.finding,
    )


def _cell(text: str) -> str:
    return shown(text).replace("|", "\\|")


@dataclass
class PrivacyReport:
    """The findings with the policy applied."""

    findings: list[Finding]
    policy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    unmatched_allow: tuple[str, ...] = ()  # allow rules that match no finding (a typo?)

    def _with(self, severity: str, outcome: str = "") -> list[Finding]:
        return [
            f for f in self.findings if f.outcome == outcome and (severity == "*" or f.severity == severity)
        ]

    @property
    def blocking(self) -> list[Finding]:
        return self._with("block")

    @property
    def warnings(self) -> list[Finding]:
        return self._with("warn")

    @property
    def infos(self) -> list[Finding]:
        return self._with("info")

    @property
    def allowed(self) -> list[Finding]:
        return self._with("*", "allowed")

    @property
    def stripped(self) -> list[Finding]:
        return self._with("*", "stripped")

    @property
    def ok(self) -> bool:
        return not self.blocking

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=_sort_key)

    def to_markdown(self, limit: int | None = None, findings: Sequence[Finding] | None = None) -> str:
        """A markdown table: file | field | finding | severity (at most ``limit`` rows)."""
        rows = list(findings) if findings is not None else self.sorted_findings()
        lines = ["| file | field | finding | severity |", "| --- | --- | --- | --- |"]
        shown_rows = rows if limit is None else rows[:limit]
        for f in shown_rows:
            lines.append(f"| {_cell(f.file)} | {_cell(f.field)} | {_cell(f.finding)} | {f.shown_severity} |")
        if len(rows) > len(shown_rows):
            lines.append(f"| … | | {len(rows) - len(shown_rows)} more (see the JSON report) | |")
        if len(rows) == 0:
            lines.append("| | | no findings | |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "findings": [f.to_json() for f in self.sorted_findings()],
            "blocking": len(self.blocking),
            "warnings": len(self.warnings),
            "info": len(self.infos),
            "allowed": len(self.allowed),
            "stripped": len(self.stripped),
            "unmatched_allow": list(self.unmatched_allow),
            "policy": self.policy.to_mapping(),
        }

    def notice_lines(self) -> list[str]:
        """What a publish that goes ahead must still say: warnings, and what was allowed or stripped."""
        said = [f for f in self.sorted_findings() if f.outcome or f.severity == "warn"]
        return [f"privacy: {f.file} {f.field}: {f.finding} ({f.shown_severity})" for f in said]

    def summary_line(self) -> str:
        if not self.findings:
            return "privacy: no findings"
        parts = [
            f"{len(self.blocking)} blocking",
            f"{len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}",
            f"{len(self.infos)} info",
        ]
        if self.allowed:
            parts.append(f"{len(self.allowed)} allowed")
        if self.stripped:
            parts.append(f"{len(self.stripped)} stripped")
        return "privacy: " + ", ".join(parts)

    def raise_if_blocked(self) -> None:
        if self.blocking:
            raise PrivacyBlocked(self)


def apply_policy(findings: Iterable[Finding], policy: PrivacyPolicy) -> PrivacyReport:
    """The report: a finding whose field the policy strips is "stripped" (sidecars and tables; a
    header field raises :class:`PrivacyConfigError`), one it allows is "allowed". Duplicates go."""
    out: list[Finding] = []
    seen: set[Finding] = set()
    used: set[str] = set()
    for f in findings:
        f = replace(f, outcome="")
        if f in seen:
            continue
        seen.add(f)
        if f.kind != "defacing" and policy.strips(f.field):
            if f.kind == "header":
                raise PrivacyConfigError(header_strip_message(f.field, f.file))
            f = replace(f, outcome="stripped")
        elif f.kind != "defacing" and policy.allows(f.field):
            used.update(rule for rule in policy.allow if _matches(f.field, [rule]))
            f = replace(f, outcome="allowed")
        out.append(f)
    unmatched = tuple(sorted(policy.allow - used))
    return PrivacyReport(out, policy=policy, unmatched_allow=unmatched)


class PrivacyBlocked(BidsError):
    """Publishing refused: findings that may identify participants are neither fixed, allowed nor stripped."""

    TABLE_LIMIT = 50

    def __init__(self, report: PrivacyReport) -> None:
        self.report = report
        super().__init__(self._message())

    def _message(self) -> str:
        report = self.report
        blocking = report.blocking
        n = len(blocking)
        lines = [
            f"Publishing refused: {n} finding{'s' if n != 1 else ''} may identify participants"
            " (DICOM PS3.15 basic profile, HIPAA safe harbor). The values are not shown.",
            "",
            report.to_markdown(limit=self.TABLE_LIMIT, findings=sorted(blocking, key=_sort_key)),
            "",
        ]
        strippable = sorted({f.field for f in blocking if f.kind in ("sidecar", "table")})
        headers = sorted({re.sub(r"\[\d+\]$", "", f.field) for f in blocking if f.kind == "header"})
        if strippable or headers:
            lines.append("Fix the files, or say in the spec what to do with each field:")
            lines.append("  privacy:")
            if strippable:
                names = ", ".join(_yaml_name(s) for s in strippable)
                lines.append(f"    strip: [{names}]  # removed from the published sidecars and tables")
            if headers:
                names = ", ".join(_yaml_name(h) for h in headers)
                lines.append(f"    allow: [{names}]  # published as they are, acknowledged")
            if strippable:
                lines.append(
                    "A sidecar key or a table column can be allowed (published as it is) instead of stripped."
                )
        if headers:
            lines.append(
                "Header fields cannot be stripped: the image bytes are published as they are; fix the file"
                " (e.g. with nibabel: img = nibabel.load(path); img.header['descrip'] = b'' (extensions: img.header.extensions.clear()); img.to_filename(fixed_path))"
                " or allow the field."
            )
        if any(f.kind == "defacing" for f in blocking):
            lines.append(
                "Anatomical images go to a public Hub repo: check that they are defaced (e.g. with pydeface),"
                " then pass --affirm-defaced or set `privacy: {defaced: true}` in the spec."
            )
        return "\n".join(lines).rstrip()


def _yaml_name(name: str) -> str:
    return (
        name
        if re.fullmatch(r"[A-Za-z_][\w\-]*", name)
        else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )


# --- the whole gate ----------------------------------------------------------------------------


def run_gate(
    root: Path,
    sidecar_sources: Mapping[str, Mapping[str, Any]],
    nifti_files: Sequence[str],
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
    policy: PrivacyPolicy,
    *,
    destination_is_public_hub: bool | None = None,
    affirmed_defaced: bool = False,
    anat_files: int | None = None,
    workers: int = 4,
) -> PrivacyReport:
    """Scan everything and apply the policy. ``sidecar_sources``: each JSON sidecar (relpath →
    content), scanned once; ``nifti_files``: image relpaths under ``root`` (headers read on a small
    thread pool); ``tables``: (relpath, header, rows). The defacing decision is made when
    ``destination_is_public_hub`` is given (``None``: not checked), affirmed by ``affirmed_defaced``
    or ``policy.defaced``, over ``anat_files`` images (default: :func:`count_anat_images`).
    Raises :class:`PrivacyConfigError` when the policy strips a header field; the caller raises
    :class:`PrivacyBlocked` (``report.raise_if_blocked()``)."""
    findings = scan_sidecar_sources(sidecar_sources)
    files = list(nifti_files)
    if files:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
            for result in pool.map(lambda rel: scan_nifti_header(Path(root) / rel, rel), files):
                findings.extend(result)
    for relpath, header, rows in tables:
        findings.extend(scan_table(relpath, header, rows))
    if destination_is_public_hub is not None:
        count = count_anat_images(files) if anat_files is None else anat_files
        decision = defacing_finding(count, destination_is_public_hub, affirmed_defaced or policy.defaced)
        if decision is not None:
            findings.append(decision)
    return apply_policy(findings, policy)
