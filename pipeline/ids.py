"""Read the input CSV of creator ids, one ``InputRow`` at a time, in constant memory.

Rules this module follows (from the issues):

- Streaming: rows are never collected in a list.  ``open_id_file`` scans the bytes once in
  chunks (sha256 fingerprint, NUL check, encoding check) and reads only the header and the first
  data record; iterating an ``IdFile`` reopens the file and yields rows as the csv reader makes
  them.  A physical line over ``MAX_LINE_CHARS`` characters is refused, so not even one record
  can grow without bound.
- The file: a missing path, a directory or an unreadable file is an ``InputError`` naming the
  path.  A file of 0 bytes or only whitespace and blank lines "is empty".  A header and no data
  record: "no ids".  NUL bytes mean a binary file (an .xlsx, .xls or Parquet passed by mistake):
  "not a CSV text file ... save it as CSV".
- Encoding, decided over the whole file before anything is yielded: UTF-8 (``utf-8-sig`` when it
  starts with a BOM), else GB18030 (the superset of GBK that Excel in China writes), which is
  decoded, not refused.  Bytes that are neither: ``InputError``.  Line ends: CRLF, LF or a lone CR.
- Delimiter: a comma; a tab when the first non-blank line has tabs and no commas.
- The id column: ``id_column`` when given (exact header name, else case-insensitive), else the
  first of ``ID_COLUMN_CANDIDATES`` in the header (case-insensitive).  Neither: a single-column
  file whose first cell is an id or a Xiaohongshu link has no header (line 1 is data); another
  single-column file uses its one column (line 1 is its header); a file of several columns is
  refused with a message that lists the columns and names ``--id-column``.  Header names are
  stripped of a BOM, zero-width characters and whitespace.
- Records: a record whose fields are all empty or whitespace (a blank line, or ``,,,`` from a
  spreadsheet's empty row) is skipped.  Any other record must have as many fields as the header
  ("ragged" otherwise: ``InputError`` with its line).  Bad quoting (strict csv: an unclosed quote
  would otherwise swallow every id after it) and oversized fields are ``InputError`` with the
  line.  ``InputRow.line`` is the 1-based physical line where the record starts (header = 1).
- Cells: invisible characters (zero-width, BOM) are removed, whitespace (including U+3000 and
  NBSP) is trimmed, one pair of surrounding quotes is removed; a profile URL
  ``[http(s)://][www.]xiaohongshu.com/user/profile/<id>[/][?...][#...]`` becomes its id;
  uppercase hex is lowercased; valid means ``config.ID_PATTERN`` (24 lowercase hex) and nothing
  else.  An empty id cell in a non-blank record is skipped and counted in ``blank_cells``.  Any
  other cell yields ``user_id=None`` and a reason (an ``xhslink.com`` short link cannot be
  resolved offline).  Only text that matched the pattern is ever a ``user_id``, so no input cell
  can change a request URL.
- Duplicates are yielded as they come: the state's primary key dedupes while ingesting, which
  keeps this reader free of a set that grows with the file.
- ``IdFile.__iter__`` may raise ``InputError`` part-way (ragged row, bad quoting, the file
  changed since ``open_id_file`` fingerprinted it); callers ingest every row before calling.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Final

from pipeline.config import ID_PATTERN
from pipeline.errors import InputError
from pipeline.records import InputRow

ID_COLUMN_CANDIDATES: Final = ("user_id", "userId", "userid", "id")

REASON_NOT_AN_ID: Final = "not a 24-character hex user id"
REASON_URL_WITHOUT_ID: Final = "profile URL without a user id"
REASON_URL_BAD_ID: Final = "profile URL whose user id is not 24 hex characters"
REASON_NOT_PROFILE_URL: Final = (
    "Xiaohongshu URL that is not a profile URL (xiaohongshu.com/user/profile/<id>)"
)
REASON_SHORT_LINK: Final = "short link (xhslink.com) cannot be resolved; paste the full profile URL"

CHUNK_BYTES: Final = 1 << 16
MAX_LINE_CHARS: Final = 1_000_000

# Invisible characters that copying from web pages and chat apps inserts; str.strip() keeps them.
_INVISIBLE: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u180e"))
_QUOTE_PAIRS: Final = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "`": "`"}
_PROFILE_URL: Final = re.compile(
    r"(?:https?://)?(?:www\.)?xiaohongshu\.com/user/profile/(?P<id>[^/?#]*)/?(?:[?#].*)?",
    re.IGNORECASE | re.DOTALL,
)
_XHS_URL: Final = re.compile(
    r"(?:https?://)?(?:[a-z0-9-]+\.)*xiaohongshu\.com(?:[/?#].*)?", re.IGNORECASE | re.DOTALL
)
_SHORT_LINK: Final = re.compile(r"(?:^|[/.\s])xhslink\.com(?:[/?#\s]|$)", re.IGNORECASE)


def parse_id(cell: str) -> tuple[str | None, str | None]:
    """(user_id, None) for a valid id, (None, reason) otherwise."""
    if ID_PATTERN.fullmatch(cell):
        return cell, None
    text = _unquote(_clean(cell))
    if not text:
        return None, REASON_NOT_AN_ID
    profile = _PROFILE_URL.fullmatch(text)
    if profile is not None:
        segment = profile["id"]
        if not segment:
            return None, REASON_URL_WITHOUT_ID
        user_id = _as_id(segment)
        return (user_id, None) if user_id else (None, REASON_URL_BAD_ID)
    user_id = _as_id(text)
    if user_id is not None:
        return user_id, None
    if _SHORT_LINK.search(text):
        return None, REASON_SHORT_LINK
    if _XHS_URL.fullmatch(text):
        return None, REASON_NOT_PROFILE_URL
    return None, REASON_NOT_AN_ID


def _clean(text: str) -> str:
    stripped = text.strip()
    # isascii is O(1) in CPython; the translate it spares is most of a row's cost.
    return stripped if stripped.isascii() else stripped.translate(_INVISIBLE).strip()


def _unquote(text: str) -> str:
    closing = _QUOTE_PAIRS.get(text[:1])
    if closing is not None and len(text) >= 2 and text.endswith(closing):
        return _clean(text[1:-1])
    return text


def _as_id(text: str) -> str | None:
    # isascii first: only ASCII may be lowercased into the pattern's alphabet.
    if not text.isascii():
        return None
    lowered = text.lower()
    return lowered if ID_PATTERN.fullmatch(lowered) else None


def _is_link_or_id(cell: str) -> bool:
    """Whether a lone first cell is data rather than a column name."""
    user_id, reason = parse_id(cell)
    return user_id is not None or reason != REASON_NOT_AN_ID


class IdFile:
    """A checked input file; iterate it (as often as needed) for its ``InputRow``s."""

    def __init__(
        self,
        path: Path,
        *,
        encoding: str,
        fingerprint: str,
        delimiter: str,
        column: str | None,
        column_index: int,
        width: int,
    ) -> None:
        self.path = path
        self.encoding = encoding
        self.fingerprint = fingerprint
        self.column = column
        self.delimiter = delimiter
        self.column_index = column_index
        self.width = width  # fields every non-blank record must have
        self.blank_cells = 0

    def __repr__(self) -> str:
        return (
            f"IdFile(path={str(self.path)!r}, encoding={self.encoding!r}, "
            f"column={self.column!r}, delimiter={self.delimiter!r})"
        )

    def __iter__(self) -> Iterator[InputRow]:
        self.blank_cells = 0
        digest = hashlib.sha256()
        records = _read_records(self.path, self.encoding, self.delimiter, digest)
        if self.column is not None:
            next(records, None)  # the header
        index = self.column_index
        for line, fields in records:
            if len(fields) != self.width:
                expected = (
                    f"the header has {self.width}"
                    if self.column is not None
                    else "the file has one column and no header"
                )
                raise InputError(f"{self.path} line {line}: {len(fields)} fields, but {expected}")
            cell = fields[index]
            if not _clean(cell):
                self.blank_cells += 1
                continue
            user_id, reason = parse_id(cell)
            yield InputRow(line=line, raw=cell, user_id=user_id, reason=reason)
        if digest.hexdigest() != self.fingerprint:
            raise InputError(f"{self.path} changed while it was being read; run again")


def open_id_file(path: Path, id_column: str | None = None) -> IdFile:
    """Check the file and its header; raise InputError (pipeline.errors) with a one-line message."""
    path = Path(path)
    fingerprint, encoding = _scan_bytes(path)
    delimiter = _detect_delimiter(path, encoding)
    records = _read_records(path, encoding, delimiter, None)
    try:
        first = next(records, None)
        if first is None:
            raise InputError(f"{path} is empty: it has no header and no ids")
        header = [_clean(name) for name in first[1]]
        column, index = _choose_column(path, header, first[1], id_column)
        if column is not None and next(records, None) is None:
            raise InputError(f"{path} has a header line but no ids below it")
    finally:
        records.close()
    return IdFile(
        path,
        encoding=encoding,
        fingerprint=fingerprint,
        delimiter=delimiter,
        column=column,
        column_index=index,
        width=len(header),
    )


def _choose_column(
    path: Path, header: list[str], first_cells: list[str], id_column: str | None
) -> tuple[str | None, int]:
    """(column name, index); the name is None when the file has no header."""
    found = ", ".join(header)
    folded = [name.casefold() for name in header]
    if id_column is not None:
        wanted = id_column.strip()
        if wanted in header:
            return wanted, header.index(wanted)
        if wanted.casefold() in folded:
            index = folded.index(wanted.casefold())
            return header[index], index
        raise InputError(f"no column {wanted!r} in {path}; columns found: {found}")
    for candidate in ID_COLUMN_CANDIDATES:
        if candidate.casefold() in folded:
            index = folded.index(candidate.casefold())
            return header[index], index
    if len(header) == 1:
        return (None, 0) if _is_link_or_id(first_cells[0]) else (header[0], 0)
    raise InputError(
        f"no id column in {path} (looked for {', '.join(ID_COLUMN_CANDIDATES)}); "
        f"columns found: {found}. Pass --id-column NAME."
    )


def _scan_bytes(path: Path) -> tuple[str, str]:
    """(sha256 hex, encoding) from one chunked pass; refuse missing, binary, empty, undecodable."""
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a CSV file of ids")
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    is_utf8 = True
    has_text = False
    try:
        with path.open("rb") as stream:
            head = stream.read(4)
            if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise InputError(
                    f"{path} is UTF-16 text (Excel's 'Unicode Text'), not a CSV: "
                    "save it as CSV UTF-8"
                )
            stream.seek(0)
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                if b"\0" in chunk:
                    raise InputError(
                        f"{path} is not a CSV text file (it has NUL bytes: an .xlsx, .xls or "
                        "Parquet file?); open it in Excel and save it as CSV UTF-8"
                    )
                if is_utf8:
                    try:
                        has_text = _has_text(utf8.decode(chunk), has_text)
                    except UnicodeDecodeError:
                        is_utf8 = False
            if is_utf8:
                try:
                    utf8.decode(b"", final=True)
                except UnicodeDecodeError:
                    is_utf8 = False
            if is_utf8:
                encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
            else:
                encoding = "gb18030"
                stream.seek(0)
                has_text = _decodes_as_gb18030(path, stream)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    if not has_text:
        raise InputError(f"{path} is empty: it has no header and no ids")
    return digest.hexdigest(), encoding


def _has_text(decoded: str, seen: bool) -> bool:
    return seen or bool(_clean(decoded))


def _decodes_as_gb18030(path: Path, stream: IO[bytes]) -> bool:
    """Whether the whole stream decodes; returns whether it holds any non-blank text."""
    decoder = codecs.getincrementaldecoder("gb18030")()
    has_text = False
    try:
        while chunk := stream.read(CHUNK_BYTES):
            has_text = _has_text(decoder.decode(chunk), has_text)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise InputError(f"{path} is neither UTF-8 nor GBK text; save it as CSV UTF-8") from error
    return has_text


def _detect_delimiter(path: Path, encoding: str) -> str:
    with _open_text(path, encoding, None) as text:
        for line in _lines(path, text):
            if _clean(line):
                return "\t" if "\t" in line and "," not in line else ","
    return ","


class _HashingReader(io.RawIOBase):
    """Feeds every byte read to ``digest``: proves the file read is the file fingerprinted."""

    def __init__(self, raw: IO[bytes], digest: hashlib._Hash) -> None:
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self._digest.update(data)
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_text(path: Path, encoding: str, digest: hashlib._Hash | None) -> io.TextIOWrapper:
    try:
        raw: IO[bytes] = path.open("rb")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    if digest is not None:
        raw = io.BufferedReader(_HashingReader(raw, digest), CHUNK_BYTES)
    # newline="" hands the csv module the line ends untouched (CRLF, LF or a lone CR).
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _lines(path: Path, text: IO[str]) -> Iterator[str]:
    number = 0
    while line := text.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise InputError(
                f"{path} line {number}: longer than {MAX_LINE_CHARS:,} characters; "
                "is it a CSV of ids?"
            )
        yield line


def _read_records(
    path: Path, encoding: str, delimiter: str, digest: hashlib._Hash | None
) -> Generator[tuple[int, list[str]], None, None]:
    """(first physical line, fields) of every non-blank record, streamed."""
    with _open_text(path, encoding, digest) as text:
        reader = csv.reader(_lines(path, text), delimiter=delimiter, strict=True)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader, None)
            except csv.Error as error:
                hint = " (an unclosed quote?)" if "field limit" in str(error) else ""
                raise InputError(f"{path} line {start}: bad CSV: {error}{hint}") from error
            except UnicodeDecodeError as error:
                raise InputError(f"{path} changed while it was being read; run again") from error
            except OSError as error:
                raise InputError(f"cannot read {path}: {error.strerror or error}") from error
            if fields is None:
                return
            if _is_data(fields):
                yield start, fields


def _is_data(fields: list[str]) -> bool:
    """False for a blank line or a record of empty cells (a spreadsheet's empty row)."""
    if fields and fields[0] and not fields[0].isspace() and fields[0].isascii():
        return True
    return any(_clean(field) for field in fields)
