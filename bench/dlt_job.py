"""Contender (b): the same job done the way dlt documents it, run as a subprocess by the bench.

``python -m bench.dlt_job IDS.csv OUT_DIR --base-url URL --token TOKEN --workers 16``

What it follows from dlt's documentation (dlt 1.x, "Performance → Parallel extraction" and
"Requests helper"):

- A plain resource yields the ids; a ``@dlt.transformer(parallelized=True)`` that *returns* one
  item makes one call per id in dlt's extract thread pool, sized by ``[extract] workers``
  (``EXTRACT__WORKERS``, set from ``--workers``; ``max_parallel_items`` is raised to match so the
  pool, not the default cap of 20, decides).
- Calls go through ``dlt.sources.helpers.requests.Client``: a requests session that retries
  HTTP 429/5xx and connection errors with exponential back-off (dlt's defaults: 5 attempts,
  factor 1, ``Retry-After`` honoured).  The API answers HTTP 200 with the business code in the
  body, so a ``retry_condition`` predicate adds the retryable codes (301, 302, 500, 503), as
  dlt's docs show for body-based retries.  What still fails goes to a ``failures`` table.
- ``pipeline.run(..., loader_file_format="parquet")`` into the ``filesystem`` destination with a
  local ``bucket_url``; dlt's normalizer flattens nested objects and unnests ``tags`` and
  ``interactions`` into child tables (the equivalent of our three tables).

Prints one JSON line on stdout: ids read, profiles returned, failures, wall seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RETRY_CODES = frozenset({301, 302, 500, 503})
API_PATH = "/api/xiaohongshu/get-user/v4"


def _business_code(response: Any) -> int | None:
    try:
        code = response.json().get("code")
        return int(code)
    except (ValueError, TypeError, AttributeError):
        return None


def _retry_on_code(response: Any, exception: BaseException | None) -> bool:
    """dlt retry predicate: retry when the body's business code is a transient one."""
    if response is None:
        return False
    return _business_code(response) in RETRY_CODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids_csv", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)

    # dlt reads its configuration from the environment; set before dlt is imported.
    os.environ["EXTRACT__WORKERS"] = str(args.workers)
    os.environ["EXTRACT__MAX_PARALLEL_ITEMS"] = str(max(20, args.workers))
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

    import dlt
    from dlt.sources.helpers.requests import Client

    started = time.perf_counter()
    client = Client(request_max_attempts=5, retry_condition=_retry_on_code)
    endpoint = args.base_url.rstrip("/") + API_PATH
    counts = {"ids": 0, "profiles": 0, "failures": 0}
    counts_lock = threading.Lock()  # the transformer runs in dlt's worker threads

    @dlt.resource(name="ids", selected=False)
    def ids() -> Iterator[str]:
        with args.ids_csv.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                counts["ids"] += 1
                yield row["user_id"].strip()

    @dlt.transformer(name="profiles", parallelized=True, data_from=ids)
    def profiles(user_id: str) -> Any:
        try:
            response = client.get(endpoint, params={"token": args.token, "userId": user_id})
            code = _business_code(response)
            if code == 0:
                data = response.json()["data"]
                with counts_lock:
                    counts["profiles"] += 1
                return data
            reason = f"code {code}"
        except Exception as exc:  # the retrying client gave up: record the id, go on
            reason = type(exc).__name__
        with counts_lock:
            counts["failures"] += 1
        return dlt.mark.with_table_name({"user_id": user_id, "reason": reason}, "failures")

    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt",
        pipelines_dir=str(args.out_dir / "_dlt_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=str(args.out_dir / "data")),
        dataset_name="xhs",
    )
    pipeline.run(profiles, loader_file_format="parquet")
    result = {**counts, "wall_s": round(time.perf_counter() - started, 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
