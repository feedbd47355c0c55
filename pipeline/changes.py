"""Two snapshots → ``profile_changes``: what changed for each creator, and why it stands out.

Rules:

1. The baseline of a snapshot ``dt`` is the latest earlier complete snapshot, or the one asked
   for; every row carries ``baseline_dt`` and ``days``, and every per-day figure divides by
   ``days``, so a 7-day figure can never silently use a 15-day-old baseline.
2. One row per user with a profile at either date (a full join on ``user_id``): ``appeared``
   (only at ``dt``) and ``disappeared`` (only at the baseline; then ``failure_code`` and
   ``failure_message`` come from ``dt``'s failures.csv, so a deleted account (404, or code 0
   with no profile) reads differently from a transient failure (-1, 301, 500)).
3. ``likes_saves`` is ``liked + collected``; ``*_pct`` is null when the baseline is 0.
   ``approximate`` is set when a count of either date's ``profile_interactions`` came as a
   display string (``1.2万``): a rounded count gives a rounded delta.
4. Identity fields (``schema.IDENTITY_FIELDS``) that differ are listed in ``changed_fields``
   with the old value in ``<field>_before`` (null when unchanged); null on either side is not a
   change (a field the API left out is not a rename).
5. Flags (``schema.FLAGS``, thresholds beside them) each come with a reason text. The spike
   flag compares a creator with its own earlier daily changes (the ``fans_per_day`` of the
   earlier ``profile_changes`` partitions, the last ``HISTORY_SNAPSHOTS``), robustly: median and
   median absolute deviation, so one earlier spike does not hide the next.
6. Everything is read lazily from the files a manifest (or, for the snapshot being finished,
   the state) lists, never by globbing a partition: a crash orphan may sit there.  Memory
   depends on the creators of two snapshots, not on how many snapshots exist.  A remote OUT is
   read through its store's own filesystem (pyarrow over fsspec): the same client, endpoint
   and credentials as the writes.
7. The result is sorted by ``user_id`` and depends only on the data: rerunning gives the same
   rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from pipeline import sink
from pipeline.errors import MissingFileError, StorageError, UsageError
from pipeline.records import Part
from pipeline.schema import (
    CHANGE_COUNTERS,
    DEFAULT_TIERS,
    FOLLOWS_SPIKE_MIN,
    IDENTITY_SOURCES,
    JUMP_MIN_FANS,
    JUMP_SHARE,
    NO_ENGAGEMENT_MIN_FANS,
    PROFILE_CHANGES,
    PURGE_MIN_FANS,
    PURGE_SHARE,
    ROUND_STEP,
    SPIKE_MIN_FANS,
    SPIKE_MIN_HISTORY,
    SPIKE_ROBUST_Z,
)
from pipeline.state import State
from pipeline.storage import Store

HISTORY_SNAPSHOTS: Final = 30
_MAD_TO_SIGMA: Final = 1.4826
_COUNTS: Final = ("fans", "follows", "liked", "collected", "notes_posted")
_IDENTITY: Final = IDENTITY_SOURCES
Tiers = Sequence[tuple[int, str, str]]


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    """The files of one snapshot that ``changes`` reads (paths relative to OUT or absolute;
    with a remote ``store``, keys in it)."""

    snapshot_date: dt.date
    profiles: tuple[Path, ...]
    tags: tuple[Path, ...]
    interactions: tuple[Path, ...]
    failures: Path | None = None
    store: Store | None = None  # a remote OUT; None: the paths are on this machine


def compute(
    later: SnapshotFiles,
    baseline: SnapshotFiles | None,
    history: Sequence[Path] = (),
    *,
    tiers: Tiers = DEFAULT_TIERS,
) -> pl.DataFrame:
    """The ``profile_changes`` rows of ``later`` against ``baseline`` (empty without one);
    ``history`` is read from ``later``'s store."""
    if baseline is None:
        return pl.DataFrame(schema=PROFILE_CHANGES.schema)
    if baseline.snapshot_date >= later.snapshot_date:
        raise ValueError(
            f"the baseline {baseline.snapshot_date} is not before {later.snapshot_date}"
        )
    days = (later.snapshot_date - baseline.snapshot_date).days
    try:
        now = _side(later).rename(lambda c: c if c == "user_id" else f"{c}__now")
        then = _side(baseline).rename(lambda c: c if c == "user_id" else f"{c}__then")
        joined = now.join(then, on="user_id", how="full", coalesce=True)
        joined = joined.join(_failures(later), on="user_id", how="left")
        joined = joined.join(_history(history, later.store), on="user_id", how="left")
        frame = _columns(joined, baseline.snapshot_date, days, tiers).collect()
    except (OSError, pl.exceptions.PolarsError, pa.ArrowException, *_errors(later)) as exc:
        raise StorageError(
            f"cannot read the snapshots {baseline.snapshot_date} and {later.snapshot_date} to "
            f"compare them ({exc}); check the files the manifests list"
        ) from exc
    return frame.select(PROFILE_CHANGES.column_names).cast(PROFILE_CHANGES.schema).sort("user_id")


def _errors(files: SnapshotFiles) -> tuple[type[BaseException], ...]:
    return files.store.errors if files.store is not None else ()


def _scan(paths: Sequence[Path], columns: Sequence[str], store: Store | None) -> pl.LazyFrame:
    if not paths:
        raise ValueError("a snapshot has at least one file per table")
    if store is None or store.is_local:
        return pl.scan_parquet(list(paths)).select(columns)
    dataset = pads.dataset(
        [store.arrow_path(p.as_posix()) for p in paths],
        filesystem=store.arrow_filesystem(),
        format="parquet",
    )
    return pl.scan_pyarrow_dataset(dataset).select(columns)


def _side(files: SnapshotFiles) -> pl.LazyFrame:
    """One snapshot's values per user: counters, identity, tags, and whether counts were rounded."""
    profiles = _scan(
        files.profiles,
        ["user_id", *_COUNTS, *(c for c in _IDENTITY.values() if c != "tags")],
        files.store,
    ).with_columns(
        likes_saves=pl.col("liked") + pl.col("collected"),
        verified=pl.col("red_official_verified"),
        present=pl.lit(True),
    )
    tags = (
        _scan(files.tags, ["user_id", "position", "name"], files.store)
        .filter(pl.col("name").is_not_null())
        .sort("user_id", "position")
        .group_by("user_id", maintain_order=True)
        .agg(tags=pl.col("name"))
    )
    rounded = (
        _scan(files.interactions, ["user_id", "count_text"], files.store)
        .group_by("user_id")
        .agg(rounded=(~pl.col("count_text").str.contains(r"^-?[0-9]+$")).any())
    )
    return (
        profiles.join(tags, on="user_id", how="left")
        .join(rounded, on="user_id", how="left")
        .with_columns(pl.col("tags").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .select("user_id", "present", "rounded", *CHANGE_COUNTERS, *_IDENTITY)
    )


def _failures(files: SnapshotFiles) -> pl.LazyFrame:
    empty = pl.LazyFrame(
        schema={"user_id": pl.String, "failure_code": pl.Int64, "failure_message": pl.String}
    )
    types = {"user_id": pl.String, "code": pl.Int64, "message": pl.String}
    if files.failures is None:
        return empty
    if files.store is not None and not files.store.is_local:
        try:
            data = files.store.read_bytes(files.failures.as_posix())
        except MissingFileError:
            return empty
        failures = pl.read_csv(io.BytesIO(data), schema_overrides=types).lazy()
    elif not files.failures.exists():
        return empty
    else:
        failures = pl.scan_csv(files.failures, schema_overrides=types)
    return failures.select(
        "user_id", failure_code=pl.col("code"), failure_message=pl.col("message")
    )


def _history(paths: Sequence[Path], store: Store | None) -> pl.LazyFrame:
    """Each creator's earlier daily follower changes: median, MAD and how many there are."""
    schema = {
        "user_id": pl.String,
        "hist_median": pl.Float64,
        "hist_mad": pl.Float64,
        "hist_n": pl.UInt32,
    }
    if not paths:
        return pl.LazyFrame(schema=schema)
    per_day = _scan(paths, ["user_id", "fans_per_day"], store).filter(
        pl.col("fans_per_day").is_not_null()
    )
    return (
        per_day.group_by("user_id")
        .agg(
            hist_median=pl.col("fans_per_day").median(),
            hist_mad=(pl.col("fans_per_day") - pl.col("fans_per_day").median()).abs().median(),
            hist_n=pl.len(),
        )
        .cast(schema)  # type: ignore[arg-type]
    )


def _now(name: str) -> pl.Expr:
    return pl.col(f"{name}__now")


def _then(name: str) -> pl.Expr:
    return pl.col(f"{name}__then")


def _columns(joined: pl.LazyFrame, baseline_dt: dt.date, days: int, tiers: Tiers) -> pl.LazyFrame:
    present_now = _now("present").fill_null(False)
    present_then = _then("present").fill_null(False)
    counters: list[pl.Expr] = []
    for name in CHANGE_COUNTERS:
        delta = _now(name) - _then(name)
        counters += [
            _now(name).alias(name),
            _then(name).alias(f"{name}_before"),
            delta.alias(f"{name}_delta"),
            (delta / days).alias(f"{name}_per_day"),
            pl.when(_then(name) != 0).then(delta / _then(name) * 100).alias(f"{name}_pct"),
        ]
    identity = [
        pl.when(_changed(field)).then(_then(field)).alias(f"{field}_before") for field in _IDENTITY
    ]
    changed = pl.concat_list(
        [pl.when(_changed(field)).then(pl.lit(field)) for field in _IDENTITY]
    ).list.drop_nulls()
    framed = joined.with_columns(
        *counters,
        *identity,
        baseline_dt=pl.lit(baseline_dt),
        days=pl.lit(days),
        appeared=present_now & ~present_then,
        disappeared=present_then & ~present_now,
        nickname=pl.coalesce(_now("nickname"), _then("nickname")),
        approximate=_now("rounded").fill_null(False) | _then("rounded").fill_null(False),
        changed_fields=changed,
    ).with_columns(
        pl.when(pl.col("disappeared")).then(pl.col("failure_code")).alias("failure_code"),
        pl.when(pl.col("disappeared")).then(pl.col("failure_message")).alias("failure_message"),
        *_tier(tiers),
        likes_saves_per_follower=pl.when(pl.col("fans") > 0).then(
            pl.col("likes_saves") / pl.col("fans")
        ),
        likes_saves_per_note=pl.when(pl.col("notes_posted") > 0).then(
            pl.col("likes_saves") / pl.col("notes_posted")
        ),
    )
    return _flags(framed)


def _changed(field: str) -> pl.Expr:
    now, then = _now(field), _then(field)
    return now.is_not_null() & then.is_not_null() & (now != then)


def _tier(tiers: Tiers) -> list[pl.Expr]:
    ordered = sorted(tiers)
    tier: pl.Expr = pl.lit(None, dtype=pl.String)
    label: pl.Expr = pl.lit(None, dtype=pl.String)
    for bound, name, chinese in ordered:  # the last bound that the fans reach wins
        reached = pl.col("fans") >= bound
        tier = pl.when(reached).then(pl.lit(name)).otherwise(tier)
        label = pl.when(reached).then(pl.lit(chinese)).otherwise(label)
    return [tier.alias("tier"), label.alias("tier_label")]


def _flags(frame: pl.LazyFrame) -> pl.LazyFrame:
    fans_delta, fans_before = pl.col("fans_delta"), pl.col("fans_before")
    scale = pl.max_horizontal(pl.col("hist_mad") * _MAD_TO_SIGMA, pl.lit(1.0))
    robust_z = (pl.col("fans_per_day") - pl.col("hist_median")) / scale
    rules: list[tuple[str, pl.Expr, pl.Expr]] = [
        (
            "spike_vs_history",
            (pl.col("hist_n") >= SPIKE_MIN_HISTORY)
            & (robust_z >= SPIKE_ROBUST_Z)
            & (fans_delta >= SPIKE_MIN_FANS),
            pl.format(
                "fans {} in {}, {}× the creator's usual spread above its median daily "
                "change ({}/day over {} earlier changes)",
                _signed(fans_delta),
                _span(),
                robust_z.round(1),
                pl.col("hist_median").round(1),
                pl.col("hist_n"),
            ),
        ),
        (
            "fans_jump",
            (fans_delta >= JUMP_MIN_FANS) & (pl.col("fans_per_day") > fans_before * JUMP_SHARE),
            pl.format(
                "fans {} in {}, from {} ({}%)",
                _signed(fans_delta),
                _span(),
                fans_before,
                pl.col("fans_pct").round(1),
            ),
        ),
        (
            "round_jump",
            (fans_delta.abs() >= ROUND_STEP) & (fans_delta % ROUND_STEP == 0),
            pl.format("fans {} exactly: a round number", _signed(fans_delta)),
        ),
        (
            "purge",
            (fans_delta <= -PURGE_MIN_FANS) & (fans_delta <= -(fans_before * PURGE_SHARE)),
            pl.format("fans {} ({}%)", _signed(fans_delta), pl.col("fans_pct").round(1)),
        ),
        (
            "follows_spike",
            pl.col("follows_delta") >= FOLLOWS_SPIKE_MIN,
            pl.format("follows {} in {}", _signed(pl.col("follows_delta")), _span()),
        ),
        (
            "notes_deleted",
            pl.col("notes_posted_delta") < 0,
            pl.format(
                "notes_posted {}: notes deleted or hidden", _signed(pl.col("notes_posted_delta"))
            ),
        ),
        (
            "fans_without_engagement",
            (fans_delta >= NO_ENGAGEMENT_MIN_FANS) & (pl.col("likes_saves_delta") <= 0),
            pl.format(
                "fans {} while likes + saves changed by {}",
                _signed(fans_delta),
                _signed(pl.col("likes_saves_delta")),
            ),
        ),
    ]
    raised = [rule.fill_null(False) for _, rule, _ in rules]
    return frame.with_columns(
        flags=pl.concat_list(
            [pl.when(r).then(pl.lit(code)) for r, (code, _, _) in zip(raised, rules, strict=True)]
        ).list.drop_nulls(),
        flag_reasons=pl.concat_list(
            [pl.when(r).then(reason) for r, (_, _, reason) in zip(raised, rules, strict=True)]
        ).list.drop_nulls(),
    )


def _span() -> pl.Expr:
    days = pl.col("days")
    return pl.when(days == 1).then(pl.lit("1 day")).otherwise(pl.format("{} days", days))


def _signed(value: pl.Expr) -> pl.Expr:
    return pl.when(value >= 0).then(pl.format("+{}", value)).otherwise(value.cast(pl.String))


# ------------------------------------------------------------------------ on disk


def write(
    state: State,
    out: Store | Path,
    snapshot_date: dt.date,
    *,
    baseline_date: dt.date | None = None,
    tiers: Tiers = DEFAULT_TIERS,
) -> Part:
    """Compute ``snapshot_date``'s changes and swap them in as its one ``profile_changes`` part.

    The snapshot's other parts come from ``state`` (its manifest may not be written yet); the
    baseline (default: the latest earlier complete snapshot) and the history come from their
    manifests.  The new file goes in before the old one leaves, with the swap recorded in one
    state transaction, so a kill at any point leaves one or the other (and an orphan the next
    run removes).
    """
    store = sink.store_of(out)
    parts = {t: [p.path for p in state.parts(t)] for t in _READ}
    frame = compute_for(store, snapshot_date, parts, baseline_date=baseline_date, tiers=tiers)
    old = state.parts(PROFILE_CHANGES.name)
    part = sink.write_part(store, PROFILE_CHANGES, snapshot_date, frame)
    state.replace_parts(old, [part])
    sink.delete_parts(store, old)
    return part


def compute_for(
    out: Store | Path,
    snapshot_date: dt.date,
    parts: Mapping[str, Sequence[str]],
    *,
    baseline_date: dt.date | None = None,
    tiers: Tiers = DEFAULT_TIERS,
) -> pl.DataFrame:
    """The changes of the snapshot made of ``parts`` (paths relative to OUT, by table) against
    ``baseline_date`` (default: the latest earlier complete snapshot), with its history."""
    store = sink.store_of(out)
    earlier = [d for d in sink.manifest_dates(store) if d < snapshot_date]
    if baseline_date is None and earlier:
        baseline_date = earlier[-1]
    baseline = None
    if baseline_date is not None:
        manifest = sink.read_manifest(store, baseline_date)
        if manifest is None:
            raise UsageError(
                f"no complete snapshot {baseline_date} in {store.display} to compare with"
            )
        baseline = _files_of(store, baseline_date, _manifest_parts(manifest))
    history = [
        _path(store, key)
        for day in earlier[-HISTORY_SNAPSHOTS:]
        for key in _manifest_parts(sink.read_manifest(store, day) or {}).get(
            PROFILE_CHANGES.name, []
        )
    ]
    return compute(_files_of(store, snapshot_date, parts), baseline, history, tiers=tiers)


_READ: Final = ("profiles", "profile_tags", "profile_interactions")


@dataclass(frozen=True, slots=True)
class Rebuilt:
    snapshot_date: dt.date
    baseline_date: dt.date | None
    part: Part
    flagged: int


def rebuild(
    out: Store | Path,
    snapshot_date: dt.date | None = None,
    baseline_date: dt.date | None = None,
    *,
    tiers: Tiers = DEFAULT_TIERS,
    state_dir: Path | None = None,
) -> Rebuilt:
    """``xhs-profiles changes``: recompute a complete snapshot's changes (default the latest,
    against the one before) and list the new file in its manifest.  Holds the run lock (in
    ``state_dir``, which a remote OUT needs: its checkpoint is on this machine)."""
    store = sink.store_of(out)
    where = store.display
    complete = sink.manifest_dates(store)
    if not complete:
        raise UsageError(f"no complete snapshot in {where}: run xhs-profiles run first")
    day = snapshot_date or complete[-1]
    if day not in complete:
        raise UsageError(f"snapshot {day} in {where} is not complete (no manifest)")
    if baseline_date is not None and baseline_date >= day:
        raise UsageError(f"--from {baseline_date} must be before --to {day}")
    manifest = sink.read_manifest(store, day) or {}
    if sink.read_shard_manifests(store, day):
        part = _rewrite_sharded(store, day, manifest, baseline_date, tiers)
    else:
        local = out if isinstance(out, Path) else where
        with State.open(local, day, state_dir=state_dir) as state:
            part = write(state, store, day, baseline_date=baseline_date, tiers=tiers)
            sink.rewrite_manifest(store, day, state.parts())
    earlier = [d for d in complete if d < day]
    baseline = baseline_date or (earlier[-1] if earlier else None)
    flags = _scan([_path(store, part.path)], ["flags"], store)
    flagged = flags.select(pl.col("flags").list.len() > 0).sum().collect().item()
    return Rebuilt(day, baseline, part, int(flagged))


def _rewrite_sharded(
    store: Store,
    day: dt.date,
    manifest: Mapping[str, Any],
    baseline_date: dt.date | None,
    tiers: Tiers,
) -> Part:
    """A sharded snapshot has no one state to record the new file in: its manifest lists it.
    The name is a hash of what the rows depend on, so a rerun writes the same file."""
    listed = _manifest_parts(manifest)
    frame = compute_for(store, day, listed, baseline_date=baseline_date, tiers=tiers)
    key = hashlib.sha256(
        json.dumps([listed, str(baseline_date), [list(t) for t in tiers]]).encode()
    ).hexdigest()[:16]
    name = f"part-snapshot-{key}.parquet"
    part = sink.write_part(store, PROFILE_CHANGES, day, frame, name=name)
    old = [
        Part(PROFILE_CHANGES.name, path, 0)
        for path in listed.get(PROFILE_CHANGES.name, [])
        if path != part.path
    ]
    rows = manifest.get("tables", {})
    kept = [
        Part(table, entry["path"], int(entry["rows"]))
        for table, entries in rows.items()
        if table != PROFILE_CHANGES.name
        for entry in entries
    ]
    sink.rewrite_manifest(store, day, [*kept, part])
    sink.delete_parts(store, old)
    return part


def parse_tier_bounds(text: str) -> Tiers:
    """``1000,10000,50000,500000,1000000``: where nano, micro, mid, macro and mega start."""
    try:
        bounds = [int(part.replace("_", "").strip()) for part in text.split(",")]
    except ValueError:
        bounds = []
    names = DEFAULT_TIERS[1:]
    if len(bounds) != len(names) or bounds != sorted(set(bounds)) or bounds[0] < 1:
        raise UsageError(
            f"--tier-bounds takes {len(names)} increasing follower counts "
            f"(where {', '.join(n for _, n, _ in names)} start), got {text!r}"
        )
    return (
        DEFAULT_TIERS[0],
        *((b, n, label) for b, (_, n, label) in zip(bounds, names, strict=True)),
    )


def _manifest_parts(manifest: Mapping[str, Any]) -> dict[str, list[str]]:
    tables = manifest.get("tables")
    if not isinstance(tables, dict):
        return {}
    return {
        name: [e["path"] for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]
        for name, entries in tables.items()
        if isinstance(entries, list)
    }


def _files_of(store: Store, day: dt.date, parts: Mapping[str, Sequence[str]]) -> SnapshotFiles:
    def paths(table: str) -> tuple[Path, ...]:
        return tuple(_path(store, p) for p in parts.get(table, ()))

    return SnapshotFiles(
        day,
        profiles=paths("profiles"),
        tags=paths("profile_tags"),
        interactions=paths("profile_interactions"),
        failures=_path(store, sink.failures_key(day)),
        store=None if store.is_local else store,
    )


def _path(store: Store, key: str) -> Path:
    """A file as ``compute`` reads it: its path in a folder, its key in an object store."""
    return Path(store.uri(key)) if store.is_local else Path(key)
