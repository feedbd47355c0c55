"""DIR|URL, shared by ``run``, ``status``, ``changes`` and ``report``: an output location given
on the command line (a local folder or an object store's URL), and where a URL's checkpoints are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline import storage


class OutLocation(click.Path):
    """``--out``: a folder, as ``click.Path`` always took it (``file:///path`` too), or an
    object store's URL (``s3://bucket/prefix``), kept as canonical text."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and storage.is_remote(value):
            return storage.canonical_url(value)
        if isinstance(value, str) and value[:7].lower() == "file://":
            value = str(storage.file_url_path(value))
        return super().convert(value, param, ctx)


def out_and_state(
    out: Path | str, state_dir: Path | None
) -> tuple[Path | storage.Store, Path | None]:
    """A folder as it is; a URL as its store, with its checkpoints in the local cache folder
    that ``run`` used for it (unless ``--state-dir`` says otherwise)."""
    if isinstance(out, Path):
        return out, state_dir
    return storage.open_store(out), state_dir or storage.default_state_dir(out)


def where(out: Path | str, key: str) -> str:
    return str(out / key) if isinstance(out, Path) else f"{out}/{key}"
