"""Pytest fixtures for tests against a real S3-compatible server (tests/seaweed.py).

``seaweed``: one ``weed mini`` for the whole session, started the first time a test asks
for it (a session that runs no such test starts none), stopped at the session's end;
a test may restart or kill it, and must leave it running (restarted) when it ends.
``remote_prefix``: a fresh ``s3://<bucket>/<unique prefix>`` for each test, with the
options that reach the session's server; what the test left there is deleted after it.

A test module uses them by importing them (``from tests.remote_fixtures import seaweed,
remote_prefix``), until tests/conftest.py imports them for every module.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.seaweed import CLIENT_ENV_HAZARDS, Server

BUCKET = "blobcache-test"
ACCESS_KEY = "blobcache-test"


class _Shared:
    """The one server of the process. Each module that imports ``seaweed`` gets a fixture
    of its own (pytest keys a session fixture by where it is found), so the server is
    kept here: the first user starts it, the last one stops it."""

    server: Server | None = None
    users = 0

    @classmethod
    def acquire(cls, factory: pytest.TempPathFactory) -> Server:
        if cls.server is None:
            cls.server = Server.start(
                factory.mktemp("seaweed"),
                bucket=BUCKET,
                access_key=ACCESS_KEY,
                secret_key=uuid.uuid4().hex,
            )
        elif not cls.server.running:  # a test killed it and did not restart it
            cls.server.restart()
        cls.users += 1
        return cls.server

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.server is not None:
            cls.server.stop()
            cls.server = None


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as env:
        # While the server runs, nothing in the environment may point obstore elsewhere
        # (an endpoint override, a session token, a proxy: tests/seaweed.py tells why).
        for name in CLIENT_ENV_HAZARDS:
            env.delenv(name, raising=False)
        server = _Shared.acquire(tmp_path_factory)
        try:
            yield server
        finally:
            _Shared.release()


@dataclass(frozen=True)
class RemotePrefix:
    """A test's own place in the session's bucket."""

    server: Server
    bucket: str
    prefix: str  # no leading or trailing slash

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def options(self) -> dict[str, Any]:
        """For ``S3Store.from_url(self.url, **self.options)``."""
        return self.server.options

    def store(self, **overrides: Any) -> Any:
        """An ``S3Store`` rooted at this prefix; ``overrides`` replace options."""
        from obstore.store import S3Store

        return S3Store.from_url(self.url, **{**self.options, **overrides})


@pytest.fixture
def remote_prefix(seaweed: Server, request: pytest.FixtureRequest) -> Iterator[RemotePrefix]:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    place = RemotePrefix(seaweed, seaweed.bucket, f"t/{name}-{uuid.uuid4().hex[:12]}")
    yield place
    if seaweed.running:  # a test that killed the server and failed leaves it dead
        _delete_all(place)


def _delete_all(place: RemotePrefix) -> None:
    import obstore

    store = place.store()
    paths = [meta["path"] for batch in obstore.list(store) for meta in batch]
    if paths:
        obstore.delete(store, paths)
