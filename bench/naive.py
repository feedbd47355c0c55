"""Contender (a): the seed's naive pattern, run as a subprocess by the bench.

``python -m bench.naive IDS.csv OUT_DIR --base-url URL --token TOKEN``

One sequential ``requests.get`` per id with the token in the query string, no retry, no
checkpoint; the ``data`` objects are collected in a list and written once at the end with
``polars.DataFrame(rows).write_parquet`` (nested fields stay structs; nothing is flattened).  An
id whose call fails or whose code is not 0 is only counted.  Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import requests

API_PATH = "/api/xiaohongshu/get-user/v4"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids_csv", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    endpoint = args.base_url.rstrip("/") + API_PATH
    rows: list[dict[str, Any]] = []
    ids = failures = 0
    with args.ids_csv.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            ids += 1
            user_id = row["user_id"].strip()
            try:
                response = requests.get(
                    endpoint, params={"token": args.token, "userId": user_id}, timeout=60
                )
                body = response.json()
            except (requests.RequestException, ValueError):
                failures += 1
                continue
            if body.get("code") == 0 and body.get("data"):
                rows.append(body["data"])
            else:
                failures += 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # The seed let polars infer the schema from the rows; with profiles whose optional keys
    # vary, inferring from the first 100 rows drops late keys, so look at every row.
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(args.out_dir / "profiles.parquet")
    wall = round(time.perf_counter() - started, 3)
    print(json.dumps({"ids": ids, "profiles": len(rows), "failures": failures, "wall_s": wall}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
