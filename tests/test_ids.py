"""The input rules of pipeline.ids: files, encodings, column detection, records and id cells."""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import ids
from pipeline.errors import InputError, UsageError
from pipeline.ids import (
    ID_COLUMN_CANDIDATES,
    REASON_NOT_AN_ID,
    REASON_NOT_PROFILE_URL,
    REASON_SHORT_LINK,
    REASON_URL_BAD_ID,
    REASON_URL_WITHOUT_ID,
    IdFile,
    open_id_file,
    parse_id,
)
from pipeline.records import InputRow

A = "5a901362e8ac2b36c99bce33"
B = "5c2f338a000000000701e1c6"
C = "00ec6e4c2b2038eecaeb60ea"
HEX24 = st.text(alphabet="0123456789abcdef", min_size=24, max_size=24)
SPACES = st.text(alphabet=" \t\r\n\u3000\u00a0\u200b\u200c\u200d\u2060\ufeff", max_size=4)


def write(tmp_path: Path, content: str | bytes, name: str = "ids.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def rows(id_file: IdFile) -> list[tuple[int, str | None]]:
    return [(row.line, row.user_id) for row in id_file]


def input_error(action: Callable[[], Any]) -> str:
    with pytest.raises(InputError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- parse_id -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        A,
        A.upper(),
        f"  {A}\t",
        f"\u3000{A}\u3000",
        f"\u00a0{A}\u00a0",
        f"\ufeff\u200b{A}\u200d\r\n",
        f'"{A}"',
        f"'{A}'",
        f" “ {A} ” ",
        f"https://www.xiaohongshu.com/user/profile/{A}",
        f"https://www.xiaohongshu.com/user/profile/{A}?xsec_token=ABxyz%3D&xsec_source=pc_feed",
        f"http://xiaohongshu.com/user/profile/{A}/",
        f"www.xiaohongshu.com/user/profile/{A}#notes",
        f"xiaohongshu.com/user/profile/{A.upper()}?a=1#b",
        f"HTTPS://WWW.XIAOHONGSHU.COM/USER/PROFILE/{A.upper()}",
        f' "https://www.xiaohongshu.com/user/profile/{A}?xsec_token=x" ',
    ],
)
def test_parse_id_normalizes_whitespace_quotes_case_and_profile_urls(cell: str) -> None:
    assert parse_id(cell) == (A, None)


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("", REASON_NOT_AN_ID),
        ('""', REASON_NOT_AN_ID),
        ("abc", REASON_NOT_AN_ID),
        (A[:23], REASON_NOT_AN_ID),
        (A + "0", REASON_NOT_AN_ID),
        (A[:23] + "g", REASON_NOT_AN_ID),
        (A[:12] + " " + A[12:], REASON_NOT_AN_ID),
        ("５a901362e8ac2b36c99bce33", REASON_NOT_AN_ID),  # full-width digit
        ('=HYPERLINK("x")', REASON_NOT_AN_ID),
        (f"https://evil.example/user/profile/{A}", REASON_NOT_AN_ID),
        (f"https://xiaohongshu.com.evil.example/user/profile/{A}", REASON_NOT_AN_ID),
        (f"see https://www.xiaohongshu.com/user/profile/{A}", REASON_NOT_AN_ID),
        ("https://www.xiaohongshu.com/user/profile/", REASON_URL_WITHOUT_ID),
        ("https://www.xiaohongshu.com/user/profile/?xsec_token=abc", REASON_URL_WITHOUT_ID),
        ("https://www.xiaohongshu.com/user/profile/12345", REASON_URL_BAD_ID),
        (f"https://www.xiaohongshu.com/user/profile/{A}/../x", REASON_NOT_PROFILE_URL),
        (f"https://www.xiaohongshu.com/explore/{A}", REASON_NOT_PROFILE_URL),
        ("https://www.xiaohongshu.com", REASON_NOT_PROFILE_URL),
        ("http://xhslink.com/a/AbCdEf", REASON_SHORT_LINK),
        ("xhslink.com/a/AbCdEf", REASON_SHORT_LINK),
        ("【小红书】快来看看 http://xhslink.com/a/AbCdEf 复制本条信息", REASON_SHORT_LINK),
    ],
)
def test_parse_id_rejects_non_ids_with_a_reason(cell: str, reason: str) -> None:
    assert parse_id(cell) == (None, reason)


QUOTES = st.sampled_from([("", ""), ('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’")])


@st.composite
def id_forms(draw: st.DrawFn) -> tuple[str, str]:
    user_id = draw(HEX24)
    shown = user_id.upper() if draw(st.booleans()) else user_id
    if draw(st.booleans()):
        scheme = draw(st.sampled_from(["", "http://", "https://", "HTTPS://"]))
        host = draw(st.sampled_from(["", "www."])) + "xiaohongshu.com"
        tail = draw(
            st.sampled_from(["", "/", "?xsec_token=AB1%3D&xsec_source=pc_search", "#x", "/?a=b"])
        )
        shown = f"{scheme}{host}/user/profile/{shown}{tail}"
    left, right = draw(QUOTES)
    cell = draw(SPACES) + left + draw(SPACES) + shown + draw(SPACES) + right + draw(SPACES)
    return user_id, cell


@given(id_forms())
def test_parse_id_finds_the_id_in_any_wrapping(case: tuple[str, str]) -> None:
    user_id, cell = case
    assert parse_id(cell) == (user_id, None)


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789abcdefABCDEFgx/:?#.%\"' \u3000\u200b"),
        st.builds(
            lambda prefix, body: prefix + body,
            st.sampled_from(
                ["https://www.xiaohongshu.com/user/profile/", "xhslink.com/", "http://", ""]
            ),
            st.text(),
        ),
    )
)
def test_parse_id_returns_a_24_hex_id_or_a_reason_and_nothing_else(cell: str) -> None:
    user_id, reason = parse_id(cell)
    if user_id is None:
        assert isinstance(reason, str)
        assert reason
    else:
        assert reason is None
        assert len(user_id) == 24
        assert set(user_id) <= set("0123456789abcdef")


# --- the file -------------------------------------------------------------------------------


def test_missing_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert input_error(lambda: open_id_file(path)) == f"input file not found: {path}"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert input_error(lambda: open_id_file(tmp_path)) == (
        f"{tmp_path} is a directory, not a CSV file of ids"
    )


def test_an_unreadable_file_is_refused_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, f"user_id\n{A}\n")
    real_open = Path.open

    def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    assert input_error(lambda: open_id_file(path)) == f"cannot read {path}: Permission denied"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id\n{A}\n")
    path.chmod(0)
    assert input_error(lambda: open_id_file(path)) == f"cannot read {path}: Permission denied"


@pytest.mark.parametrize(
    "content",
    [b"", b"   ", b"\n\n\r\n", b"\xef\xbb\xbf", b" \t\r\n\xe3\x80\x80\n", b",,\n,,\n"],
    ids=["zero-bytes", "spaces", "blank-lines", "bom-only", "whitespace", "empty-cells"],
)
def test_an_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content)
    assert input_error(lambda: open_id_file(path)) == (
        f"{path} is empty: it has no header and no ids"
    )


@pytest.mark.parametrize("content", ["user_id,note\n", "user_id\r\n\r\n   \r\n,\r\n"])
def test_a_header_without_data_rows_says_there_are_no_ids(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, content)
    assert input_error(lambda: open_id_file(path)) == (
        f"{path} has a header line but no ids below it"
    )


@pytest.mark.parametrize(
    "content",
    [b"PK\x03\x04\x14\x00\x06\x00[Content_Types].xml", b"PAR1\x15\x04\x15\x00\x00\x00"],
    ids=["xlsx", "parquet"],
)
def test_a_binary_file_is_refused_as_not_csv_text(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, content, "ids.xlsx")
    assert input_error(lambda: open_id_file(path)) == (
        f"{path} is not a CSV text file (it has NUL bytes: an .xlsx, .xls or Parquet file?); "
        "open it in Excel and save it as CSV UTF-8"
    )


def test_a_utf16_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id\n{A}\n".encode("utf-16"))
    assert input_error(lambda: open_id_file(path)) == (
        f"{path} is UTF-16 text (Excel's 'Unicode Text'), not a CSV: save it as CSV UTF-8"
    )


def test_bytes_that_are_neither_utf8_nor_gbk_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, b"user_id\n" + A.encode() + b"\xff\xfe\n")
    assert input_error(lambda: open_id_file(path)) == (
        f"{path} is neither UTF-8 nor GBK text; save it as CSV UTF-8"
    )


def test_the_fingerprint_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    content = f"user_id\n{A}\n".encode()
    path = write(tmp_path, content)
    assert open_id_file(path).fingerprint == hashlib.sha256(content).hexdigest()


def test_a_file_changed_after_opening_is_refused_at_the_end_of_iteration(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id\n{A}\n")
    id_file = open_id_file(path)
    path.write_text(f"user_id\n{B}\n")
    assert input_error(lambda: list(id_file)) == (
        f"{path} changed while it was being read; run again"
    )


def test_input_error_is_a_usage_error() -> None:
    assert issubclass(InputError, UsageError)


# --- encodings and line ends ----------------------------------------------------------------


def test_utf8_with_bom_is_read_and_the_bom_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, f"\ufeffuser_id,note\n{A},x\n")
    id_file = open_id_file(path)
    assert (id_file.encoding, id_file.column) == ("utf-8-sig", "user_id")
    assert rows(id_file) == [(2, A)]


def test_crlf_and_lone_cr_line_ends_give_the_same_rows_and_lines(tmp_path: Path) -> None:
    for ending in ("\n", "\r\n", "\r"):
        path = write(tmp_path, ending.join(["user_id,note", f"{A},a", "", f"{B},b", ""]))
        id_file = open_id_file(path)
        assert id_file.encoding == "utf-8"
        assert rows(id_file) == [(2, A), (4, B)], repr(ending)


def test_a_gbk_file_with_chinese_headers_and_notes_is_decoded(tmp_path: Path) -> None:
    text = f"博主昵称,user_id,备注\r\n小红,{A},家居博主\r\n小蓝,{B.upper()},美食\r\n"
    path = write(tmp_path, text.encode("gbk"))
    id_file = open_id_file(path)
    assert (id_file.encoding, id_file.column) == ("gb18030", "user_id")
    assert [(r.line, r.raw, r.user_id) for r in id_file] == [(2, A, A), (3, B.upper(), B)]


def test_a_gbk_file_with_a_chinese_id_column_is_found_by_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, f"昵称,用户ID,备注\n小红,{A},家居\n".encode("gbk"))
    id_file = open_id_file(path, id_column="用户id")
    assert id_file.column == "用户ID"
    assert rows(id_file) == [(2, A)]


def test_a_gbk_file_without_an_id_column_lists_its_chinese_columns(tmp_path: Path) -> None:
    path = write(tmp_path, f"昵称,用户ID,备注\n小红,{A},家居\n".encode("gbk"))
    assert input_error(lambda: open_id_file(path)) == (
        f"no id column in {path} (looked for user_id, userId, userid, id); "
        "columns found: 昵称, 用户ID, 备注. Pass --id-column NAME."
    )


# --- delimiter and column detection ---------------------------------------------------------


def test_a_tab_separated_file_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, f"note\tuser_id\nx\t{A}\n")
    id_file = open_id_file(path)
    assert (id_file.delimiter, id_file.column) == ("\t", "user_id")
    assert rows(id_file) == [(2, A)]


def test_a_header_with_commas_and_tabs_is_comma_separated(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id,a\tb\n{A},x\ty\n")
    assert open_id_file(path).delimiter == ","


def test_a_userid_camel_case_header_is_detected(tmp_path: Path) -> None:
    path = write(tmp_path, f"name,userId\nx,{A}\n")
    id_file = open_id_file(path)
    assert (id_file.column, id_file.column_index) == ("userId", 1)
    assert rows(id_file) == [(2, A)]


def test_candidates_are_matched_case_insensitively_in_order_of_preference(
    tmp_path: Path,
) -> None:
    assert ID_COLUMN_CANDIDATES == ("user_id", "userId", "userid", "id")
    path = write(tmp_path, f"ID, USER_ID \n{B},{A}\n")
    id_file = open_id_file(path)
    assert (id_file.column, id_file.column_index) == ("USER_ID", 1)
    assert rows(id_file) == [(2, A)]


def test_id_column_matches_exactly_before_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, f"UID,uid\n{B},{A}\n")
    assert open_id_file(path, id_column="uid").column == "uid"
    assert open_id_file(path, id_column="Uid").column == "UID"


def test_a_wrong_id_column_lists_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id,note\n{A},x\n")
    assert input_error(lambda: open_id_file(path, id_column="creator")) == (
        f"no column 'creator' in {path}; columns found: user_id, note"
    )


def test_several_columns_without_a_candidate_name_id_column(tmp_path: Path) -> None:
    path = write(tmp_path, f"name,url\nx,https://www.xiaohongshu.com/user/profile/{A}\n")
    assert input_error(lambda: open_id_file(path)) == (
        f"no id column in {path} (looked for user_id, userId, userid, id); "
        "columns found: name, url. Pass --id-column NAME."
    )


def test_a_headerless_single_column_of_ids_includes_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, f"{A}\n{B}\n\n{C}\n")
    id_file = open_id_file(path)
    assert (id_file.column, id_file.column_index) == (None, 0)
    assert rows(id_file) == [(1, A), (2, B), (4, C)]


def test_a_headerless_single_column_starting_with_a_url_includes_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, f"https://www.xiaohongshu.com/user/profile/{A}?xsec_token=t\n{B}\n")
    id_file = open_id_file(path)
    assert id_file.column is None
    assert rows(id_file) == [(1, A), (2, B)]


def test_a_single_column_with_another_first_cell_uses_it_as_header(tmp_path: Path) -> None:
    path = write(tmp_path, f"博主\n{A}\n{B}\n")
    id_file = open_id_file(path)
    assert id_file.column == "博主"
    assert rows(id_file) == [(2, A), (3, B)]


def test_blank_lines_before_the_header_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, f"\n  \nuser_id\n{A}\n")
    assert rows(open_id_file(path)) == [(4, A)]


# --- records --------------------------------------------------------------------------------


def test_a_ragged_row_is_refused_with_its_line(tmp_path: Path) -> None:
    lines = ["user_id,note", f"{A},a", f'{B},"two', 'lines"', "", f"{C},c", f"{A},x,extra"]
    path = write(tmp_path, "\r\n".join(lines) + "\r\n")
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 7: 3 fields, but the header has 2"
    )


def test_a_short_row_is_ragged_too(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id,note\n{A},a\n{B}\n")
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 3: 1 fields, but the header has 2"
    )


def test_a_ragged_row_in_a_headerless_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f"{A}\n{B},note\n")
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 2: 2 fields, but the file has one column and no header"
    )


def test_an_unclosed_quote_is_refused_with_the_line_it_opens_on(tmp_path: Path) -> None:
    path = write(tmp_path, f'user_id,note\n{A},a\n{B},"never closed\n{C},c\n')
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 3: bad CSV: unexpected end of data"
    )


def test_text_after_a_closing_quote_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'user_id,note\n{A},"a"b\n')
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 2: bad CSV: ',' expected after '\"'"
    )


def test_a_field_over_the_csv_limit_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id,note\n{A},a\n{B},{'x' * 200_000}\n")
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 3: bad CSV: field larger than field limit (131072) (an unclosed quote?)"
    )


def test_a_line_over_the_length_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ids, "MAX_LINE_CHARS", 100)
    path = write(tmp_path, f"user_id,note\n{A},{'a,' * 60}\n")
    assert input_error(lambda: list(open_id_file(path))) == (
        f"{path} line 2: longer than 100 characters; is it a CSV of ids?"
    )


def test_blank_lines_are_skipped_and_blank_cells_counted(tmp_path: Path) -> None:
    content = f"user_id,note\n{A},a\n\n,no id here\n  ,spaces\n,,\n   \n\u3000,ideographic\n{B},b\n"
    id_file = open_id_file(write(tmp_path, content))
    assert rows(id_file) == [(2, A), (9, B)]
    assert id_file.blank_cells == 3
    assert rows(id_file) == [(2, A), (9, B)]
    assert id_file.blank_cells == 3  # reset for each iteration, not accumulated


def test_invalid_cells_give_rows_with_the_raw_cell_and_a_reason(tmp_path: Path) -> None:
    content = (
        "user_id,note\n"
        "not-an-id,a\n"
        "https://www.xiaohongshu.com/user/profile/,b\n"
        "http://xhslink.com/a/xyz,c\n"
        f" {A.upper()} ,d\n"
    )
    assert list(open_id_file(write(tmp_path, content))) == [
        InputRow(line=2, raw="not-an-id", user_id=None, reason=REASON_NOT_AN_ID),
        InputRow(
            line=3,
            raw="https://www.xiaohongshu.com/user/profile/",
            user_id=None,
            reason=REASON_URL_WITHOUT_ID,
        ),
        InputRow(line=4, raw="http://xhslink.com/a/xyz", user_id=None, reason=REASON_SHORT_LINK),
        InputRow(line=5, raw=f" {A.upper()} ", user_id=A, reason=None),
    ]


def test_urls_with_xsec_token_in_a_file_become_ids(tmp_path: Path) -> None:
    url = f"https://www.xiaohongshu.com/user/profile/{A}?xsec_token=ABc%3D&xsec_source=pc_note"
    path = write(tmp_path, f'user_id,note\n"{url}",a\n{url},b\n')
    assert rows(open_id_file(path)) == [(2, A), (3, A)]


def test_duplicates_are_yielded_as_they_come(tmp_path: Path) -> None:
    path = write(tmp_path, f"user_id\n{A}\n{A.upper()}\n{A}\n")
    assert rows(open_id_file(path)) == [(2, A), (3, A), (4, A)]


def test_line_numbers_count_physical_lines_across_crlf_and_multiline_fields(
    tmp_path: Path,
) -> None:
    content = (
        'user_id,"multi\r\nline header"\r\n'  # lines 1-2
        f'{A},"note\r\nover\r\nthree lines"\r\n'  # lines 3-5
        "\r\n"  # line 6
        f'"{B}",plain\r\n'  # line 7
        f'{C},"lone\rcr"\r\n'  # lines 8-9: a lone CR ends a physical line too
        f"{A},end\r\n"  # line 10
    )
    id_file = open_id_file(write(tmp_path, content))
    assert id_file.column == "user_id"
    assert rows(id_file) == [(3, A), (7, B), (8, C), (10, A)]


def test_the_sample_ids_file_reads_cleanly() -> None:
    path = Path(__file__).resolve().parents[1] / "data" / "sample_ids.csv"
    id_file = open_id_file(path)
    read = list(id_file)
    assert id_file.column == "user_id"
    assert "5e8a1b2c000000000100a3f4" in {row.user_id for row in read}  # from a pasted URL
    assert {row.reason for row in read} <= {None, REASON_NOT_AN_ID}


# --- streaming ------------------------------------------------------------------------------


def test_iterating_200000_rows_keeps_peak_memory_small(tmp_path: Path) -> None:
    """Streaming: the traced peak stays flat although the file is about 7 MB."""
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("user_id,note\r\n")
        out.writelines(f"{index:024x},row {index}\r\n" for index in range(200_000))
    id_file = open_id_file(path)
    count = 0
    last: InputRow | None = None
    gc.freeze()  # the session's objects out of the collector's way: halves the traced run's time
    tracemalloc.start()
    try:
        for row in id_file:
            count += 1
            last = row
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.unfreeze()
    assert count == 200_000
    assert last == InputRow(line=200_001, raw=f"{199_999:024x}", user_id=f"{199_999:024x}")
    assert peak < 5 * 1024 * 1024, f"peak {peak:,} bytes"
