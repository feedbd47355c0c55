"""The three output tables, declared once: name, polars type and meaning of every column.

This is the public contract warehouses load by column name.  Every frame the pipeline builds is
built with these schemas (never inferred from the data), so every file in every partition has
exactly the same columns and types, and an all-null batch still has typed columns.
The README's data dictionary is generated from here (``python -m pipeline.schema``).
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


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, dtype: pl.DataType, doc: str) -> Column:
    return Column(name, dtype, doc)


PROFILES: Final = Table(
    "profiles",
    "One row per user fetched in the snapshot.",
    (
        _c("user_id", pl.String(), "Xiaohongshu user id, 24 hex characters (`data.userid`)"),
        _c("red_id", pl.String(), "The user's public Xiaohongshu number (`red_id`)"),
        _c("nickname", pl.String(), "Display name"),
        _c("description", pl.String(), "Bio (`desc`)"),
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
        _c("avatar_url", pl.String(), "Largest avatar image (`imageb`, else `images`)"),
        _c("share_link", pl.String(), "Public profile URL"),
        _c("profession_tags", pl.List(pl.String()), "Names of the `profession` tags, in order"),
        _c("location_tag", pl.String(), "Name of the first `location` tag"),
        _c("fetched_at", TIMESTAMP, "When the response arrived (UTC)"),
        _c("request_id", pl.String(), "The envelope's `requestId`, when the API gave one"),
        _c("raw_json", pl.String(), "The whole `data` object as JSON, so no field is ever lost"),
    ),
)

PROFILE_TAGS: Final = Table(
    "profile_tags",
    "One row per entry of `data.tags`.",
    (
        _c("user_id", pl.String(), "The profile's user id"),
        _c("position", pl.Int32(), "0-based position in `tags`"),
        _c("tag_type", pl.String(), "info, location, profession, college, ..."),
        _c("name", pl.String(), "Tag text, e.g. `家居博主`; null for icon-only tags"),
        _c("icon", pl.String(), "Icon URL, when the tag has one"),
    ),
)

PROFILE_INTERACTIONS: Final = Table(
    "profile_interactions",
    "One row per entry of `data.interactions` (follows, fans, interaction).",
    (
        _c("user_id", pl.String(), "The profile's user id"),
        _c("type", pl.String(), "follows, fans or interaction (likes + saves)"),
        _c("name", pl.String(), "Label as shown in the app, e.g. `粉丝`"),
        _c("count", pl.Int64(), "The count as a number; display strings such as `1.2万` parsed"),
        _c("count_text", pl.String(), "The count exactly as the API gave it"),
        _c("is_private", pl.Boolean(), "The user hid this list (the count is still given)"),
        _c("toast", pl.String(), "Message shown for a hidden list"),
    ),
)

TABLES: Final = (PROFILES, PROFILE_TAGS, PROFILE_INTERACTIONS)

FAILURE_COLUMNS: Final = ("user_id", "code", "message", "attempts", "last_attempt_at")


def markdown() -> str:
    """The data dictionary as Markdown, for the README."""
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
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
