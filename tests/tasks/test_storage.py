"""tasks.storage against a local folder and a real S3 server on loopback (SeaweedFS)."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks import storage
from tasks.storage import AccessDenied, ObjectNotFound, StorageError, StorageSettings
from tests.support.s3_server import LoopbackS3

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _restore_storage_settings() -> Iterator[None]:
    previous = storage.get_settings()
    yield
    storage.configure_storage(previous)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder-like URI: a temp dir, or a prefix in a fresh bucket on the loopback server."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_env")
    return f"s3://{bucket}/store"


def _raw_names(root: str, server: LoopbackS3 | None) -> list[str]:
    """Every name under root as the backend itself sees it, temp names included."""
    if storage.is_s3(root):
        assert server is not None
        bucket, _, prefix = root[len("s3://") :].partition("/")
        pages = (
            server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    return [str(p) for p in Path(root).rglob("*") if p.is_file()]


def _server(request: pytest.FixtureRequest, root: str) -> LoopbackS3 | None:
    return request.getfixturevalue("s3_server") if storage.is_s3(root) else None


def test_write_then_read_round_trips_bytes_and_text(root: str) -> None:
    uri = storage.join(root, "nested", "dir", "blob.bin")
    payload = bytes(range(256)) * 10
    storage.write_bytes(uri, payload)
    assert storage.read_bytes(uri) == payload
    storage.write_text(storage.join(root, "note.txt"), "héllo\n")
    assert storage.read_text(storage.join(root, "note.txt")) == "héllo\n"
    storage.write_bytes(uri, b"")  # overwrite with an empty object
    assert storage.read_bytes(uri) == b""


def test_write_publishes_atomically_and_leaves_no_temp_names(
    root: str, request: pytest.FixtureRequest
) -> None:
    for i in range(3):
        storage.write_bytes(storage.join(root, "a.bin"), b"x" * i)
    storage.write_text(storage.join(root, "b.txt"), "b")
    names = _raw_names(root, _server(request, root))
    assert sorted(os.path.basename(n) for n in names) == ["a.bin", "b.txt"]
    assert not any(".tmp-" in n for n in names)


@dataclass
class _Overlap:
    """Reads that began while a write was in flight, by what they returned."""

    old: int = 0  # the content before the write: the unfinished write was invisible
    new: int = 0  # the written content, whole, before the writer had even returned
    reads: int = 0


def test_reader_never_sees_a_partial_object(root: str) -> None:
    """Readers racing a writer see whole objects only, and both sides of an overlapping write.

    The writer publishes version after version back to back; readers classify each read that
    began while version v was being written: it returned v-1 (old) or v (new), anything else
    fails. The test runs until both were seen (bounded in time), so it cannot pass without reads
    that really overlapped writes.
    """
    uri = storage.join(root, "hot.bin")
    nbytes = MIB // 2
    storage.write_bytes(uri, _versioned(0, nbytes))
    lock = threading.Lock()
    started = [0]  # the last version whose write began
    in_flight = [False]  # whether that write is still running
    overlap = _Overlap()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            with lock:
                started[0] += 1
                in_flight[0] = True
            storage.write_bytes(uri, _versioned(started[0], nbytes))
            with lock:
                in_flight[0] = False

    def reader() -> None:
        while not stop.is_set():
            with lock:
                writing = started[0] if in_flight[0] else None
                floor = started[0] - 1 if in_flight[0] else started[0]
            data = storage.read_bytes(uri)  # never missing: version 0 was published first
            version = int.from_bytes(data[:4], "big")
            assert data == _versioned(version, nbytes), "a read mixed two versions"
            with lock:
                ceiling = started[0]
            assert floor <= version <= ceiling, f"read version {version}, not {floor}..{ceiling}"
            if writing is None or version > writing:
                continue  # began between writes, or later writes landed during the read
            with lock:
                overlap.reads += 1
                if version == writing:
                    overlap.new += 1
                else:
                    overlap.old += 1
                if overlap.old and overlap.new:
                    stop.set()

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(writer), pool.submit(reader), pool.submit(reader)]
        stop.wait(timeout=60)
        stop.set()
        for future in futures:
            future.result()
    assert overlap.old and overlap.new, f"readers never saw both sides of a write: {overlap}"


def _versioned(version: int, nbytes: int) -> bytes:
    """A payload whose every 4-byte word is the version: a mix of two versions shows."""
    return version.to_bytes(4, "big") * (nbytes // 4)


def test_list_prefix_returns_sorted_full_uris_without_temp_names(
    root: str, request: pytest.FixtureRequest
) -> None:
    for name in ["b/2.txt", "a.txt", "b/1.txt", "b/c/3.txt"]:
        storage.write_text(storage.join(root, name), name)
    # A writer that crashed mid-publish leaves a temp name behind; listings must not show it.
    leftover = storage.join(root, "b", "4.txt.tmp-" + "0" * 32)
    server = _server(request, root)
    if server is not None:
        bucket, _, key = leftover[len("s3://") :].partition("/")
        server.client().put_object(Bucket=bucket, Key=key, Body=b"partial")
    else:
        Path(leftover).write_bytes(b"partial")
    # A sibling sharing the name as a string prefix is not inside the folder.
    storage.write_text(root + "2/other.txt", "other")

    expected = [storage.join(root, n) for n in ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt"]]
    assert storage.list_prefix(root) == expected
    assert storage.list_prefix(root + "/") == [
        storage.join(root + "/", n) for n in ["a.txt", "b/1.txt", "b/2.txt", "b/c/3.txt"]
    ]
    assert storage.list_prefix(storage.join(root, "b"), recursive=False) == [
        storage.join(root, "b", "1.txt"),
        storage.join(root, "b", "2.txt"),
        storage.join(root, "b", "c") + "/",
    ]
    assert storage.list_prefix(storage.join(root, "missing")) == []


def test_list_prefix_paginates_past_1000_keys(s3_env: str, s3_server: LoopbackS3) -> None:
    client = s3_server.client()
    keys = [f"many/{i:05d}.txt" for i in range(1001)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_env, Key=k, Body=b"1"), keys))
    first_page = client.list_objects_v2(Bucket=s3_env, Prefix="many/")
    assert first_page["IsTruncated"] and first_page["KeyCount"] == 1000, "server must paginate"
    listed = storage.list_prefix(f"s3://{s3_env}/many")
    assert listed == [f"s3://{s3_env}/{k}" for k in keys]


def test_exists_size_and_delete(root: str) -> None:
    uri = storage.join(root, "x", "obj.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"12345")
    assert storage.exists(uri)
    assert storage.size(uri) == 5
    assert not storage.exists(storage.join(root, "x")), "a folder/prefix is not an object"
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting what is gone is fine, as on S3


def test_missing_object_raises_object_not_found_naming_the_uri(root: str, tmp_path: Path) -> None:
    uri = storage.join(root, "nope.bin")
    calls = [
        lambda: storage.read_bytes(uri),
        lambda: storage.read_text(uri),
        lambda: storage.size(uri),
        lambda: storage.open_read(uri),
        lambda: storage.download_file(uri, tmp_path / "dl" / "nope.bin"),
    ]
    for call in calls:
        with pytest.raises(ObjectNotFound) as info:
            call()
        assert uri in str(info.value)
        assert info.value.uri == uri
        assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "dl" / "nope.bin").exists()


def test_missing_bucket_is_object_not_found_naming_the_bucket(s3_env: str) -> None:
    uri = f"s3://{s3_env}-absent/key.txt"
    with pytest.raises(ObjectNotFound, match=f"{uri}: bucket '{s3_env}-absent' does not exist"):
        storage.read_bytes(uri)


def test_forbidden_object_raises_access_denied_naming_the_uri(
    s3_env: str, s3_server: LoopbackS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not s3_server.supports_access_control:
        pytest.skip(f"{s3_server.backend} does not enforce access control")
    uri = f"s3://{s3_env}/private/report.json"
    storage.write_text(uri, "{}")
    # A valid identity without rights on this bucket, taken from the standard AWS variables.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.outsider_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.outsider_secret_key)
    storage.configure_storage(storage.get_settings())  # drops clients holding the old keys
    for call in [
        lambda: storage.read_bytes(uri),
        lambda: storage.exists(uri),
        lambda: storage.size(uri),
        lambda: storage.write_text(uri, "overwrite"),
        lambda: storage.list_prefix(f"s3://{s3_env}/private"),
    ]:
        with pytest.raises(AccessDenied) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"s3://{s3_env}/private")
        assert "access denied (403" in message and "check AWS credentials" in message


def test_wrong_secret_raises_access_denied(s3_env: str, s3_server: LoopbackS3) -> None:
    if not s3_server.supports_access_control:
        pytest.skip(f"{s3_server.backend} does not check signatures")
    uri = f"s3://{s3_env}/k.txt"
    storage.write_text(uri, "v")
    wrong = StorageSettings(access_key_id=s3_server.access_key, secret_access_key="not-the-secret")
    with pytest.raises(AccessDenied, match="SignatureDoesNotMatch"):
        storage.read_bytes(uri, settings=wrong)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_local_file_raises_access_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    path.write_bytes(b"x")
    path.chmod(0)
    with pytest.raises(AccessDenied, match=str(path)):
        storage.read_bytes(str(path))


def test_upload_and_download_of_a_multipart_file(
    root: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Thresholds at S3's 5 MiB minimum part size: 12 MiB goes up in three parts.
    storage.configure_storage(
        storage.get_settings().model_copy(
            update={"multipart_threshold": 5 * MIB, "multipart_chunksize": 5 * MIB}
        )
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MIB))
    uri = storage.join(root, "videos", "big.bin")
    storage.upload_file(source, uri)
    assert storage.size(uri) == 12 * MIB
    server = _server(request, root)
    if server is not None:
        bucket, _, key = uri[len("s3://") :].partition("/")
        etag = server.client().head_object(Bucket=bucket, Key=key)["ETag"]
        assert etag.strip('"').endswith("-3"), f"expected a 3-part multipart object, ETag {etag}"
    assert not any(".tmp-" in n for n in _raw_names(root, server))
    target = tmp_path / "out" / "big.bin"
    storage.download_file(uri, target)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.bin"]


def test_open_read_streams_seeks_and_feeds_tarfile(root: str) -> None:
    uri = storage.join(root, "shard-000.tar")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key in ["a", "b"]:
            data = key.encode() * 5000
            info = tarfile.TarInfo(f"{key}.mp4")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    storage.write_bytes(uri, buffer.getvalue())

    with storage.open_read(uri) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert members == {"a.mp4": b"a" * 5000, "b.mp4": b"b" * 5000}

    payload = bytes(range(256)) * 64
    storage.write_bytes(uri, payload)
    with storage.open_read(uri, buffer_size=1024) as stream:
        assert stream.read(10) == payload[:10]
        stream.seek(-6, io.SEEK_END)
        assert stream.read() == payload[-6:]
        stream.seek(5000)
        assert stream.tell() == 5000
        assert stream.read(3000) == payload[5000:8000]
        assert stream.read(0) == b""


def test_open_read_fails_loudly_when_the_object_is_replaced_mid_read(s3_env: str) -> None:
    uri = f"s3://{s3_env}/changing.bin"
    storage.write_bytes(uri, b"1" * 100_000)
    with storage.open_read(uri, buffer_size=1024) as stream:
        assert stream.read(10) == b"1" * 10
        storage.write_bytes(uri, b"2" * 100_000)
        stream.seek(50_000)
        with pytest.raises(StorageError, match="changed while being read"):
            stream.read(10)


def test_join_is_s3_and_file_uris(tmp_path: Path) -> None:
    assert storage.join("s3://b/p/", "/x/", "y.txt") == "s3://b/p/x/y.txt"
    assert storage.join("s3://b", "k") == "s3://b/k"
    assert storage.join("data", "a", "b.txt") == os.path.join("data", "a", "b.txt")
    assert (
        storage.is_s3("s3://b/k")
        and not storage.is_s3("data/s3://")
        and not storage.is_s3(tmp_path)
    )
    file_uri = "file://" + str(tmp_path)
    storage.write_text(storage.join(file_uri, "f.txt"), "via file://")
    assert (tmp_path / "f.txt").read_text() == "via file://"
    assert storage.list_prefix(file_uri) == [storage.join(file_uri, "f.txt")]
    with pytest.raises(StorageError, match="not a valid S3 URI"):
        storage.read_bytes("s3:///key")
    with pytest.raises(StorageError, match="names a prefix"):
        storage.read_bytes("s3://bucket/folder/")


def test_endpoint_comes_from_aws_endpoint_url_too(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"s3://{s3_env}/env.txt"
    storage.write_text(uri, "via ARVID_S3_ENDPOINT_URL")
    endpoint = os.environ[storage.ENDPOINT_ENV]
    monkeypatch.delenv(storage.ENDPOINT_ENV)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    # New settings object: the cached client was keyed on the old endpoint.
    storage.configure_storage(StorageSettings(max_attempts=2))
    assert storage.read_text(uri) == "via ARVID_S3_ENDPOINT_URL"


def test_client_is_cached_per_process_and_recreated_after_fork(s3_env: str) -> None:
    uri = f"s3://{s3_env}/forked.txt"
    storage.write_text(uri, "parent wrote")
    parent_client = storage.s3_client()
    assert storage.s3_client() is parent_client
    pid = os.fork()
    if pid == 0:  # child: must leave through os._exit whatever happens
        code = 1
        try:
            fresh = storage.s3_client() is not parent_client
            if fresh and storage.read_text(uri) == "parent wrote":
                storage.write_text(uri, "child wrote")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.read_text(uri) == "child wrote"


def test_secrets_never_appear_in_reprs_errors_or_logs(
    s3_env: str, s3_server: LoopbackS3, caplog: pytest.LogCaptureFixture
) -> None:
    secret = s3_server.secret_key
    settings = StorageSettings(access_key_id=s3_server.access_key, secret_access_key=secret)
    assert secret not in repr(settings) and secret not in str(settings)
    assert secret not in settings.model_dump_json()
    assert secret not in repr(s3_server)
    caplog.set_level(logging.DEBUG)  # root logger: botocore's and urllib3's records too
    uri = f"s3://{s3_env}/logged.txt"
    storage.configure_storage(settings)
    storage.write_text(uri, "content")
    assert storage.read_text(uri) == "content"
    messages = []
    for call in [
        lambda: storage.read_bytes(f"s3://{s3_env}/absent"),
        lambda: storage.read_bytes(
            uri,
            settings=settings.model_copy(update={"access_key_id": s3_server.outsider_access_key}),
        ),
    ]:
        with pytest.raises(StorageError) as info:
            call()
        messages.append(str(info.value))
        messages.append(repr(info.value))
    assert any(r.name.startswith("botocore") for r in caplog.records), "botocore not captured"
    assert any(r.name == storage.__name__ for r in caplog.records), "storage not captured"
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    for text in messages + logged:
        assert secret not in text


class _FlakyS3(http.server.BaseHTTPRequestHandler):
    """Answers the first requests with the queued errors, then 200 with a small body."""

    errors: list[tuple[int, str]] = []
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        if type(self).errors:
            status, code = type(self).errors.pop(0)
            body = f"<Error><Code>{code}</Code><Message>{code} from test</Message></Error>"
            self._reply(status, body.encode(), "application/xml")
        else:
            self._reply(200, b"payload", "application/octet-stream")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_s3() -> Iterator[tuple[type[_FlakyS3], StorageSettings]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyS3)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _FlakyS3.errors, _FlakyS3.requests = [], 0
    settings = StorageSettings(
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region="us-east-1",
        access_key_id="AKFLAKY",
        secret_access_key="flaky-secret",
        max_attempts=3,
    )
    try:
        yield _FlakyS3, settings
    finally:
        server.shutdown()
        server.server_close()


def test_throttling_and_5xx_are_retried_with_backoff(
    flaky_s3: tuple[type[_FlakyS3], StorageSettings],
) -> None:
    handler, settings = flaky_s3
    handler.errors = [(503, "SlowDown"), (500, "InternalError")]
    started = time.monotonic()
    assert storage.read_bytes("s3://bucket/key", settings=settings) == b"payload"
    assert handler.requests == 3
    assert time.monotonic() - started < 10


def test_retries_stop_at_max_attempts_with_an_error_naming_the_uri(
    flaky_s3: tuple[type[_FlakyS3], StorageSettings],
) -> None:
    handler, settings = flaky_s3
    handler.errors = [(503, "SlowDown")] * 5
    with pytest.raises(
        StorageError, match=r"s3://bucket/key: S3 error SlowDown \(HTTP 503\) after 2"
    ):
        storage.read_bytes(
            "s3://bucket/key", settings=settings.model_copy(update={"max_attempts": 2})
        )
    assert handler.requests == 2


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(403, "AccessDenied", AccessDenied), (404, "NoSuchKey", ObjectNotFound)],
)
def test_403_and_404_are_not_retried(
    flaky_s3: tuple[type[_FlakyS3], StorageSettings],
    status: int,
    code: str,
    error: type[StorageError],
) -> None:
    handler, settings = flaky_s3
    handler.errors = [(status, code)]
    with pytest.raises(error, match="s3://bucket/key"):
        storage.read_bytes("s3://bucket/key", settings=settings)
    assert handler.requests == 1


class _CutShortS3(http.server.BaseHTTPRequestHandler):
    """Serves one 100-byte object, but the first GET drops the connection halfway."""

    protocol_version = "HTTP/1.1"
    body = bytes(range(100))
    gets = 0

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()

    def do_GET(self) -> None:
        type(self).gets += 1
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
        part = self.body[start:]
        self.send_response(206)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if type(self).gets == 1:
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(part)

    def log_message(self, *args: object) -> None:
        pass


def test_open_read_resumes_a_stream_cut_short() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutShortS3)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    settings = StorageSettings(
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        region="us-east-1",
        access_key_id="AKCUT",
        secret_access_key="cut-secret",
    )
    try:
        with storage.open_read("s3://bucket/obj", settings=settings) as stream:
            assert stream.read() == _CutShortS3.body
        assert _CutShortS3.gets == 2
    finally:
        server.shutdown()
        server.server_close()


def test_moto_fallback_serves_the_same_api(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moto.server")
    with LoopbackS3(backend="moto") as server:
        bucket = server.make_bucket("arvid-moto")
        settings = StorageSettings(
            endpoint_url=server.endpoint_url,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        uri = f"s3://{bucket}/a/b.txt"
        storage.write_text(uri, "moto", settings=settings)
        assert storage.read_text(uri, settings=settings) == "moto"
        assert storage.list_prefix(f"s3://{bucket}", settings=settings) == [uri]


def test_absolute_anchors_relative_local_paths_and_leaves_uris_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("data/demo@v1") == str(tmp_path / "data" / "demo@v1")
    assert storage.absolute("s3://bucket/prefix") == "s3://bucket/prefix"
    assert storage.absolute("file:///srv/data") == "file:///srv/data"
    assert storage.absolute(str(tmp_path)) == str(tmp_path)
