"""The output tables, each declared once: its columns (name, polars type, meaning, encoding),
its key and its compaction target.

This is the public contract warehouses load by column name.  Every frame the pipeline builds is
built with these schemas (never inferred from the data), so every file in every partition has
exactly the same columns and types, and an all-null batch still has typed columns.  Everything
else derives from here: the frames ``flatten`` returns, the Parquet options and ``_SUCCESS``
folders of ``sink``, the runner's compaction, the crash tests' key checks, and the README's data
dictionary (``python -m pipeline.schema``, checked by a test).

Adding a table: declare it here and add it to ``TABLES``, then write its builder in ``flatten``.
Adding a column: declare it here, read its field in ``profile_data``, and fill it in the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

TIMESTAMP: Final = pl.Datetime("us", "UTC")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    dtype: pl.DataType
    doc: str
    # Parquet dictionary pages: on for values that repeat (types, places, tag names), off for
    # values unique per row, where a dictionary costs write time (about 10%) and saves nothing.
    dictionary: bool = True


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    doc: str
    key: tuple[str, ...]  # unique within a snapshot
    # Rows per compacted file: about 40 MB of zstd Parquet for profiles with their raw_json; a
    # tag or interaction row is ~50 times smaller, so those tables take ten times the rows.
    compact_rows: int
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a column is declared twice")
        if not set(self.key) <= set(names):
            raise ValueError(f"{self.name}: key {self.key} names undeclared columns")

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, dtype: pl.DataType, doc: str) -> Column:
    return Column(name, dtype, doc)


def _unique(name: str, dtype: pl.DataType, doc: str) -> Column:
    """A column whose values do not repeat from row to row: no dictionary pages."""
    return Column(name, dtype, doc, dictionary=False)


PROFILES: Final = Table(
    name="profiles",
    doc="One row per user fetched in the snapshot.",
    key=("user_id",),
    compact_rows=100_000,
    columns=(
        _unique("user_id", pl.String(), "Xiaohongshu user id, 24 hex characters (`data.userid`)"),
        _unique("red_id", pl.String(), "The user's public Xiaohongshu number (`red_id`)"),
        _unique("nickname", pl.String(), "Display name"),
        _unique("description", pl.String(), "Bio (`desc`)"),
        _c("gender", pl.Int64(), "0 male, 1 female, as the API gives it; other values kept"),
        _c("ip_location", pl.String(), "Province or country from the user's IP, as shown"),
        _c("location", pl.String(), "Location the user entered, e.g. `中国 广东 东莞`"),
        _c("level", pl.Int64(), "Creator level (`level.number`)"),
        _c("red_official_verified", pl.Boolean(), "Officially verified account"),
        _c("red_official_verify_type", pl.Int64(), "Kind of official verification"),
        _c("follows", pl.Int64(), "Accounts this user follows"),
        _c("fans", pl.Int64(), "Followers"),
        _c("liked", pl.Int64(), "Likes received"),
        _c("collected", pl.Int64(), "Saves (collections) received"),
        _c("notes_posted", pl.Int64(), "Notes posted (`note_num_stat.posted`)"),
        _c("notes_liked", pl.Int64(), "Likes on the user's notes (`note_num_stat.liked`)"),
        _c("notes_collected", pl.Int64(), "Saves on the user's notes (`note_num_stat.collected`)"),
        _unique("avatar_url", pl.String(), "Largest avatar image (`imageb`, else `images`)"),
        _unique("share_link", pl.String(), "Public profile URL"),
        _c("profession_tags", pl.List(pl.String()), "Names of the `profession` tags, in order"),
        _c("location_tag", pl.String(), "Name of the first `location` tag"),
        _c("fetched_at", TIMESTAMP, "When the response arrived (UTC)"),
        _unique("request_id", pl.String(), "The envelope's `requestId`, when the API gave one"),
        _unique(
            "raw_json", pl.String(), "The whole `data` object as JSON, so no field is ever lost"
        ),
    ),
)

PROFILE_TAGS: Final = Table(
    name="profile_tags",
    doc="One row per entry of `data.tags`.",
    key=("user_id", "position"),
    compact_rows=1_000_000,
    columns=(
        _c("user_id", pl.String(), "The profile's user id"),
        _c("position", pl.Int32(), "0-based position in `tags`"),
        _c("tag_type", pl.String(), "info, location, profession, college, ..."),
        _c("name", pl.String(), "Tag text, e.g. `家居博主`; null for icon-only tags"),
        _c("icon", pl.String(), "Icon URL, when the tag has one"),
    ),
)

PROFILE_INTERACTIONS: Final = Table(
    name="profile_interactions",
    doc="One row per entry of `data.interactions` (follows, fans, interaction).",
    key=("user_id", "type"),
    compact_rows=1_000_000,
    columns=(
        _c("user_id", pl.String(), "The profile's user id"),
        _c("type", pl.String(), "follows, fans or interaction (likes + saves)"),
        _c("name", pl.String(), "Label as shown in the app, e.g. `粉丝`"),
        _c("count", pl.Int64(), "The count as a number; display strings such as `1.2万` parsed"),
        _c("count_text", pl.String(), "The count exactly as the API gave it"),
        _c("is_private", pl.Boolean(), "The user hid this list (the count is still given)"),
        _c("toast", pl.String(), "Message shown for a hidden list"),
    ),
)

# The tables built from each batch of fetched profiles, in the order they are written.
FETCHED_TABLES: Final = (PROFILES, PROFILE_TAGS, PROFILE_INTERACTIONS)

# The counters compared between two snapshots; ``likes_saves`` is liked + collected (赞藏).
CHANGE_COUNTERS: Final = ("fans", "follows", "liked", "collected", "notes_posted", "likes_saves")
# Identity fields whose change is reported with the old value (``<field>_before``), and the
# ``profiles`` column each is read from (``tags`` are the ``profile_tags`` names, in order).
IDENTITY_SOURCES: Final = {
    "nickname": "nickname",
    "red_id": "red_id",
    "description": "description",
    "ip_location": "ip_location",
    "verified": "red_official_verified",
    "level": "level",
    "tags": "tags",
}
IDENTITY_FIELDS: Final = tuple(IDENTITY_SOURCES)


def _counter_columns(counter: str) -> tuple[Column, ...]:
    what = "likes + saves (liked + collected, 赞藏)" if counter == "likes_saves" else f"`{counter}`"
    return (
        _c(counter, pl.Int64(), f"{what} at `dt`"),
        _c(f"{counter}_before", pl.Int64(), f"{what} at `baseline_dt`"),
        _c(f"{counter}_delta", pl.Int64(), f"`{counter}` − `{counter}_before`"),
        _c(f"{counter}_per_day", pl.Float64(), f"`{counter}_delta` ÷ `days`"),
        _c(
            f"{counter}_pct",
            pl.Float64(),
            f"`{counter}_delta` ÷ `{counter}_before` × 100 (null when the baseline is 0)",
        ),
    )


PROFILE_CHANGES: Final = Table(
    name="profile_changes",
    doc=(
        "One row per user present in this snapshot (`dt`) or in its baseline, the latest "
        "earlier complete snapshot (`baseline_dt`): counters at both dates and their change, "
        "identity changes, tier, ratios and explainable flags. Written after every completed "
        "snapshot; the first snapshot has an empty file."
    ),
    key=("user_id",),
    compact_rows=1_000_000,
    columns=(
        _unique("user_id", pl.String(), "The user id"),
        _c("baseline_dt", pl.Date(), "The earlier snapshot compared with (never a guess)"),
        _c("days", pl.Int32(), "Days from `baseline_dt` to `dt`: every per-day figure uses it"),
        _c("appeared", pl.Boolean(), "A profile at `dt` but none at `baseline_dt`"),
        _c("disappeared", pl.Boolean(), "A profile at `baseline_dt` but none at `dt`"),
        _c(
            "failure_code",
            pl.Int64(),
            "For a disappeared user: the code in `dt`'s failures.csv (404 deleted, 0 empty "
            "answer, -1/301/500 transient), null when it was not asked",
        ),
        _c("failure_message", pl.String(), "For a disappeared user: the failure's message"),
        _unique("nickname", pl.String(), "Display name at `dt` (else at `baseline_dt`)"),
        *(column for counter in CHANGE_COUNTERS for column in _counter_columns(counter)),
        _c(
            "approximate",
            pl.Boolean(),
            "A count at either date came from a display string such as `1.2万`: the delta is "
            "rounded too",
        ),
        _c(
            "changed_fields",
            pl.List(pl.String()),
            "Identity fields whose value changed: " + ", ".join(IDENTITY_FIELDS),
        ),
        _c("nickname_before", pl.String(), "`nickname` at `baseline_dt`, when it changed"),
        _c("red_id_before", pl.String(), "`red_id` at `baseline_dt`, when it changed"),
        _c("description_before", pl.String(), "`description` at `baseline_dt`, when it changed"),
        _c("ip_location_before", pl.String(), "`ip_location` at `baseline_dt`, when it changed"),
        _c(
            "verified_before",
            pl.Boolean(),
            "`red_official_verified` at `baseline_dt`, when it changed",
        ),
        _c("level_before", pl.Int64(), "`level` at `baseline_dt`, when it changed"),
        _c(
            "tags_before",
            pl.List(pl.String()),
            "Tag names (`profile_tags.name`, in order) at `baseline_dt`, when they changed",
        ),
        _c(
            "tier",
            pl.String(),
            "Size by followers at `dt`: emerging (<1K), nano (1K), micro (10K), mid (50K), "
            "macro (500K), mega (1M+)",
        ),
        _c(
            "tier_label",
            pl.String(),
            "The tier's Chinese label: 素人, KOC, 初级达人, 腰部, 头部, 超头部",
        ),
        _c(
            "likes_saves_per_follower",
            pl.Float64(),
            "`likes_saves` ÷ `fans` at `dt` (粉丝赞藏比), null when fans is 0",
        ),
        _c(
            "likes_saves_per_note",
            pl.Float64(),
            "`likes_saves` ÷ `notes_posted` at `dt`, null when no note",
        ),
        _c("flags", pl.List(pl.String()), "Anomaly flags raised (see the flag table)"),
        _c("flag_reasons", pl.List(pl.String()), "One reason text per flag, in the same order"),
    ),
)


@dataclass(frozen=True, slots=True)
class Flag:
    code: str
    rule: str


# Thresholds of the anomaly flags (``profile_changes.flags``); ``changes`` applies them and the
# data dictionary prints them, so the rule shown is the rule run.
SPIKE_MIN_HISTORY: Final = 4  # earlier daily changes needed before "unusual for this creator"
SPIKE_ROBUST_Z: Final = 6.0
SPIKE_MIN_FANS: Final = 1_000
JUMP_SHARE: Final = 0.2  # a day's gain over this share of the followers is a jump
JUMP_MIN_FANS: Final = 5_000
ROUND_STEP: Final = 5_000
PURGE_SHARE: Final = 0.1
PURGE_MIN_FANS: Final = 500
FOLLOWS_SPIKE_MIN: Final = 1_000
NO_ENGAGEMENT_MIN_FANS: Final = 1_000

FLAGS: Final = (
    Flag(
        "spike_vs_history",
        f"`fans_per_day` at least {SPIKE_ROBUST_Z:g} robust z-scores (median absolute deviation "
        f"× 1.4826) above the creator's own earlier daily changes, once {SPIKE_MIN_HISTORY} "
        f"exist, and a gain of at least {SPIKE_MIN_FANS:,}",
    ),
    Flag(
        "fans_jump",
        f"followers grew by more than {JUMP_SHARE:.0%} a day and by at least {JUMP_MIN_FANS:,}",
    ),
    Flag(
        "round_jump",
        f"`fans_delta` is a non-zero multiple of exactly {ROUND_STEP:,} (bought followers come "
        "in round lots)",
    ),
    Flag(
        "purge",
        f"followers fell by at least {PURGE_SHARE:.0%} and by at least {PURGE_MIN_FANS:,}",
    ),
    Flag("follows_spike", f"`follows` grew by at least {FOLLOWS_SPIKE_MIN:,}"),
    Flag("notes_deleted", "`notes_posted` went down (notes deleted or hidden)"),
    Flag(
        "fans_without_engagement",
        f"followers grew by at least {NO_ENGAGEMENT_MIN_FANS:,} while likes + saves did not grow",
    ),
)

# Tiers by followers at ``dt``: (lower bound, tier, label); configurable in ``changes``.
DEFAULT_TIERS: Final = (
    (0, "emerging", "素人"),
    (1_000, "nano", "KOC"),
    (10_000, "micro", "初级达人"),
    (50_000, "mid", "腰部"),
    (500_000, "macro", "头部"),
    (1_000_000, "mega", "超头部"),
)

# Every table of a snapshot: the fetched ones, then the changes computed once it is complete.
TABLES: Final = (*FETCHED_TABLES, PROFILE_CHANGES)
TABLES_BY_NAME: Final = {t.name: t for t in TABLES}

# failures.csv: one row per failed id and per input cell that is not an id.
FAILURES: Final = (
    _c("user_id", pl.String(), "The id asked for, or the input cell as it was (code 400)"),
    _c(
        "code",
        pl.Int64(),
        "The API's business code; -1 no usable JSON answer; 0 answered without a profile; "
        "400 the cell is not an id (never sent)",
    ),
    _c("message", pl.String(), "What went wrong, one line"),
    _c("attempts", pl.Int64(), "Calls made for the id (0 for a cell never sent)"),
    _c("last_attempt_at", TIMESTAMP, "When the last call ended (UTC, ISO 8601), empty if none"),
)
FAILURE_COLUMNS: Final = tuple(c.name for c in FAILURES)


def as_json() -> dict[str, object]:
    """The data dictionary as a JSON-able document (``xhs-profiles schema --format json``)."""
    return {
        "tables": [
            {
                "name": t.name,
                "doc": t.doc,
                "key": list(t.key),
                "compact_rows": t.compact_rows,
                "columns": [_column_json(c) for c in t.columns],
            }
            for t in TABLES
        ],
        "flags": [{"flag": f.code, "raised_when": f.rule} for f in FLAGS],
        "tiers": [{"from": b, "tier": n, "label": lab} for b, n, lab in DEFAULT_TIERS],
        "failures_csv": {
            "columns": [{"name": c.name, "type": str(c.dtype), "meaning": c.doc} for c in FAILURES]
        },
    }


def _column_json(column: Column) -> dict[str, object]:
    return {
        "name": column.name,
        "type": str(column.dtype),
        "meaning": column.doc,
        "dictionary": column.dictionary,
    }


def markdown() -> str:
    """The data dictionary as Markdown, for the README (``xhs-profiles schema``)."""
    lines: list[str] = []
    for table in TABLES:
        lines += [
            f"#### `{table.name}`",
            "",
            table.doc,
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        lines += [f"| `{c.name}` | {c.dtype} | {c.doc} |" for c in table.columns]
        lines.append("")
    lines += ["#### Flags in `profile_changes`", "", "| flag | raised when |", "|---|---|"]
    lines += [f"| `{f.code}` | {f.rule} |" for f in FLAGS]
    lines += ["", "#### Tiers (followers at `dt`)", "", "| from | tier | label |", "|---|---|---|"]
    lines += [f"| {bound:,} | {name} | {label} |" for bound, name, label in DEFAULT_TIERS]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
