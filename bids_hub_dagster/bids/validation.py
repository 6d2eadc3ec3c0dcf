"""Is a name really BIDS? Filename validation against the BIDS schema's file rules (bidsschematools).

Two kinds of problem, told apart on purpose:

* a **label** that is not a BIDS label (``sub-03 copy``, ``acq-fast scan``, ``acq-fast-scan``,
  ``run-1a``): the file or folder was meant to be BIDS and would be misread, so it is an error
  (:func:`label_problem`, :func:`folder_label_problem`);
* a name that **no rule of the schema allows** (``notes_backup.nii``, ``sub-01_foo-bar_T1w.nii``,
  ``sub-01/anat/T1w.nii``, a folder named ``sub-02_T1w.nii``): the file is not part of the dataset,
  so it is skipped with a reason (:meth:`NameValidator.problem`).

Validation matches the scope-relative path against the schema's own regular expressions
(``bidsschematools.rules.regexify_filename_rules`` over ``rules.files.common`` + ``raw``, plus
``deriv`` for derivative data). It is cheap: the expressions are bucketed by the suffix they allow
and compiled on first use, and each answer is memoized per *shape* of the path — the path with
its subject and session labels replaced — so a 100k-file dataset is a few dozen to a few hundred
distinct shapes (one per datatype, suffix, task, run ...).

Derivative data is validated tolerantly: a path no schema rule matches is still accepted when
each of its key-value pairs is a known entity, its suffix alphanumeric, its extension one the
schema knows, and its sub-/ses- (when present) those of its folders — pipelines name outputs the
derivative rules do not list yet, and a file without ``sub-`` under ``sub-XX/`` takes the subject
from its folder there.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cache

import bidsschematools.rules
import bidsschematools.schema

from .entities import load_schema, split_extension
from .errors import shown

#: Memoized shapes kept per rule set before the memo is cleared (a bound, never reached in practice).
MEMO_LIMIT = 200_000
_SUFFIX_GROUP = re.compile(r"\(\?P<suffix>([^)]*)\)")
_SUFFIX = re.compile(r"[A-Za-z0-9]+\Z")


@cache
def _formats() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The schema's label and index value patterns, anchored (``[0-9a-zA-Z+]+``, ``[0-9]+``)."""
    formats = bidsschematools.schema.load_schema().objects.formats
    return re.compile(f"(?:{formats.label.pattern})\\Z"), re.compile(f"(?:{formats.index.pattern})\\Z")


@cache
def _known_extensions() -> frozenset[str]:
    """Extensions a derivative file may have when no rule names it (not ``""``, ``".*"``, ``"/"``)."""
    return frozenset(e for e in load_schema().extensions if len(e) > 1 and e != ".*")


@cache
def _value_patterns() -> dict[str, tuple[bool, re.Pattern[str]]]:
    """Entity key → (is an index, the pattern its value must match)."""
    label, index = _formats()
    return {
        e.key: (e.format == "index", index if e.format == "index" else label) for e in load_schema().entities
    }


def _value_problem(key: str, value: str) -> str | None:
    known = _value_patterns().get(key)
    if known is None:
        return None  # not an entity: the schema check skips the file instead
    is_index, pattern = known
    if pattern.match(value):
        return None
    if is_index:
        return f"the {key} index {value!r} is not a number (BIDS indexes are digits only)"
    return f"the {key} label {value!r} is not a BIDS label (letters and digits only, no spaces, - or _)"


def label_problem(filename: str) -> str | None:
    """Why a known entity's value in ``filename`` is not a BIDS label or index, or None.

    >>> label_problem("sub-01_acq-fast scan_T1w.nii")
    "the acq label 'fast scan' is not a BIDS label (letters and digits only, no spaces, - or _)"
    >>> label_problem("notes_backup.nii") is None
    True
    """
    stem, _ = split_extension(filename)
    patterns = _value_patterns()
    for part in stem.split("_"):
        key, dash, value = part.partition("-")
        if dash:
            known = patterns.get(key)
            if known is not None and not known[1].match(value):
                return _value_problem(key, value)
    return None


def folder_label_problem(name: str) -> str | None:
    """Why a ``sub-*`` or ``ses-*`` folder name does not hold a BIDS label, or None (``sub-03 copy``)."""
    key, _, value = name.partition("-")
    return _value_problem(key, value) if key in ("sub", "ses") else None


@dataclass
class _RuleSet:
    """The schema's filename expressions of one kind of data, bucketed by suffix, compiled lazily."""

    by_suffix: dict[str, list[str]]
    general: list[str]  # expressions without a suffix group (README, participants.tsv, phenotype/ ...)
    compiled: dict[str, list[re.Pattern[str]]]
    memo: dict[str, Verdict]

    def candidates(self, suffix: str) -> list[re.Pattern[str]]:
        found = self.compiled.get(suffix)
        if found is None:
            found = [re.compile(p) for p in self.by_suffix.get(suffix, ())] + [
                re.compile(p) for p in self.general
            ]
            self.compiled[suffix] = found
        return found


@cache
def _rule_set(derivative: bool) -> _RuleSet:
    schema = bidsschematools.schema.load_schema()
    groups = [schema.rules.files.common, schema.rules.files.raw]
    if derivative:
        groups.append(schema.rules.files.deriv)
    by_suffix: dict[str, list[str]] = defaultdict(list)
    general: list[str] = []
    for group in groups:
        for rule in bidsschematools.rules.regexify_filename_rules(group, schema, level=2):
            regex = rule["regex"]
            match = _SUFFIX_GROUP.search(regex)
            if match is None:
                general.append(regex)
            else:
                for suffix in match.group(1).split("|"):
                    by_suffix[suffix].append(regex)
    return _RuleSet(dict(by_suffix), general, {}, {})


def _suffix_of(filename: str) -> str:
    stem, _ = split_extension(filename)
    return stem.rsplit("_", 1)[-1]


def _name_token(
    name: str, pos: int, key: str, folder_label: str | None, same: str, other: str
) -> tuple[str, int]:
    """Replace the ``key-<label>_`` token at ``pos`` of ``name`` by ``same`` when its label is the folder's.

    A label that differs from the folder's is kept (it may be a bad label, reported as such), unless
    it is the placeholder itself, which becomes ``other``: a mismatch stays a mismatch.
    """
    if not name.startswith(key, pos):
        return name, pos
    end = name.find("_", pos)
    if end < 0:
        return name, pos
    value = name[pos + 4 : end]
    if folder_label is not None and value == folder_label:
        value = same
    elif value == same:
        value = other
    token = f"{key}{value}"
    return name[:pos] + token + name[end:], pos + len(token) + 1


def shape(path: str) -> str:
    """``path`` with its subject and session labels replaced: the memo key of :class:`NameValidator`.

    No schema rule tells ``sub-01/anat/sub-01_T1w.nii`` from ``sub-02/anat/sub-02_T1w.nii``: the
    folders' labels become ``S``/``T``, and so do the name's leading ``sub-``/``ses-`` labels when
    they equal their folder's (one that differs stays as written, so a mismatch stays a mismatch
    and a bad label stays bad). The folders' labels are checked by :func:`.layout.walk` before.
    """
    if not path.startswith("sub-"):
        return path
    slash = path.find("/")
    if slash < 0:
        return path
    sub = path[4:slash]
    start = slash + 1
    ses = None
    if path.startswith("ses-", start):
        end = path.find("/", start)
        if end >= 0:
            ses = path[start + 4 : end]
            start = end + 1
    cut = max(path.rfind("/", start, len(path) - 1), start - 1)  # a pseudo-file folder ends with "/"
    head = ("sub-S/" if ses is None else "sub-S/ses-T/") + path[start : cut + 1]
    name = path[cut + 1 :]
    prefix = f"sub-{sub}_" if ses is None else f"sub-{sub}_ses-{ses}_"
    if name.startswith(prefix):  # the usual name: one test, one concatenation
        return head + ("sub-S_" if ses is None else "sub-S_ses-T_") + name[len(prefix) :]
    name, pos = _name_token(name, 0, "sub-", sub, "S", "Q")
    name, _ = _name_token(name, pos, "ses-", ses, "T", "U")
    return head + name


@functools.lru_cache(maxsize=4096)
def _folder_shape(folder: str) -> tuple[str, str, str] | None:
    """What :func:`shape` makes of the files directly in ``folder`` (a scope-relative folder, no
    trailing ``/``): its shaped folder part with the ``/`` (``sub-S/ses-T/anat/``), the name prefix it
    replaces (``sub-01_ses-1_``) and the replacement (``sub-S_ses-T_``); None when it keeps paths."""
    if not folder.startswith("sub-"):
        return None
    slash = folder.find("/")
    sub = folder[4:] if slash < 0 else folder[4:slash]
    if slash < 0:
        return "sub-S/", f"sub-{sub}_", "sub-S_"
    rest = folder[slash + 1 :]  # what shape() finds after the sub-* folder, up to the file's "/"
    if rest.startswith("ses-"):
        end = rest.find("/")
        ses = rest[4:] if end < 0 else rest[4:end]
        below = "" if end < 0 else rest[end + 1 :] + "/"
        return "sub-S/ses-T/" + below, f"sub-{sub}_ses-{ses}_", "sub-S_ses-T_"
    return "sub-S/" + rest + "/", f"sub-{sub}_", "sub-S_"


def shape_in(folder: str, name: str) -> str:
    """``shape(folder + "/" + name)`` for a file ``name`` (no ``/``) in ``folder`` ("" at the top), with
    the folder's part worked out once for all its files."""
    parts = _folder_shape(folder) if folder else None
    if parts is not None and name.startswith(parts[1]):  # the usual name
        return parts[0] + parts[2] + name[len(parts[1]) :]
    return shape(f"{folder}/{name}" if folder else name)


@dataclass(frozen=True)
class Verdict:
    """What :meth:`NameValidator.check` says of a file name."""

    label_problem: str | None  # a bad label: an error
    valid: bool  # a name the schema allows where it sits (or, in derivatives, tolerates)


class NameValidator:
    """Validates scope-relative paths (``sub-01/anat/sub-01_T1w.nii.gz``; a folder ends with ``/``).

    ``derivative`` adds the schema's derivative rules and the tolerant fallback described in the
    module docstring. Answers are memoized per :func:`shape` of the path.
    """

    def __init__(self, derivative: bool = False) -> None:
        self.derivative = derivative
        self._rules = _rule_set(derivative)
        self._memo: dict[str, Verdict] = self._rules.memo  # shared by validators of one rule set

    def check(self, path: str) -> Verdict:
        """The label problem and the validity of ``path``, memoized per shape."""
        return self._check_key(shape(path))

    def check_in(self, folder: str, name: str) -> Verdict:
        """:meth:`check` of the file ``name`` in ``folder`` (``folder/name``; "" at the top)."""
        return self._check_key(shape_in(folder, name))

    def _check_key(self, key: str) -> Verdict:
        verdict = self._memo.get(key)
        if verdict is None:
            if len(self._memo) >= MEMO_LIMIT:
                self._memo.clear()
            is_folder = key.endswith("/")
            name = key[:-1].rsplit("/", 1)[-1] if is_folder else key.rsplit("/", 1)[-1]
            valid = any(p.match(key) for p in self._rules.candidates(_suffix_of(name)))
            if not valid and self.derivative and not is_folder:
                valid = _tolerated(key)
            verdict = Verdict(None if is_folder else label_problem(name), valid)
            self._memo[key] = verdict
        return verdict

    def is_valid(self, path: str) -> bool:
        return self.check(path).valid

    def problem(self, path: str) -> str | None:
        """None if ``path`` is a valid BIDS name where it sits, else why not (for the skip warning)."""
        return None if self.check(path).valid else _reason(path)


def _tolerated(key: str) -> bool:
    """The derivative fallback on a :func:`shape` key: known entities, alphanumeric suffix, known extension.

    Its ``sub-``/``ses-`` (optional) must be those of its folders, which it must sit in.
    """
    parts = key.split("/")
    if len(parts) > 1 and parts[0] != "sub-S":
        return False  # below a scope, files sit in sub-* folders (walk() sees to it)
    stem, ext = split_extension(parts[-1])
    if ext not in _known_extensions():
        return False
    *pairs, suffix = stem.split("_")
    if not _SUFFIX.match(suffix):
        return False
    known = load_schema().by_key
    folders = {"sub": "S" if parts[0] == "sub-S" else None, "ses": "T" if "ses-T" in parts[1:2] else None}
    for pair in pairs:
        k, dash, value = pair.partition("-")
        if not dash or k not in known or (k in folders and value != folders[k]):
            return False
    return True


def _reason(path: str) -> str:
    """A short reason why no schema rule allows ``path``, for the warning that lists it."""
    if path.endswith("/"):
        return "a folder where BIDS expects a file (not a session or datatype folder)"
    parts = path.split("/")
    name = parts[-1]
    stem, ext = split_extension(name)
    tokens = stem.split("_")
    loose = [t for t in tokens[:-1] if "-" not in t]
    if loose or not tokens[-1] or "-" in tokens[-1]:
        return "not a BIDS name (entity-label pairs, then a suffix: sub-01_T1w.nii.gz)"
    known = load_schema().by_key
    unknown = [t.partition("-")[0] for t in tokens[:-1] if t.partition("-")[0] not in known]
    if unknown:
        return f"{unknown[0]!r} is not a BIDS entity"
    entities = dict(t.partition("-")[::2] for t in tokens[:-1])
    if len(parts) > 1 and parts[0].startswith("sub-") and "sub" not in entities:
        return f"its name lacks the {parts[0]} of its folder"
    if len(parts) > 2 and parts[1].startswith("ses-") and "ses" not in entities:
        return f"its name lacks the {parts[1]} of its folder"
    if ext not in _known_extensions():
        return f"{ext!r} is not a BIDS extension" if ext else "a name without an extension"
    where = f" in the {parts[-2]!r} folder" if len(parts) > 1 else " at the top level"
    return f"no BIDS rule allows suffix {tokens[-1]!r} with these entities and extension{where}"


def list_paths(paths: list[str], limit: int = 20) -> str:
    """``a, b, c …and N more``: up to ``limit`` paths for one line of a message."""
    text = ", ".join(shown(p) for p in paths[:limit])
    return text + (f" …and {len(paths) - limit} more" if len(paths) > limit else "")
