"""The report's reading of a snapshot's tables through its manifest, and of its changes.

A manifest lists the files that make a complete snapshot: those, and never a glob of the
partition folder (a crash's orphan part may sit there until the next run removes it), are
scanned lazily by polars, for the columns the page needs only.  ``changes`` turns the latest
``profile_changes`` into the page's growth, flagged, identity and appeared/disappeared lists,
with the new values of changed fields and the profile links taken from ``profiles``; every list
is sorted with the user id as the last tie-break.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final

import polars as pl

from pipeline.errors import UsageError
from pipeline.report_records import (
    TOP_APPEARED,
    TOP_DISAPPEARED,
    TOP_FLAGGED,
    TOP_GROWTH,
    TOP_IDENTITY,
    Capped,
    Changes,
    ChangesState,
    Creator,
    FieldChange,
    FlagRow,
    GrowthRow,
    IdentityRow,
    PresenceRow,
    capped,
)
from pipeline.schema import (
    IDENTITY_FIELDS,
    IDENTITY_SOURCES,
    PROFILE_CHANGES,
    PROFILE_TAGS,
    PROFILES,
    Table,
)

# A profile link is shown only for these schemes (a share_link is data from the API).
_LINK_SCHEMES: Final = ("https://", "http://")
_PROFILE_URL: Final = "https://www.xiaohongshu.com/user/profile/{}"
# Columns of ``profiles`` the page reads; the identity fields' columns there.
PROFILE_COLUMNS: Final = (
    "user_id", "nickname", "fans", "share_link", "red_id", "description", "ip_location",
    "red_official_verified", "level",
)  # fmt: skip
_TAG_COLUMNS: Final = ("user_id", "position", "name")
_IDENTITY_SOURCE: Final = IDENTITY_SOURCES


def manifest_files(manifest: Mapping[str, Any], table: str) -> list[str] | None:
    """The paths the manifest lists for ``table``, or None when it lists no such table."""
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or table not in tables:
        return None
    entries = tables[table]
    if not isinstance(entries, list):
        return None
    return [safe_path(entry["path"]) for entry in entries if isinstance(entry, dict)]


def safe_path(path: object) -> str:
    pure = PurePosixPath(str(path))
    if pure.is_absolute() or ".." in pure.parts:
        raise UsageError(f"a manifest lists {path!r}, outside the output folder")
    return pure.as_posix()


def scan(
    out_dir: Path, files: Sequence[str] | None, table: Table, columns: Iterable[str]
) -> pl.LazyFrame:
    """The listed files of ``table`` with ``columns`` (typed nulls for any a file lacks)."""
    wanted = list(columns)
    schema = {name: table.schema[name] for name in wanted}
    if not files:
        return pl.LazyFrame(schema=schema)
    frame = pl.scan_parquet([out_dir / f for f in files], hive_partitioning=False)
    have = set(frame.collect_schema().names())
    frame = frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in have
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


# ------------------------------------------------------------------------ profile_changes

_CHANGE_COLUMNS: Final = (
    "user_id", "baseline_dt", "days", "appeared", "disappeared", "failure_code",
    "failure_message", "nickname", "fans", "fans_before", "fans_delta", "fans_per_day",
    "fans_pct", "likes_saves_delta", "approximate", "changed_fields", "nickname_before",
    "red_id_before", "description_before", "ip_location_before", "verified_before",
    "level_before", "tags_before", "tier", "tier_label", "flags", "flag_reasons",
)  # fmt: skip


def _no_changes(state: ChangesState, baseline: dt.date | None = None) -> Changes:
    return Changes(state, baseline, None, 0, *(Capped((), 0) for _ in range(5)))


def changes(
    out_dir: Path,
    manifests: Mapping[dt.date, dict[str, Any]],
    latest: dt.date,
    previous: dt.date | None,
    files: Sequence[str] | None,
    profiles_now: pl.DataFrame,
) -> Changes:
    if not files:  # an older dataset's manifest has no such table, or lists no file for it
        return _no_changes(ChangesState.SINGLE if previous is None else ChangesState.MISSING)
    frame = scan(out_dir, files, PROFILE_CHANGES, _CHANGE_COLUMNS).collect()
    if frame.height == 0:
        return _no_changes(ChangesState.SINGLE if previous is None else ChangesState.EMPTY)
    frame = frame.with_columns(
        pl.col("appeared", "disappeared", "approximate").fill_null(False),
        pl.col("changed_fields", "flags", "flag_reasons").fill_null([]),
    )
    baselines = frame.get_column("baseline_dt").drop_nulls().unique().sort()
    last = baselines[-1] if baselines.len() else None
    baseline = last if isinstance(last, dt.date) else previous
    days = frame.filter(pl.col("baseline_dt") == baseline).get_column("days").drop_nulls()
    # The links and the new values of changed fields: profiles now; for the disappeared, the
    # baseline's profiles (only the ids shown are looked up).
    now = profiles_now.unique("user_id", keep="first", maintain_order=True)
    links = _links(now)
    gone = frame.filter(pl.col("disappeared")).sort(
        ["fans_before", "user_id"], descending=[True, False], nulls_last=True
    )
    if gone.height and baseline is not None and baseline in manifests:
        shown = gone.head(TOP_DISAPPEARED).get_column("user_id")
        before = scan(
            out_dir, manifest_files(manifests[baseline], PROFILES.name), PROFILES, PROFILE_COLUMNS
        ).filter(pl.col("user_id").is_in(shown.implode()))
        links = {**_links(before.collect()), **links}
    return Changes(
        state=ChangesState.OK,
        baseline=baseline,
        days=int(days[0]) if days.len() else None,
        rows=frame.height,
        growth=_growth(frame, links),
        flagged=_flagged(frame, links),
        identity=_identity(out_dir, manifests[latest], frame, now, links),
        disappeared=capped(
            [
                PresenceRow(
                    _creator(r["user_id"], r["nickname"], links),
                    r["fans_before"],
                    r["failure_code"],
                    r["failure_message"],
                )
                for r in gone.head(TOP_DISAPPEARED).iter_rows(named=True)
            ],
            TOP_DISAPPEARED,
            gone.height,
        ),
        appeared=_appeared(frame, links),
    )


def _links(profiles: pl.DataFrame) -> dict[str, str]:
    return {
        user_id: link
        for user_id, link in profiles.select("user_id", "share_link").iter_rows()
        if isinstance(link, str) and link.startswith(_LINK_SCHEMES)
    }


def _creator(user_id: str, nickname: str | None, links: Mapping[str, str]) -> Creator:
    return Creator(user_id, nickname, links.get(user_id) or _PROFILE_URL.format(user_id))


def _growth(frame: pl.DataFrame, links: Mapping[str, str]) -> Capped[GrowthRow]:
    grown = frame.filter(
        ~pl.col("appeared") & ~pl.col("disappeared") & pl.col("fans_delta").is_not_null()
    ).sort(["fans_delta", "user_id"], descending=[True, False])
    rows = [
        GrowthRow(
            creator=_creator(r["user_id"], r["nickname"], links),
            tier_label=r["tier_label"],
            fans_before=r["fans_before"],
            fans=r["fans"],
            fans_delta=r["fans_delta"],
            fans_per_day=r["fans_per_day"],
            fans_pct=r["fans_pct"],
            likes_saves_delta=r["likes_saves_delta"],
            approximate=bool(r["approximate"]),
        )
        for r in grown.head(TOP_GROWTH).iter_rows(named=True)
    ]
    return Capped(tuple(rows), grown.height)


def _flagged(frame: pl.DataFrame, links: Mapping[str, str]) -> Capped[FlagRow]:
    flagged = (
        frame.filter(pl.col("flags").list.len() > 0)
        .with_columns(
            pl.col("flags").list.len().alias("_n"), pl.col("fans_delta").abs().alias("_size")
        )
        .sort(["_n", "_size", "user_id"], descending=[True, True, False], nulls_last=True)
    )
    rows = []
    for r in flagged.head(TOP_FLAGGED).iter_rows(named=True):
        reasons = list(r["flag_reasons"])
        pairs = tuple(
            (flag, reasons[i] if i < len(reasons) and reasons[i] else "")
            for i, flag in enumerate(r["flags"])
        )
        rows.append(
            FlagRow(
                _creator(r["user_id"], r["nickname"], links),
                pairs,
                r["fans_before"],
                r["fans"],
                r["fans_delta"],
            )
        )
    return Capped(tuple(rows), flagged.height)


def _identity(
    out_dir: Path,
    manifest: Mapping[str, Any],
    frame: pl.DataFrame,
    now: pl.DataFrame,
    links: Mapping[str, str],
) -> Capped[IdentityRow]:
    changed = (
        frame.filter(pl.col("changed_fields").list.len() > 0)
        .with_columns(pl.col("changed_fields").list.len().alias("_n"))
        .sort(["_n", "user_id"], descending=[True, False])
    )
    shown = changed.head(TOP_IDENTITY)
    ids = shown.get_column("user_id")
    current = {
        r["user_id"]: r for r in now.filter(pl.col("user_id").is_in(ids.implode())).to_dicts()
    }
    tags = _tag_names(out_dir, manifest, ids) if shown.height else {}
    rows = []
    for r in shown.iter_rows(named=True):
        profile = current.get(r["user_id"], {})
        fields = [f for f in IDENTITY_FIELDS if f in r["changed_fields"]]
        fields += sorted(f for f in set(r["changed_fields"]) if f not in IDENTITY_FIELDS)
        changed_values = []
        for name in fields:
            if name == "tags":
                after: object = tags.get(r["user_id"], [])
            else:
                after = profile.get(_IDENTITY_SOURCE.get(name, name))
            before = _shown(r.get(f"{name}_before"))
            changed_values.append(FieldChange(name, before, _shown(after)))
        nickname = profile.get("nickname") or r["nickname"]
        rows.append(IdentityRow(_creator(r["user_id"], nickname, links), tuple(changed_values)))
    return Capped(tuple(rows), changed.height)


def _tag_names(out_dir: Path, manifest: Mapping[str, Any], ids: pl.Series) -> dict[str, list[str]]:
    """Each user's tag names at the latest snapshot, in position order."""
    tags = (
        scan(out_dir, manifest_files(manifest, PROFILE_TAGS.name), PROFILE_TAGS, _TAG_COLUMNS)
        .filter(pl.col("user_id").is_in(ids.implode()) & pl.col("name").is_not_null())
        .sort("user_id", "position")
        .group_by("user_id", maintain_order=True)
        .agg("name")
        .collect()
    )
    return {user_id: list(names) for user_id, names in tags.iter_rows()}


def _appeared(frame: pl.DataFrame, links: Mapping[str, str]) -> Capped[PresenceRow]:
    new = frame.filter(pl.col("appeared")).sort(
        ["fans", "user_id"], descending=[True, False], nulls_last=True
    )
    rows = [
        PresenceRow(_creator(r["user_id"], r["nickname"], links), r["fans"], None, None)
        for r in new.head(TOP_APPEARED).iter_rows(named=True)
    ]
    return Capped(tuple(rows), new.height)


def _shown(value: object) -> str:
    """A field's value as one line of text for the identity table."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return " · ".join(str(v) for v in value) if value else "(none)"
    text = " ".join(str(value).split())
    return text if text else "(empty)"
