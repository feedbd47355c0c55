"""Fixtures shared by every test module.

``sandbox`` is a factory: ``sandbox(**options) -> Sandbox`` starts a fake Just One API on
127.0.0.1 (options as ``SandboxConfig.from_options`` takes them, strings or values, or a ready
``config=``) and stops every sandbox it started when the test ends.  ``moto_server`` and ``s3``
(``tests/s3server.py``) are an S3 API on 127.0.0.1 and a bucket in it.  Tests never reach a
non-loopback address.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
from hypothesis import settings

from pipeline.sandbox import Sandbox, SandboxConfig
from tests.s3server import moto_server, s3

__all__ = ["moto_server", "s3"]  # fixtures, registered by being imported here

# `make test` (CI too) runs the property tests on a fixed sequence of examples, so a red run can
# be replayed and a green commit stays green; `make fuzz` draws new examples every run.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))


class SandboxFactory(Protocol):
    def __call__(self, config: SandboxConfig | None = None, **options: Any) -> Sandbox: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    # `make soak` passes this; the crash tests read it with request.config.getoption.
    parser.addoption(
        "--soak-kills",
        type=int,
        default=None,
        help="number of random SIGKILL-and-resume rounds for the crash soak test",
    )


@pytest.fixture
def sandbox() -> Iterator[SandboxFactory]:
    """Start sandboxes on demand; all are stopped at teardown, even when the test fails."""
    started: list[Sandbox] = []

    def start(config: SandboxConfig | None = None, **options: Any) -> Sandbox:
        if config is not None and options:
            raise TypeError("pass either config= or options, not both")
        box = Sandbox(config if config is not None else SandboxConfig.from_options(**options))
        box.start()
        started.append(box)
        return box

    yield start
    for box in reversed(started):
        box.stop()
