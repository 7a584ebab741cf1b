"""Pytest fixtures for tests against a real S3-compatible server (tests/seaweed.py).

``seaweed``: one ``weed mini`` for the whole session, started the first time a test asks
for it (a session that runs no such test starts none), stopped at the session's end;
a test may restart or kill it, and must leave it running (restarted) when it ends.
``remote_prefix`` (and its short name ``place``): a fresh ``s3://<bucket>/<unique prefix>``
for each test, with the options that reach the session's server; what the test left there
is deleted after it. ``open_with(place, path, **options)``: a store on it.

tests/conftest.py loads this module as a plugin: every test module has them by name.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.seaweed import CLIENT_ENV_HAZARDS, Server

BUCKET = "blobcache-test"
ACCESS_KEY = "blobcache-test"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as env:
        # While the server runs, nothing in the environment may point obstore elsewhere
        # (an endpoint override, a session token, a proxy: tests/seaweed.py tells why).
        for name in CLIENT_ENV_HAZARDS:
            env.delenv(name, raising=False)
        server = Server.start(
            tmp_path_factory.mktemp("seaweed"),
            bucket=BUCKET,
            access_key=ACCESS_KEY,
            secret_key=uuid.uuid4().hex,
        )
        try:
            yield server
        finally:
            server.stop()


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
    if not seaweed.running:  # an earlier test killed it and failed before its restart
        seaweed.restart()
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    place = RemotePrefix(seaweed, seaweed.bucket, f"t/{name}-{uuid.uuid4().hex[:12]}")
    yield place
    if seaweed.running:  # a test that killed the server and failed leaves it dead
        _delete_all(place)


@pytest.fixture
def place(remote_prefix: RemotePrefix) -> RemotePrefix:
    return remote_prefix


def open_with(place: RemotePrefix, path: str | os.PathLike[str], **options: Any) -> Any:
    """A ``BlobCache`` at ``path`` with ``place`` as its remote tier."""
    from blobcache import BlobCache

    return BlobCache(path, remote=place.url, remote_options=place.options, **options)


def _delete_all(place: RemotePrefix) -> None:
    import obstore

    store = place.store()
    paths = [meta["path"] for batch in obstore.list(store) for meta in batch]
    if paths:
        obstore.delete(store, paths)
