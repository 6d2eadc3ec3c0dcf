"""The dataset card (README.md): Hub YAML metadata as push_to_hub writes it, and a body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import DatasetInfo, Features, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from ..dataset.tables import nifti_columns

PUBLISHED_MARK = "Published with bids_hub_dagster."

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
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=facts.dataset_size, num_examples=facts.num_rows))
    info = DatasetInfo(
        features=facts.features,
        splits=splits,
        download_size=facts.download_size,
        dataset_size=facts.dataset_size,
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": "train", "path": "data/train-*"}]}}
    ).to_dataset_card_data(data)
    return data


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
        f'ds = load_dataset("{facts.load_id}", split="train")',
    ]
    for column in columns:
        many = nifti[column]
        cast = "List(Nifti(decode=False))" if many else "Nifti(decode=False)"
        lines.append(f'ds = ds.cast_column("{column}", {cast})  # cells stay {{"bytes", "path"}}')
    if any(nifti[c] for c in columns):
        lines += [
            "# casting a List column writes a copy of the dataset into the cache once; streaming needs none:",
            f'# ds = load_dataset("{facts.load_id}", split="train", streaming=True).decode(False)',
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
        kind = type(feature).__name__
        if kind == "List":
            kind = f"List({type(feature.feature).__name__}())"
        elif kind == "Value":
            kind = f"Value({feature.dtype!r})"
        else:
            kind = f"{kind}()"
        files = facts.files_per_column.get(name)
        size = facts.bytes_per_column.get(name)
        desc = facts.phenotype_descriptions.get(name)
        label = f"`{name}`" + (f" — {desc}" if desc else "")
        lines.append(
            f"| {label} | {kind} | {'' if files is None else files} | {'' if size is None else size} |"
        )
    lines += ["", "## Load it", "", "```python", "from datasets import load_dataset", ""]
    lines += [f'ds = load_dataset("{facts.load_id}", split="train")', "row = ds[0]"]
    first_nifti = next(iter(nifti_columns(facts.features)), None)
    if first_nifti:
        lines.append(f'img = row["{first_nifti}"]  # nibabel image(s)')
    lines += ["```", ""]
    if facts.nifti2_files:
        lines += _nifti2_lines(facts)
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
