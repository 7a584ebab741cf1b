"""The SeaweedFS test server itself (tests/seaweed.py, tests/remote_fixtures.py): it starts
and stops quickly, listens on the loopback only, keeps its data across a restart and
across a SIGKILL, and a dead one makes obstore fail fast with the options it gives."""

from __future__ import annotations

import time
from pathlib import Path

import obstore
import pytest
from obstore.exceptions import GenericError

from tests.remote_fixtures import RemotePrefix
from tests.seaweed import LOOPBACK, Server, listening_ports, pick_ports


def test_start_and_stop_in_under_ten_seconds(tmp_path: Path) -> None:
    began = time.monotonic()
    server = Server.start(tmp_path, "startstop", "key", "secret")
    try:
        assert server.running
        pid = server.pid
        store = server.store()
        obstore.put(store, "k", b"v")
        assert bytes(obstore.get(store, "k").bytes()) == b"v"
    finally:
        server.stop()
    total = time.monotonic() - began
    assert total < 10, f"start {server.start_seconds:.1f} s, stop {server.stop_seconds:.1f} s"
    assert not server.running
    assert not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    assert server.socket_files() == []


def test_bad_bucket_name_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bucket"):
        Server.start(tmp_path, "b1", "key", "secret")  # weed would only log a warning


def test_listens_on_loopback_only_on_the_chosen_ports(seaweed: Server) -> None:
    found = listening_ports(seaweed.pid)
    assert {address for address, _ in found} == {LOOPBACK}
    assert {port for _, port in found} == seaweed.ports.all()
    assert len(seaweed.ports.all()) == 10  # master, volume, filer, s3, admin: HTTP + gRPC
    assert seaweed.ports.admin_grpc == seaweed.ports.admin + 10000
    assert seaweed.endpoint == f"http://127.0.0.1:{seaweed.ports.s3}"


def test_pick_ports_gives_distinct_free_ports() -> None:
    for _ in range(20):
        ports = pick_ports()
        assert len(ports.all()) == 10
        assert ports.admin_grpc <= 65535


def test_restart_keeps_the_data(seaweed: Server, remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    put = obstore.put(store, "kept", b"before restart")
    ports = seaweed.ports
    seaweed.restart()
    assert seaweed.ports == ports
    assert seaweed.stop_seconds < 6
    assert bytes(obstore.get(store, "kept").bytes()) == b"before restart"
    assert obstore.head(store, "kept")["e_tag"] == put["e_tag"]


def test_kill_then_restart(seaweed: Server, remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    obstore.put(store, "acked", b"acknowledged before the kill")
    pid = seaweed.pid
    seaweed.kill()
    try:
        assert not Path(f"/proc/{pid}").exists()
        assert seaweed.socket_files() == []  # the killed server's stale sockets are gone
        # A dead server: connection refused, a GenericError, fast with these options.
        began = time.monotonic()
        with pytest.raises(GenericError, match="error sending request"):
            obstore.get(store, "acked")
        assert time.monotonic() - began < 3
    finally:
        seaweed.restart()
    assert bytes(obstore.get(store, "acked").bytes()) == b"acknowledged before the kill"
    obstore.put(store, "after", b"x")
    assert bytes(obstore.get(store, "after").bytes()) == b"x"
