"""An S3 API on 127.0.0.1 for the object-storage tests: moto's server, in this process.

``moto_server`` (session) starts ``moto.server.ThreadedMotoServer`` on a free port of
127.0.0.1 (port 0; ``get_host_and_port`` tells which one it got) and stops it at the end.
``s3`` (per test) points the AWS environment at it and nowhere else: ``AWS_ENDPOINT_URL`` is the
server, the keys are fake (``SECRET_KEY`` is what every test looks for in outputs), no profile,
no config or credentials file, no instance metadata; then it makes a bucket of its own.  Tests
never reach AWS.  Without moto (it is in the dev group) every test using them is skipped and
says why.

``S3.read_dataset`` reads a finished snapshot back the way a reader would, following its
manifest, with each of polars (object_store's own client, ``storage_options``), pyarrow
(``pyarrow.fs.S3FileSystem``) and DuckDB (its httpfs extension would be downloaded at load
time, and there is no internet here: DuckDB reads through s3fs with ``register_filesystem``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl
import pytest

ACCESS_KEY: Final = "AKIAMOTOFAKE7Q3XW2ZD"
# Fake, but distinctive: a test that finds it in an output has found a leak.
SECRET_KEY: Final = "moto-fake-secret-Zq81xK7Vw3pL0c4N"
REGION: Final = "us-east-1"


@dataclass(frozen=True)
class Dataset:
    """One snapshot as three readers see it: every table's rows, by reader."""

    manifest: dict[str, Any]
    polars: dict[str, pl.DataFrame]
    pyarrow: dict[str, pl.DataFrame]
    duckdb: dict[str, pl.DataFrame]


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    tmp: Path

    def url(self, prefix: str = "out") -> str:
        return f"s3://{self.bucket}/{prefix}"

    @functools.cached_property
    def _fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": REGION},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def filesystem(self) -> Any:
        """An s3fs client of its own (no cached listings, the fixture's keys whatever the
        environment says), as an outside reader would have."""
        return self._fs

    def objects(self, prefix: str = "") -> list[str]:
        """Every object under ``bucket/prefix``, relative to the bucket."""
        fs = self.filesystem()
        base = f"{self.bucket}/{prefix}".rstrip("/")
        return sorted(p[len(self.bucket) + 1 :] for p in fs.find(base))

    def read(self, key: str) -> bytes:
        data: bytes = self.filesystem().cat_file(f"{self.bucket}/{key}")
        return data

    def polars_options(self) -> dict[str, str]:
        return {
            "aws_endpoint_url": self.endpoint,
            "aws_allow_http": "true",
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "aws_region": REGION,
        }

    def arrow_filesystem(self) -> Any:
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region=REGION,
            endpoint_override=self.endpoint,
            scheme="http",
        )

    def read_dataset(self, prefix: str, snapshot: str) -> Dataset:
        """The snapshot's tables as polars, pyarrow and DuckDB read them from the files its
        manifest lists (never a glob: an orphan of a crash may sit in a partition)."""
        import duckdb
        import pyarrow.parquet as pq

        manifest = json.loads(self.read(f"{prefix}/_manifests/dt={snapshot}.json"))
        by_polars, by_arrow, by_duckdb = {}, {}, {}
        arrow_fs = self.arrow_filesystem()
        con = duckdb.connect()
        con.register_filesystem(self.filesystem())
        for table, entries in manifest["tables"].items():
            keys = [f"{self.bucket}/{prefix}/{e['path']}" for e in entries]
            by_polars[table] = pl.read_parquet(
                [f"s3://{k}" for k in keys], storage_options=self.polars_options()
            )
            arrow = pq.ParquetDataset(keys, filesystem=arrow_fs).read()
            by_arrow[table] = pl.from_arrow(arrow)  # type: ignore[assignment]
            uris = ", ".join(f"'s3://{k}'" for k in keys)
            by_duckdb[table] = con.sql(
                f"SELECT * FROM read_parquet([{uris}], hive_partitioning = false)"
            ).pl()
        con.close()
        return Dataset(manifest, by_polars, by_arrow, by_duckdb)

    @contextlib.contextmanager
    def read_only_credentials(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        """Switch moto's IAM checks on and the environment to a user that may only read:
        every write is refused with AccessDenied.  Yields that user's secret key."""
        import botocore.session
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        iam = botocore.session.get_session().create_client("iam", region_name=REGION)
        user = f"reader-{secrets.token_hex(3)}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
            ],
        }
        iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        iam.close()
        # In-process server: its settings are this module's (the /moto-api/reset-auth endpoint
        # sets the same two values).
        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        yield str(key["SecretAccessKey"])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 (and IAM) on 127.0.0.1, for the whole session: its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.skip(
            f"moto[server] is not installed ({exc}); the dev group has it: uv sync --group dev"
        )
    # One line per request otherwise; failures still show.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3:
    """The AWS environment pointed at moto only, and a new bucket."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (the s3 extra, or the dev group)")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    # No file of this machine's user, and never the instance metadata service (169.254.169.254).
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    # A remote --out's default state folder: under the test's folder, not ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    bucket = f"test-{secrets.token_hex(4)}"
    _bucket_maker(moto_server).create_bucket(Bucket=bucket)
    return S3(moto_server, bucket, tmp_path)


@functools.cache
def _bucket_maker(endpoint: str) -> Any:
    """One botocore client for the session: a new one costs 0.2 s (it loads S3's model)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
