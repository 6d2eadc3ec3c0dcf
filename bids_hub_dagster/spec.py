"""The dataset spec: one YAML file that says which BIDS folder becomes which dataset."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from .bids.columns import ColumnRule
from .bids.errors import BidsError
from .bids.index import BidsIndex, Companions, build_index
from .bids.privacy import PrivacyPolicy
from .dataset.embed import STRATEGIES
from .dataset.parquet import COMPRESSIONS
from .dataset.shards import DEFAULT_ROW_GROUP_SIZE, ShardPlan, plan_for_index
from .errors import UserError
from .publish.destinations import DestinationError
from .publish.hub import HubOptions, is_hub_url, parse_hub_url

DEFAULT_MAX_SHARD_SIZE = 500 * 10**6  # the same default as datasets' push_to_hub
DEFAULT_SCHEDULE = "0 3 * * 1"  # weekly, Monday 03:00
DEFAULT_WATCH_INTERVAL = 600
# a run of more shards than this holds one run's worth of work for hours: split the backfill instead
MAX_SHARDS_PER_RUN = 1000
SHARD_STRATEGIES = tuple(STRATEGIES)
SPEC_KEYS = frozenset(
    {
        "name",
        "bids_root",
        "destination",
        "row",
        "columns",
        "phenotype",
        "max_shard_size",
        "num_shards",
        "shard_strategy",
        "compression",
        "row_group_size",
        "shards_per_run",
        "hub",
        "owners",
        "schedule",
        "watch_interval",
        "companions",
        "scans_columns",
        "rename",
        "preview",
        "privacy",
        "follow_external_symlinks",
    }
)
# names as Hub repos and OpenNeuro datasets are written (``ds004884-arc``, ``arc.v2``): letters,
# digits, ``_``, ``-`` and ``.``, not starting or ending with ``-`` or ``.``
_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_NAME_MAX = 96  # as on the Hub
_CRON_FIELD = r"[\w*/,?-]+"
_CRON = re.compile(rf"^\s*(@(hourly|daily|weekly|monthly)|{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}})\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class _SpecLoader(yaml.SafeLoader):
    """YAML without its number surprises for BIDS labels: ``01`` and ``010`` stay strings.

    Plain YAML 1.1 reads ``acq: 01`` as 1 and ``acq: 010`` as octal 8, so a filter on a
    zero-padded label would silently match nothing; here only plain decimals are ints.
    """


_INT = "tag:yaml.org,2002:int"
_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))


class SpecError(UserError):
    """The spec file is malformed or contradicts itself."""


@dataclass(frozen=True)
class PreviewOptions:
    """The ``preview`` config: thumbnails the Hub's viewer renders, beside the full data.

    ``enabled`` writes it; ``default`` makes it what ``load_dataset(repo)`` returns (the
    full data, with its NIfTI bytes, then needs ``name="full"``).
    """

    enabled: bool = True
    default: bool = False

    @classmethod
    def from_mapping(cls, raw: object, where: str = "") -> PreviewOptions:
        if raw is None:
            return cls()
        if isinstance(raw, bool):
            return cls(enabled=raw)
        if not isinstance(raw, Mapping):
            raise SpecError(
                f"preview must be a mapping {{enabled: true, default: false}}{where}, not {raw!r}."
            )
        unknown = sorted(set(raw) - {"enabled", "default"})
        if unknown:
            raise SpecError(f"preview: unknown key(s) {unknown}{where}; known: enabled, default.")
        bad = {k: v for k, v in raw.items() if not isinstance(v, bool)}
        if bad:
            raise SpecError(f"preview: values must be true or false, not {bad}{where}.")
        options = cls(**raw)
        if options.default and not options.enabled:
            raise SpecError(f"preview: default: true needs enabled: true{where}.")
        return options

    def to_mapping(self) -> dict[str, bool]:
        out = {} if self.enabled else {"enabled": False}
        return out | ({"default": True} if self.default else {})


def parse_size(value: int | str) -> int:
    """``"500MB"`` → 500_000_000, ``"1GiB"`` → 1_073_741_824, ``1000`` → 1000 (bytes).

    Units follow the Hub's convention: KB/MB/GB are powers of 10, KiB/MiB/GiB powers of 2.
    """
    if isinstance(value, bool):
        raise SpecError(f"size {value!r} is not a size.")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise SpecError(f"size {value!r} is not a size; write e.g. 500MB, 2GB or 1GiB.")
        n = round(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    if n <= 0:
        raise SpecError(f"size {value!r} must be positive.")
    return n


def format_size(n: int) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def exact_size(n: int) -> str | int:
    """``500_000_000`` → ``"500MB"``; sizes that no unit divides stay a byte count."""
    for unit in ("TB", "GB", "MB", "KB", "TiB", "GiB", "MiB", "KiB"):
        factor = _UNITS[unit.lower()]
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return n


def sanitize_name(text: str) -> str:
    """A valid dataset name from any text, e.g. a folder name: ``ds004884-ARC`` → ``ds004884-arc``.

    Hyphens and dots are kept (the key makes them ``_``); a name starting with a digit
    gets ``ds_`` in front, as before names could.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip("_.-").lower() or "dataset"
    name = name if name[0].isalpha() else f"ds_{name}"
    return name[:_NAME_MAX].rstrip(".-")


def name_key(name: str) -> str:
    """The Dagster-safe key of a dataset name: ``ds004884-arc`` → ``ds004884_arc``.

    Dagster names (groups, jobs, partitions, sensors) allow letters, digits and ``_`` only.
    """
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def check_unique_keys(specs: list[DatasetSpec], where: str = "") -> None:
    """Refuse two specs whose names give the same key (``arc-v2``, ``arc.v2``, ``arc_v2``, ``ARC_v2``).

    Keys that differ only by case are refused too: their storage folders would be one
    folder on a case-insensitive file system.
    """
    by_key: dict[str, list[str]] = {}
    for spec in specs:
        by_key.setdefault(spec.key.lower(), []).append(spec.name)
    clashes = [names for names in by_key.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(
            f"{' and '.join(repr(n) for n in names)} give the same key {name_key(names[0])!r}"
            for names in clashes
        )
        raise SpecError(
            f"dataset names must give distinct keys{where}: {shown} (the key names the assets, jobs and "
            "storage folder); rename one."
        )


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where its BIDS folder is, where it goes, and how rows and columns are cut."""

    name: str
    bids_root: Path
    destination: str | None = None
    row: str = "session"
    columns: tuple[ColumnRule, ...] | None = None  # None: inferred from the raw tree
    phenotype: tuple[str, ...] | None = None  # None: every participants.tsv column
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
    num_shards: int | None = None
    shard_strategy: str = "pandas"  # how rows are embedded: "pandas" (the workaround) or "arrow"
    compression: str = "auto"  # codec of NIfTI bytes columns; auto: zstd for .nii, none for .nii.gz
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE  # bytes of files embedded and written at a time
    shards_per_run: int = 1  # shard partitions one run builds (UI backfills: BackfillPolicy.multi_run)
    hub: HubOptions = field(default_factory=HubOptions)  # Hub destinations only: branch, privacy, commits
    owners: tuple[str, ...] = ()  # shown on the assets in the UI: emails or "team:name"
    schedule: str = DEFAULT_SCHEDULE  # cron of the scheduled refresh (stopped until turned on)
    watch_interval: int = DEFAULT_WATCH_INTERVAL  # seconds between two scans of the BIDS folder by the sensor
    companions: Companions = field(default_factory=Companions)  # companion column families (all on)
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, sidecar fields lifted to typed columns)
    scans_columns: tuple[str, ...] = ()  # scans.tsv columns published (none unless named)
    rename: tuple[tuple[str, str], ...] = ()  # sessions.tsv column -> published name, to resolve a clash
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    follow_external_symlinks: bool = False  # index files whose symlinks resolve outside the BIDS root
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)  # allow/strip findings, defacing affirmed
    source: Path | None = field(default=None, compare=False)  # the YAML file it came from

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name) or len(self.name) > _NAME_MAX:
            raise SpecError(
                f"name {self.name!r} must be letters, digits, '_', '-' and '.' (at most {_NAME_MAX}, "
                "not starting or ending with '-' or '.'), e.g. 'arc' or 'ds004884-arc'."
            )
        if self.row not in ("session", "subject"):
            raise SpecError(f"row must be 'session' or 'subject', not {self.row!r}.")
        if self.num_shards is not None and (
            isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int) or self.num_shards < 1
        ):
            raise SpecError(f"num_shards must be a positive integer, not {self.num_shards!r}.")
        if (
            isinstance(self.shards_per_run, bool)
            or not isinstance(self.shards_per_run, int)
            or not 1 <= self.shards_per_run <= MAX_SHARDS_PER_RUN
        ):
            raise SpecError(
                f"shards_per_run must be an integer from 1 to {MAX_SHARDS_PER_RUN}, not {self.shards_per_run!r}."
            )
        if self.shard_strategy not in SHARD_STRATEGIES:
            raise SpecError(
                f"shard_strategy must be one of {', '.join(SHARD_STRATEGIES)}, not {self.shard_strategy!r}."
            )
        if self.compression not in COMPRESSIONS:
            raise SpecError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, not {self.compression!r}."
            )
        if not all(isinstance(o, str) and o for o in self.owners):
            raise SpecError(
                f"owners must be a list of emails or team:name strings, not {list(self.owners)!r}."
            )
        if not _CRON.match(self.schedule):
            raise SpecError(
                f"schedule {self.schedule!r} is not a cron expression, e.g. '0 3 * * 1' (weekly)."
            )
        if (
            isinstance(self.watch_interval, bool)
            or not isinstance(self.watch_interval, int)
            or self.watch_interval < 30
        ):
            raise SpecError(
                f"watch_interval must be a number of seconds, at least 30, not {self.watch_interval!r}."
            )
        if self.destination and is_hub_url(self.destination):
            try:
                _, revision = parse_hub_url(self.destination)
            except DestinationError as exc:
                raise SpecError(str(exc)) from None
            if revision is not None and self.hub.revision not in (None, revision):
                raise SpecError(
                    f"destination names branch {revision!r} but hub.revision is {self.hub.revision!r}; give one."
                )

    @property
    def key(self) -> str:
        """The Dagster-safe form of ``name`` (``ds004884-arc`` → ``ds004884_arc``).

        It prefixes the asset keys and names the asset group, the jobs, the partitions and
        the storage folder; ``name`` itself is what people read (card, messages, descriptions).
        """
        return name_key(self.name)

    def shard_plan(self, index_table: pa.Table) -> ShardPlan:
        """The shards of an index table under this spec's ``max_shard_size`` or ``num_shards``."""
        return plan_for_index(index_table, self.max_shard_size, self.num_shards)

    def with_overrides(self, **overrides: Any) -> DatasetSpec:
        """A copy with the given keys replaced; ``None`` values are ignored."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "row_group_size" in changes:
            changes["row_group_size"] = parse_size(changes["row_group_size"])
        if "max_shard_size" in changes:
            changes["max_shard_size"] = parse_size(changes["max_shard_size"])
            changes.setdefault("num_shards", None)  # a size given now replaces a shard count
        if "destination" in changes:
            changes["destination"] = resolve_destination(str(changes["destination"]), Path.cwd())
        if isinstance(changes.get("hub"), Mapping):
            changes["hub"] = hub_options(self.hub.to_mapping() | dict(changes["hub"]))
        return dataclasses.replace(self, **changes)

    def to_mapping(self) -> dict[str, Any]:
        """The YAML mapping of this spec (paths absolute, so it can be saved anywhere)."""
        out: dict[str, Any] = {"name": self.name, "bids_root": str(self.bids_root)}
        if self.destination:
            out["destination"] = self.destination
        out["row"] = self.row
        if self.columns is not None:
            lifted = dict(self.fields)
            out["columns"] = {
                c.name: c.to_mapping() | ({"fields": list(lifted[c.name])} if c.name in lifted else {})
                for c in self.columns
            }
        if self.phenotype is not None:
            out["phenotype"] = list(self.phenotype)
        for key, default in (
            ("shard_strategy", "pandas"),
            ("compression", "auto"),
            ("row_group_size", DEFAULT_ROW_GROUP_SIZE),
            ("shards_per_run", 1),
        ):
            value = getattr(self, key)
            if value != default:
                out[key] = exact_size(value) if key == "row_group_size" else value
        if self.num_shards is not None:
            out["num_shards"] = self.num_shards
        else:
            out["max_shard_size"] = exact_size(self.max_shard_size)
        if self.hub.to_mapping():
            out["hub"] = self.hub.to_mapping()
        if self.owners:
            out["owners"] = list(self.owners)
        if self.schedule != DEFAULT_SCHEDULE:
            out["schedule"] = self.schedule
        if self.watch_interval != DEFAULT_WATCH_INTERVAL:
            out["watch_interval"] = self.watch_interval
        if self.companions.to_mapping():
            out["companions"] = self.companions.to_mapping()
        if self.scans_columns:
            out["scans_columns"] = list(self.scans_columns)
        if self.rename:
            out["rename"] = dict(self.rename)
        if self.preview.to_mapping():
            out["preview"] = self.preview.to_mapping()
        if self.follow_external_symlinks:
            out["follow_external_symlinks"] = True
        if self.privacy != PrivacyPolicy():
            out["privacy"] = {k: v for k, v in self.privacy.to_mapping().items() if v}
        return out

    def source_folders(self) -> tuple[Path, ...]:
        """The folders the dataset is read from: the BIDS root and every column's scope folder.

        A local destination may neither be, hold, nor lie inside any of them.
        """
        scopes = sorted({c.scope for c in self.columns or () if c.scope})
        return (self.bids_root, *(self.bids_root / s for s in scopes))

    def build_index(self, gate: bool = True, public_hub: bool | None = None) -> BidsIndex:
        """Index this spec's BIDS folder with its columns, row unit, phenotype and companions.

        ``gate`` runs the privacy gate (the report is ``privacy_report``); without it the
        policy's strips still apply, so the table is the same. ``public_hub``: the
        destination's visibility as read from it (default: as the spec says, see
        :attr:`publishes_publicly`).
        """
        return build_index(
            self.bids_root,
            list(self.columns) if self.columns is not None else None,
            row=self.row,
            phenotype=list(self.phenotype) if self.phenotype is not None else None,
            companions=self.companions,
            fields=dict(self.fields),
            scans_columns=self.scans_columns,
            rename=dict(self.rename),
            follow_external_symlinks=self.follow_external_symlinks,
            privacy=self.privacy,
            public_hub=self.publishes_publicly if public_hub is None else public_hub,
            gate=gate,
        )

    def index_table(self, index: BidsIndex | None = None, gate: bool = True) -> pa.Table:
        """The index table of this spec (of ``index``, else indexed now): every caller gets the same."""
        from .dataset.tables import index_to_table

        return index_to_table(
            index if index is not None else self.build_index(gate), preview=self.preview.enabled
        )

    @property
    def publishes_publicly(self) -> bool | None:
        """Whether the destination is a public Hub repo (None: no destination set).

        A Hub repo counts as public unless the spec says ``hub: {private: true}``: the gate
        cannot know how a repo made by hand is shared, so it asks for the stricter case.
        """
        if not self.destination:
            return None
        return is_hub_url(self.destination) and self.hub.private is not True

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_mapping(), sort_keys=False, default_flow_style=None)


def _owners(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise SpecError(f"owners must be a list of emails or team:name strings{where}.")
    return tuple(str(o) for o in raw)


def _privacy(raw: Any, where: str) -> PrivacyPolicy:
    try:
        return PrivacyPolicy.from_mapping(raw)
    except (BidsError, ValueError) as exc:
        raise SpecError(f"{exc}{where}") from None


def hub_options(raw: Any, where: str = "") -> HubOptions:
    """The spec's ``hub:`` mapping as HubOptions; a bad value is a SpecError."""
    if raw is not None and not isinstance(raw, Mapping):
        raise SpecError(f"hub must be a mapping of options{where}, e.g. {{private: true}}.")
    try:
        return HubOptions.from_mapping(raw)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{exc}{where}") from None


def resolve_destination(dest: str, base: Path) -> str:
    """Local destinations resolve against ``base``; ``hf://`` URLs stay as written."""
    if not dest.strip():  # "" would resolve to ``base`` itself: the folder the user is in
        raise DestinationError("the destination is empty: give a folder or hf://datasets/ORG/NAME.")
    if "://" in dest:
        return dest
    return str((base / Path(dest).expanduser()).resolve())


def spec_from_mapping(raw: Mapping[str, Any], base: Path, source: Path | None = None) -> DatasetSpec:
    """Build a spec from its YAML mapping; relative paths resolve against ``base``."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"a spec must be a YAML mapping, got {type(raw).__name__}.")
    where = f" in {source}" if source else ""
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown key(s) {sorted(unknown)}{where}; known keys: {sorted(SPEC_KEYS)}.")
    if "bids_root" not in raw:
        raise SpecError(f"bids_root is required{where}.")
    bids_root = (base / Path(str(raw["bids_root"])).expanduser()).resolve()
    columns = None
    fields: list[tuple[str, tuple[str, ...]]] = []
    if raw.get("columns") is not None:
        if not isinstance(raw["columns"], Mapping) or not raw["columns"]:
            raise SpecError(f"columns must be a non-empty mapping of name → filters{where}.")
        rules = []
        for key, value in raw["columns"].items():
            filters = dict(value or {}) if isinstance(value, Mapping) or value is None else value
            if isinstance(filters, dict) and "fields" in filters:
                lifted = filters.pop("fields")
                if not isinstance(lifted, list) or not all(isinstance(f, str) and f for f in lifted):
                    raise SpecError(
                        f"column {key!r}: fields must be a list of sidecar field names, e.g. "
                        f"[RepetitionTime, EchoTime]{where}."
                    )
                fields.append((str(key), tuple(lifted)))
            try:
                rules.append(ColumnRule.from_mapping(str(key), filters))
            except BidsError as exc:
                raise SpecError(f"{exc}{where}") from None
        columns = tuple(rules)
    try:
        companions = Companions.from_mapping(raw.get("companions"))
    except BidsError as exc:
        raise SpecError(f"{exc}{where}") from None
    scans_columns = raw.get("scans_columns") or []
    if not isinstance(scans_columns, list) or not all(isinstance(c, str) and c for c in scans_columns):
        raise SpecError(f"scans_columns must be a list of scans.tsv column names{where}.")
    rename = raw.get("rename") or {}
    if not isinstance(rename, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in rename.items()
    ):
        raise SpecError(f"rename must be a mapping of sessions.tsv column → new name{where}.")
    follow = raw.get("follow_external_symlinks", False)
    if not isinstance(follow, bool):
        raise SpecError(f"follow_external_symlinks must be true or false{where}, not {follow!r}.")
    phenotype = raw.get("phenotype")
    if phenotype is not None and not (
        isinstance(phenotype, list) and all(isinstance(p, str) for p in phenotype)
    ):
        raise SpecError(f"phenotype must be a list of participants.tsv column names{where}.")
    if raw.get("max_shard_size") is not None and raw.get("num_shards") is not None:
        raise SpecError(f"give max_shard_size or num_shards, not both{where}.")
    return DatasetSpec(
        name=str(raw.get("name") or sanitize_name(bids_root.name)),
        bids_root=bids_root,
        destination=resolve_destination(str(raw["destination"]), base) if raw.get("destination") else None,
        row=str(raw.get("row", "session")),
        columns=columns,
        phenotype=tuple(phenotype) if phenotype is not None else None,
        max_shard_size=(
            parse_size(raw["max_shard_size"])
            if raw.get("max_shard_size") is not None
            else DEFAULT_MAX_SHARD_SIZE
        ),
        num_shards=raw.get("num_shards"),
        shard_strategy=str(raw.get("shard_strategy", "pandas")),
        compression=str(raw.get("compression", "auto")),
        row_group_size=parse_size(raw.get("row_group_size") or DEFAULT_ROW_GROUP_SIZE),
        shards_per_run=raw.get("shards_per_run", 1),
        hub=hub_options(raw.get("hub"), where),
        owners=_owners(raw.get("owners"), where),
        schedule=str(raw.get("schedule") or DEFAULT_SCHEDULE),
        watch_interval=raw.get("watch_interval") or DEFAULT_WATCH_INTERVAL,
        companions=companions,
        fields=tuple(fields),
        scans_columns=tuple(scans_columns),
        rename=tuple((str(k), str(v)) for k, v in rename.items()),
        preview=PreviewOptions.from_mapping(raw.get("preview"), where),
        follow_external_symlinks=follow,
        privacy=_privacy(raw.get("privacy"), where),
        source=source,
    )


def load_spec(path: Path | str) -> DatasetSpec:
    """Read one spec YAML file."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {path} does not exist.") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8."
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML: {exc}") from exc
    except OSError as exc:  # a folder, no permission: name the file, never a traceback
        raise SpecError(f"spec file {path} cannot be read: {exc.strerror or exc}.") from None
    return spec_from_mapping(raw or {}, path.parent, source=path)


def load_specs(path: Path | str) -> list[DatasetSpec]:
    """A spec file, or every ``*.yaml``/``*.yml`` file of a folder (names must be unique)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise SpecError(f"{path} holds no *.yaml spec files.")
        specs = [load_spec(f) for f in files]
    else:
        specs = [load_spec(path)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"dataset names must be unique across specs; repeated: {dupes}.")
    check_unique_keys(specs, f" in {path}")
    return specs


def spec_for_folder(bids_root: Path | str, **overrides: Any) -> DatasetSpec:
    """The zero-config spec of a BIDS folder: name from the folder, columns inferred."""
    root = Path(bids_root).expanduser().resolve()
    return DatasetSpec(name=sanitize_name(root.name), bids_root=root).with_overrides(**overrides)
