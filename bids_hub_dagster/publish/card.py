"""The dataset card (README.md): Hub YAML metadata as push_to_hub writes it, and a body."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from ..dataset.tables import nifti_columns

PUBLISHED_MARK = "Published with bids_hub_dagster."
#: the config of the full data, unless the preview is the default: ``datasets`` allows one default,
#: and a config named "default" always is one, so the full data is then named FULL_CONFIG
DEFAULT_CONFIG = "default"
FULL_CONFIG = "full"
PREVIEW_CONFIG = "preview"
DATA_FILES = "data/train-*"
PREVIEW_FILES = "preview/train-*"
PREVIEW_PNG_NAME = "preview.png"
#: the first ``datasets`` release with the ``Nifti`` feature (huggingface/datasets#7815, in 4.4.0)
NIFTI_DATASETS_VERSION = "4.4.0"

#: License ids the Hub knows (its license list), as normalised BIDS ``License`` text maps to them.
HUB_LICENSES = frozenset(
    """
    apache-2.0 mit afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear cc cc0-1.0
    cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0
    cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0
    eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0
    odc-by odbl osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl
    """.split()
)
#: Other spellings seen in dataset_description.json files.
_ALIASES = {
    "cc0": "cc0-1.0",
    "cc0-10": "cc0-1.0",
    "cc-by": "cc-by-4.0",
    "cc-by-40": "cc-by-4.0",
    "odc-pddl": "pddl",
    "odc-pddl-1.0": "pddl",
    "odc-by-1.0": "odc-by",
    "odc-odbl": "odbl",
    "odbl-1.0": "odbl",
    "pd": "pddl",
    "public-domain": "pddl",
}


def hub_license(value: str | None) -> str | None:
    """Map a BIDS ``License`` string (``CC0``, ``CC-BY-4.0``, ``CC BY 4.0`` ...) to a Hub id.

    Unknown licenses map to ``other`` (the card then names the original text).
    """
    if not value or not str(value).strip():
        return None
    text = str(value).strip().lower()
    for long, short in (
        ("creative commons", "cc"),
        ("attribution", "by"),
        ("non-commercial", "nc"),
        ("noncommercial", "nc"),
        ("share-alike", "sa"),
        ("sharealike", "sa"),
        ("no derivatives", "nd"),
        ("noderivatives", "nd"),
        ("zero", "0"),
        ("international", ""),
        ("universal", ""),
        ("public domain dedication", ""),
        ("license", ""),
        ("licence", ""),
    ):
        text = text.replace(long, short)
    norm = "-".join(text.replace("_", " ").replace("-", " ").replace("(", " ").replace(")", " ").split())
    for candidate in (norm, norm.replace(".", "")):
        if candidate in HUB_LICENSES:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    return "other"


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by the caller."""

    name: str
    row: str  # "session" or "subject": what one row holds
    description: Mapping[str, Any]  # dataset_description.json
    features: Features
    num_rows: int
    num_subjects: int
    num_sessions: int
    files_per_column: Mapping[str, int]
    bytes_per_column: Mapping[str, int]
    num_shards: int
    download_size: int  # bytes of the parquet files
    dataset_size: int  # bytes of the data in memory (embedded files + ids)
    load_id: str  # what to pass to load_dataset: a repo id or a folder
    phenotype_descriptions: Mapping[str, str]
    #: column -> NIfTI-2 files in it: datasets' Nifti() cannot decode those, the card says how to read them
    nifti2_files: Mapping[str, int] = field(default_factory=dict)
    #: the publisher affirmed that every anatomical image is defaced (--affirm-defaced, privacy: {defaced: true})
    defaced_affirmed: bool = False
    #: the features of the ``preview`` config (preview/train-*), or None: no preview config
    preview_features: Features | None = None
    preview_num_bytes: int = 0  # bytes of the preview data in memory, as the parquet footers record them
    preview_download_size: int = 0  # bytes of the preview parquet files
    #: the preview config is the default one (``load_dataset(repo)`` and the viewer open it);
    #: the full data is then the config FULL_CONFIG
    preview_default: bool = False
    has_preview_png: bool = False  # preview.png is published beside the card, which shows it
    session_columns: Sequence[str] = ()  # row columns from sessions.tsv (the others are participants.tsv's)
    scans_columns: Sequence[str] = ()  # scans.tsv columns published as C_<column> beside each NIfTI column C

    @property
    def full_config(self) -> str:
        """The full data's config name: DEFAULT_CONFIG, or FULL_CONFIG when the preview is the default."""
        return FULL_CONFIG if self.preview_features is not None and self.preview_default else DEFAULT_CONFIG


def config_names(facts: CardFacts) -> dict[str, str]:
    """The card's configs: name -> data files pattern (the full data first)."""
    names = {facts.full_config: DATA_FILES}
    if facts.preview_features is not None:
        names[PREVIEW_CONFIG] = PREVIEW_FILES
    return names


def full_config_name(names: Iterable[str]) -> str | None:
    """The full data's config among a published card's config names; None when there is no preview
    config (the full data is then the only, default, config)."""
    names = set(names)
    if PREVIEW_CONFIG not in names:
        return None
    return FULL_CONFIG if FULL_CONFIG in names else DEFAULT_CONFIG


def _kind(feature: Any) -> str:
    """A feature as the card's tables show it: ``Value('int64')``, ``Nifti()``, ``List(Json())``."""
    kind = type(feature).__name__
    if kind == "List":
        return f"List({_kind(feature.feature)})"
    if kind == "Value":
        return f"Value({feature.dtype!r})"
    return f"{kind}()"


def card_data(facts: CardFacts) -> DatasetCardData:
    """The YAML header, with ``dataset_info`` and ``configs`` exactly as push_to_hub writes them."""
    license_text = facts.description.get("License")
    license_id = hub_license(license_text)
    extra: dict[str, Any] = {}
    if license_id == "other":
        extra["license_name"] = "see-dataset-description"
    data = DatasetCardData(
        license=license_id,
        pretty_name=str(facts.description.get("Name") or facts.name),
        tags=["bids", "neuroimaging", "nifti", "mri"],
        **extra,
    )
    infos = {
        facts.full_config: _info(facts.features, facts.num_rows, facts.dataset_size, facts.download_size)
    }
    configs: dict[str, dict[str, Any]] = {
        facts.full_config: {"data_files": [{"split": "train", "path": DATA_FILES}]}
    }
    if facts.preview_features is not None:
        infos[PREVIEW_CONFIG] = _info(
            facts.preview_features, facts.num_rows, facts.preview_num_bytes, facts.preview_download_size
        )
        configs[PREVIEW_CONFIG] = {"data_files": [{"split": "train", "path": PREVIEW_FILES}]}
        if facts.preview_default:
            # datasets (MetadataConfigs.get_default_config_name) and the Hub take the config marked
            # `default: true`; none may then be named "default", so the full data is FULL_CONFIG
            configs[PREVIEW_CONFIG]["default"] = True
    DatasetInfosDict(infos).to_dataset_card_data(data)
    MetadataConfigs(configs).to_dataset_card_data(data)
    return data


def _info(features: Features, num_rows: int, num_bytes: int, download_size: int) -> DatasetInfo:
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=num_bytes, num_examples=num_rows))
    return DatasetInfo(features=features, splits=splits, download_size=download_size, dataset_size=num_bytes)


def _authors(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(str(a) for a in value)
    return str(value)


def _nifti2_lines(facts: CardFacts) -> list[str]:
    """How to read NIfTI-2 cells: datasets decodes ``Nifti()`` cells as NIfTI-1 only."""
    columns = [c for c in facts.features if facts.nifti2_files.get(c)]
    nifti = nifti_columns(facts.features)
    counts = ", ".join(f"`{c}` ({facts.nifti2_files[c]})" for c in columns)
    lines = [
        "## NIfTI-2 images",
        "",
        f"Some images are NIfTI-2, files per column: {counts}. `datasets` decodes `Nifti()` cells with "
        "`nibabel.Nifti1Image.from_bytes`, which reads NIfTI-1 only, so decoding a row that holds one "
        "fails. Read these columns undecoded and let nibabel read each cell (NIfTI-1 or NIfTI-2, "
        "gzipped or not):",
        "",
        "```python",
        "import gzip",
        "",
        "import nibabel",
        "from datasets import List, Nifti, load_dataset",
        "",
        f"ds = {_load_call(facts)}",
    ]
    for column in columns:
        many = nifti[column]
        cast = "List(Nifti(decode=False))" if many else "Nifti(decode=False)"
        lines.append(f'ds = ds.cast_column("{column}", {cast})  # cells stay {{"bytes", "path"}}')
    if any(nifti[c] for c in columns):
        lines += [
            "# casting a List column writes a copy of the dataset into the cache once; streaming needs none:",
            f"# ds = {_load_call(facts, streaming=True)}.decode(False)",
            "# row = next(iter(ds))",
        ]
    lines += [
        "",
        "",
        "def to_image(cell):",
        '    """A nibabel image from an undecoded cell (None stays None)."""',
        "    if cell is None:",
        "        return None",
        '    data = cell["bytes"]',
        '    if data[:2] == b"\\x1f\\x8b":  # .nii.gz',
        "        data = gzip.decompress(data)",
        '    nifti2 = data[:4] in (b"\\x1c\\x02\\x00\\x00", b"\\x00\\x00\\x02\\x1c")  # sizeof_hdr 540',
        "    return (nibabel.Nifti2Image if nifti2 else nibabel.Nifti1Image).from_bytes(data)",
        "",
        "",
        "row = ds[0]",
    ]
    for column in columns:
        if nifti[column]:
            lines.append(f'{column} = [to_image(cell) for cell in row["{column}"] or []]')
        else:
            lines.append(f'{column} = to_image(row["{column}"])')
    return lines + ["```", ""]


def _load_call(facts: CardFacts, config: str | None = None, streaming: bool = False) -> str:
    """``load_dataset("ID", [config, ]split="train")`` for ``config`` (default: the full data).

    The full data's config is named only when it is not the default one, so a card without
    a preview shows the plain call it always did; the preview's always is.
    """
    config = config or facts.full_config
    named = config == PREVIEW_CONFIG or (facts.preview_features is not None and facts.preview_default)
    args = [f'"{facts.load_id}"'] + ([f'"{config}"'] if named else []) + ['split="train"']
    return f"load_dataset({', '.join(args + (['streaming=True'] if streaming else []))})"


def _config_lines(facts: CardFacts) -> list[str]:
    """The "Configs" section: the full data and the preview, one load line each; preview.png."""
    if facts.preview_features is None:
        return [f"![preview]({PREVIEW_PNG_NAME})", ""] if facts.has_preview_png else []
    full, mark = facts.full_config, " (default)"
    lines = [
        "## Configs",
        "",
        "| config | files | what it holds |",
        "|---|---|---|",
        f"| `{full}`{'' if facts.preview_default else mark} | `{DATA_FILES}` | the full data: every NIfTI image "
        "embedded in `Nifti()` cells, with all the columns above |",
        f"| `{PREVIEW_CONFIG}`{mark if facts.preview_default else ''} | `{PREVIEW_FILES}` | the same rows, in the "
        "same order, with small pictures instead of the images: no `Nifti` feature, so the Hub's dataset "
        "viewer renders it |",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f"full = {_load_call(facts, full)}",
        f"preview = {_load_call(facts, PREVIEW_CONFIG)}",
        "```",
        "",
        "Each picture of the preview is a thumbnail of one image: its three orthogonal mid-slices (sagittal, "
        "coronal, axial) side by side, the middle volume of a 4D image. Preview columns: "
        + _listed([f"`{name}` ({_kind(feature)})" for name, feature in facts.preview_features.items()])
        + ".",
        "",
        f"Decoding the full data's `Nifti()` cells into nibabel images needs `datasets >= "
        f"{NIFTI_DATASETS_VERSION}` (the first release with the `Nifti` feature) and `nibabel`; the preview "
        "needs no NIfTI support. This card was written with `datasets` " + datasets.__version__ + ".",
        "",
    ]
    if facts.has_preview_png:
        lines += [f"![preview]({PREVIEW_PNG_NAME})", ""]
    return lines


def _listed(items: Sequence[str], limit: int = 12) -> str:
    """``a, b, c`` (at most ``limit``, then how many more)."""
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


#: companion columns of a NIfTI column C, by suffix: what C_<suffix> holds
_FAMILIES = (
    ("sidecar", "`Json()`: the image's JSON sidecar, merged by BIDS inheritance (null without one)"),
    ("entities", "`Json()`: the BIDS entities of the file name (`sub`, `ses`, `run`, ...), as spelled there"),
    ("events", "`List(Json())`: the typed records of the image's `_events.tsv`, one per line"),
    ("bval", "`List(float64)`: the diffusion b-values of the `.bval` file (dwi images)"),
    ("bvec", "`List(List(float64))`: the diffusion gradient directions of the `.bvec` file, 3 × N (dwi)"),
)


def _family_lines(facts: CardFacts) -> list[str]:
    """The "Column families" section: the companion columns beside each NIfTI column, and the row
    columns (participants.tsv, sessions.tsv), as far as the features hold them."""
    nifti = nifti_columns(facts.features)
    owners: dict[str, str] = {}  # companion column -> its NIfTI column (the longest matching name)
    for name in facts.features:
        if name in nifti or name in ("subject_id", "session_id"):
            continue
        matches = [c for c in nifti if name.startswith(f"{c}_") and len(name) > len(c) + 1]
        if matches:
            owners[name] = max(matches, key=len)
    families: dict[str, list[str]] = {}
    for name, column in owners.items():
        suffix = name[len(column) + 1 :]
        if suffix in dict(_FAMILIES):
            key = suffix
        elif suffix in facts.scans_columns:
            key = "scans"
        else:
            key = "field"
        families.setdefault(key, []).append(name)
    rows = [
        n
        for n in facts.features
        if n not in nifti and n not in owners and n not in ("subject_id", "session_id")
    ]
    sessions = [n for n in rows if n in facts.session_columns]
    participants = [n for n in rows if n not in facts.session_columns]
    if not families and not rows:
        return []
    lines = ["## Column families", ""]
    if families:
        lines += [
            "Beside each NIfTI column `C` come the columns `C_...` below, where the BIDS dataset has them (for a "
            "`List(Nifti())` column, lists aligned element for element with its images):",
            "",
            "| family | holds | columns |",
            "|---|---|---|",
        ]
        described = [*_FAMILIES, ("field", ""), ("scans", "")]
        for suffix, text in described:
            if suffix not in families:
                continue
            if suffix == "field":
                label, text = (
                    "`C_<Field>`",
                    "a typed field of the merged sidecar, lifted by the spec's `fields`",
                )
            elif suffix == "scans":
                label, text = "`C_<column>`", "the image's value in a column of `scans.tsv`"
            else:
                label = f"`C_{suffix}`"
            lines.append(f"| {label} | {text} | {', '.join(f'`{n}`' for n in families[suffix])} |")
        lines.append("")
    if participants or sessions:
        lines.append("One value per row:")
        lines.append("")
        if participants:
            lines.append("- from `participants.tsv`: " + ", ".join(f"`{n}`" for n in participants))
        if sessions:
            lines.append(
                "- from `sessions.tsv` (the row's session): " + ", ".join(f"`{n}`" for n in sessions)
            )
        lines.append("")
    return lines


def is_tool_card(text: str) -> bool:
    """Whether a README.md is a card this tool rendered: the YAML header push_to_hub writes
    (``dataset_info`` and ``configs`` reading ``data/train-*``) and the mark on a line of its own.

    A README that only quotes the mark (a project's own notes about a publication) is not one.
    """
    if not text.startswith("---\n"):
        return False
    header, sep, body = text[4:].partition("\n---\n")
    return (
        bool(sep)
        and "\ndataset_info:" in f"\n{header}"
        and "\nconfigs:" in f"\n{header}"
        and "path: data/train-*" in header
        and PUBLISHED_MARK in (line.strip() for line in body.splitlines())
    )


def render_card(facts: CardFacts) -> DatasetCard:
    """The whole README.md: YAML header and a body a reader can act on."""
    d = facts.description
    title = str(d.get("Name") or facts.name)
    lines = [f"# {title}", ""]
    lines.append(
        "A [BIDS](https://bids.neuroimaging.io) dataset published as a Hugging Face dataset: one row per "
        + facts.row
        + ", every NIfTI image embedded as bytes in `Nifti()` / `List(Nifti())` columns."
    )
    lines.append("")
    facts_rows = [
        ("Rows", f"{facts.num_rows}"),
        ("Subjects", f"{facts.num_subjects}"),
        ("Sessions", f"{facts.num_sessions}" if facts.num_sessions else "none"),
        ("Shards", f"{facts.num_shards}"),
    ]
    if d.get("Authors"):
        facts_rows.append(("Authors", _authors(d["Authors"])))
    if d.get("DatasetDOI"):
        facts_rows.append(("DOI", str(d["DatasetDOI"])))
    if d.get("License"):
        facts_rows.append(("License", str(d["License"])))
    if d.get("BIDSVersion"):
        facts_rows.append(("BIDS version", str(d["BIDSVersion"])))
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts_rows] + [""]
    lines += ["## Columns", "", "| column | type | files | bytes |", "|---|---|---|---|"]
    for name, feature in facts.features.items():
        kind = _kind(feature)
        files = facts.files_per_column.get(name)
        size = facts.bytes_per_column.get(name)
        desc = facts.phenotype_descriptions.get(name)
        label = f"`{name}`" + (f" — {desc}" if desc else "")
        lines.append(
            f"| {label} | {kind} | {'' if files is None else files} | {'' if size is None else size} |"
        )
    lines += ["", "## Load it", "", "```python", "from datasets import load_dataset", ""]
    lines += [f"ds = {_load_call(facts)}", "row = ds[0]"]
    first_nifti = next(iter(nifti_columns(facts.features)), None)
    if first_nifti:
        lines.append(f'img = row["{first_nifti}"]  # nibabel image(s)')
    lines += ["```", ""]
    lines += _config_lines(facts)
    lines += _family_lines(facts)
    if facts.nifti2_files:
        lines += _nifti2_lines(facts)
    if facts.defaced_affirmed:
        lines += [
            "## Defacing",
            "",
            "The publisher affirmed that every anatomical image in this dataset is defaced "
            "(`bids-hub-dagster publish --affirm-defaced`, or `privacy: {defaced: true}` in the spec), as "
            "OpenNeuro asks of its uploaders.",
            "",
        ]
    if d.get("HowToAcknowledge") or d.get("ReferencesAndLinks") or d.get("Funding"):
        lines += ["## How to acknowledge", ""]
        if d.get("HowToAcknowledge"):
            lines += [str(d["HowToAcknowledge"]), ""]
        for ref in d.get("ReferencesAndLinks") or []:
            lines.append(f"- {ref}")
        if d.get("Funding"):
            lines += ["", "Funding: " + _authors(d["Funding"])]
        lines.append("")
    lines.append(PUBLISHED_MARK)
    return DatasetCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
