"""``xhs-profiles report DIR``: one self-contained HTML page, the same bytes for the same data.

The output folders are built by ``tests/report_fixture.py`` with the declared schemas and the
sink's own writers.  The browser test (slow) opens the page in Debian's chromium through
Playwright and skips, saying why, where either is missing.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest
from click.testing import CliRunner, Result

import pipeline
from pipeline import report, report_data, report_records, sink
from pipeline.cli import cli
from pipeline.errors import UsageError
from pipeline.schema import PROFILE_CHANGES, PROFILES
from tests.helpers import make_id
from tests.report_fixture import (
    DATES,
    RENAMED_TO,
    SPIKE_REASON,
    Events,
    build_out,
    complete_manifest,
    profile_rows,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "XHS_UPDATE_SCREENSHOT"
DOCS_SCREENSHOT = Path(__file__).parent.parent / "docs" / "report.png"
SECTION_IDS = (
    "freshness", "runs", "outcomes", "followers", "growth", "flags", "identity", "presence",
    "failures",
)  # fmt: skip


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["report", *args])


def page_of(out: Path) -> str:
    result = invoke(str(out))
    assert result.exit_code == 0, result.output
    return (out / "report.html").read_text("utf-8")


def text_of(page: str) -> str:
    """The page's visible text, tags dropped and entities decoded, spaces squeezed."""
    body = page.split("<body>", 1)[-1]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def section(page: str, section_id: str) -> str:
    return page.split(f'<section id="{section_id}">', 1)[1].split("</section>", 1)[0]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_out(tmp_path_factory.mktemp("report") / "out")


@pytest.fixture(scope="module")
def page(out: Path) -> str:
    return page_of(out)


# ------------------------------------------------------------------------ what the page shows


def test_the_command_writes_dir_report_html_and_prints_where_and_how_big(out: Path) -> None:
    result = invoke(str(out))
    written = out / "report.html"
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"report: {written} ({written.stat().st_size:,} bytes, snapshot 2026-11-28)\n"
    )
    assert not list(out.glob(".report.html.*"))  # the temporary file was renamed into place


def test_out_writes_the_page_where_it_is_told(out: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.html"
    result = invoke(str(out), "--out", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == (out / "report.html").read_bytes()


def test_every_section_is_on_the_page(page: str) -> None:
    for section_id in SECTION_IDS:
        assert f'<section id="{section_id}">' in page
    text = text_of(page)
    for heading in ("Data freshness", "Run history", "Outcomes by code", "Followers", "Tiers",
                    "Top growth", "Flagged creators", "Identity changes",
                    "Appeared and disappeared", "Failures to look at"):  # fmt: skip
        assert heading in text


def test_freshness_names_the_latest_complete_snapshot_and_when_it_completed(page: str) -> None:
    text = text_of(section(page, "freshness"))
    assert "latest complete snapshot 2026-11-28" in text
    assert "completed at (UTC) 2026-11-28 03:" in text  # the manifest's time, not the clock
    assert "complete snapshots 3" in text


def test_a_later_snapshot_without_manifest_is_called_not_complete(page: str) -> None:
    text = text_of(section(page, "freshness"))
    assert "Snapshot 2026-12-05 is not complete" in text
    assert "ended interrupted with exit code 130" in text


def test_run_history_lists_each_run_with_calls_outcome_and_duration(page: str) -> None:
    runs = section(page, "runs")
    assert runs.count("<svg") == 1
    text = text_of(runs)
    # Newest first: tonight's killed run, the rerun with nothing to do, then the three nights.
    assert re.search(r"2026-12-05 03:00:00 0000000b 2026-12-05 interrupted 130 20 17", text)
    assert re.search(r"2026-11-28 09:15:00 0000000a 2026-11-28 completed 0 0 0 .* 0\.4 s", text)
    assert "2026-11-14 03:00:00 00000000 2026-11-14 completed 0 46 39" in text
    assert "1 min 36 s" in text  # 96 s for 40 creators


def test_outcomes_count_profiles_and_each_failure_code(page: str) -> None:
    text = text_of(section(page, "outcomes"))
    assert "profile written fetched: a row in the profiles table 38" in text
    assert "code 404 no such user (deleted or banned) 1" in text
    assert "code 500 server error (retries used up) 1" in text
    assert "code 400 not an id, or invalid parameters 1" in text


def test_followers_have_a_log_histogram_and_tier_counts(page: str) -> None:
    followers = section(page, "followers")
    assert followers.count("<svg") == 2
    assert "followers (log scale)" in followers
    assert '<text class="tick" x="' in followers and ">10M</text>" in followers
    for label in ("素人 nano", "KOC micro", "腰部 mid", "头部 macro", "超头部 mega"):
        assert label in followers
    assert "Tiers as <code>profile_changes</code> records them" in followers


def test_top_growth_ranks_by_followers_gained_and_links_each_profile(page: str) -> None:
    growth = section(page, "growth")
    rows = growth.split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("</tr>")[:-1]
    gained = [
        int(re.sub(r"[^0-9]", "", cells[5])) * (-1 if "−" in cells[5] else 1)
        for cells in (re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows)
    ]
    assert len(gained) == 37 and gained == sorted(gained, reverse=True)
    spiker = make_id(0, "report")
    [row] = [r for r in rows if spiker in r]
    link = f"https://www.xiaohongshu.com/user/profile/{spiker}?xsec_token=AB0"
    assert f'<a href="{link}" rel="noreferrer" title="{spiker}">阿柚子</a>' in row
    assert "+50,001" in row
    assert "from 2026-11-21 to 2026-11-28 (7 days)" in text_of(growth)


def test_the_flagged_creator_is_shown_with_its_reason(page: str) -> None:
    flags = section(page, "flags")
    assert '<span class="flag">spike</span>' in flags
    assert f"spike {SPIKE_REASON}" in text_of(flags)
    assert "阿柚子" in flags


def test_a_rename_shows_the_old_and_the_new_nickname(page: str) -> None:
    text = text_of(section(page, "identity"))
    assert f"nickname 小满 → {RENAMED_TO}" in text
    assert "ip_location 四川 → 海南" in text
    assert "tags 四川 · 美妆博主 → 海南 · 美妆博主" in text


def test_the_deleted_user_is_listed_as_disappeared_with_code_404(page: str) -> None:
    text = text_of(section(page, "presence"))
    assert "Disappeared · 2" in text
    assert "我是小满" in text and "404 no such user (deleted or banned): no such user" in text
    assert "500 server error (retries used up): internal server error" in text
    assert "Appeared · 1" in text


def test_failures_to_look_at_are_the_first_rows_of_failures_csv(page: str) -> None:
    text = text_of(section(page, "failures"))
    assert f"{make_id(2, 'report')} 404 no such user 1 2026-11-28 03:30:00" in text
    assert "not-an-id 400 not a 24-character hex user id 0" in text


def test_the_page_loads_nothing_and_links_profiles_with_plain_anchors(page: str) -> None:
    assert "<script" not in page.lower()
    assert "<img" not in page.lower() and "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page and "@font-face" not in page
    assert not re.search(r"""\ssrc\s*=""", page)
    assert "xhscdn.com" not in page  # no avatar, not even as text
    hrefs = re.findall(r"""<(\w+)[^>]*\shref="([^"]*)\"""", page)
    assert hrefs
    for tag, href in hrefs:
        assert tag == "a", (tag, href)
        assert href.startswith(("#", "https://www.xiaohongshu.com/user/profile/")), href
    assert "default-src 'none'" in page  # the browser itself refuses to fetch anything


def test_chinese_text_has_a_cjk_font_stack_and_no_web_font(page: str) -> None:
    assert '<meta charset="utf-8">' in page
    for family in ("PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", "WenQuanYi Zen Hei"):
        assert f'"{family}"' in page
    assert "@media (prefers-color-scheme:dark)" in page and "@media print" in page


def test_the_page_says_when_a_table_is_cut(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", n=900, snapshots=2, scale=True)
    page = page_of(out)
    total = pl.read_parquet(out / "profile_changes" / "dt=2026-11-28" / "*.parquet").filter(
        ~pl.col("appeared") & ~pl.col("disappeared")
    )
    assert f"Showing the first 50 of {total.height:,} creators, by followers gained." in page
    assert section(page, "growth").count("<tr>") == 1 + 50


# ------------------------------------------------------------------------ what it reads


def test_an_orphan_part_outside_the_manifest_is_not_read(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out")
    orphan = profile_rows(3, 2, Events(3, scale=False))
    for row in orphan:
        row.update(user_id=make_id(99, "orphan"), nickname="孤儿ORPHAN", fans=7)
    sink.write_part(out, PROFILES, DATES[-1], pl.DataFrame(orphan[:1], schema=PROFILES.schema))
    page = page_of(out)
    assert "孤儿ORPHAN" not in page
    assert "profile written fetched: a row in the profiles table 38" in text_of(page)


def test_the_same_data_gives_the_same_bytes_wherever_it_lies(tmp_path: Path) -> None:
    first = build_out(tmp_path / "a")
    second = build_out(tmp_path / "b")
    once = report.render(first)
    assert report.render(first) == once
    assert report.render(second) == once


def test_one_snapshot_says_growth_needs_two(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", snapshots=1)
    text = text_of(page_of(out))
    assert text.count("Only one complete snapshot so far (2026-11-28): this needs two.") == 4
    assert "the report places creators by followers itself" in text
    assert "latest complete snapshot 2026-11-28" in text


def test_a_snapshot_without_profile_changes_says_so(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", snapshots=2, with_changes=False)
    text = text_of(page_of(out))
    assert "The snapshot 2026-11-28 has no profile_changes table in its manifest" in text
    assert "nothing to compare with 2026-11-21 here" in text
    assert "Followers" in text and "404" in text  # the rest is still there


def test_markup_in_a_nickname_or_link_is_shown_as_text(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", n=6, snapshots=2)
    path = out / "profile_changes" / "dt=2026-11-28"
    [part] = sorted(path.glob("*.parquet"))
    frame = pl.read_parquet(part).with_columns(
        pl.when(pl.col("flags").list.len() > 0)
        .then(pl.lit("<script>alert(1)</script>"))
        .otherwise(pl.col("nickname"))
        .alias("nickname")
    )
    frame.write_parquet(part)
    for profiles in (out / "profiles" / "dt=2026-11-28").glob("*.parquet"):
        pl.read_parquet(profiles).with_columns(
            share_link=pl.lit("javascript:alert(1)")
        ).write_parquet(profiles)
    page = page_of(out)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "javascript:" not in page  # such a link is replaced by the profile's URL


def test_a_missing_folder_is_a_one_line_usage_error(tmp_path: Path) -> None:
    result = invoke(str(tmp_path / "nope"))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"xhs-profiles: {tmp_path / 'nope'}: no such folder\n"


def test_a_folder_without_a_complete_snapshot_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "profiles" / "dt=2026-11-28").mkdir(parents=True)  # a run that never finished
    result = invoke(str(tmp_path))
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"xhs-profiles: {tmp_path} has no complete snapshot (no readable "
        "_manifests/dt=*.json): run `xhs-profiles run ... --out` into it first\n"
    )
    assert not (tmp_path / "report.html").exists()


def test_a_file_the_manifest_lists_but_is_gone_is_a_usage_error(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", n=6, snapshots=1)
    for part in (out / "profiles" / "dt=2026-11-28").glob("*.parquet"):
        part.unlink()
    result = invoke(str(out))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"xhs-profiles: cannot read the snapshots of {out} (")
    assert result.stderr.count("\n") == 1


def test_without_jinja2_the_report_asks_for_its_extra(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "pipeline.report_html", raising=False)
    monkeypatch.delattr(pipeline, "report_html", raising=False)
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(UsageError, match=r"install the report extra"):
        report.render(out)


def test_changes_and_tiers_read_from_a_manifest_listing_profile_changes(out: Path) -> None:
    data = report_data.load(out)
    assert data.changes.state is report_records.ChangesState.OK
    assert data.tiers_from_changes
    assert data.changes.baseline == DATES[-2] and data.changes.days == 7
    assert PROFILE_CHANGES.name in (sink.read_manifest(out, DATES[-1]) or {})["tables"]
    complete_manifest(out, DATES[-1], None)  # idempotent: already listed


# ------------------------------------------------------------------------ size and speed


def test_ten_thousand_creators_give_a_page_under_300_kb(tmp_path: Path) -> None:
    out = build_out(tmp_path / "out", n=10_000, snapshots=3, scale=True)
    started = time.perf_counter()
    written = report.write_report(out)
    seconds = time.perf_counter() - started
    size = written.path.stat().st_size
    print(
        f"\nreport for 10,000 creators: {size:,} bytes ({size / 1024:.0f} KiB) in {seconds:.2f} s"
    )
    assert size == written.size < 300 * 1024
    page = written.path.read_text("utf-8")
    assert "Showing the first 50 of" in page and "Showing the first 100 of" in page


# ------------------------------------------------------------------------ in a real browser


CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


@pytest.fixture
def chromium_page(tmp_path: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: `make browser` installs Debian's chromium (root + apt-get)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev dependency group)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": 1100, "height": 900},
            device_scale_factor=1,
        )
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.mark.slow
def test_in_chromium_every_chart_has_a_size_and_no_request_leaves_the_file(
    chromium_page: Page, tmp_path: Path
) -> None:
    page = chromium_page
    out = build_out(tmp_path / "out", n=20)  # every nickname once: a compact screenshot
    written = report.write_report(out)
    requests: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    page.on("request", record)
    url = written.path.resolve().as_uri()
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)  # anything lazy would have asked by now

    assert requests == [url]
    boxes = [svg.bounding_box() for svg in page.query_selector_all("svg")]
    assert len(boxes) == written.path.read_text("utf-8").count("<svg") == 4  # runs, outcomes,
    # followers and tiers
    assert all(box and box["width"] > 0 and box["height"] > 0 for box in boxes), boxes
    assert page.title() == "xhs-profiles report · snapshot 2026-11-28"
    assert page.locator("#identity").inner_text().count(RENAMED_TO) >= 1

    screenshot = tmp_path / "report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"\nscreenshot: {screenshot}")
    if os.environ.get(SCREENSHOT_ENV) == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
