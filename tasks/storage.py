"""One storage API for local paths and ``s3://bucket/key`` URIs.

Every pipeline step reads and writes through these functions, so a job runs unchanged against a
local folder, AWS S3, or an S3-compatible server (SeaweedFS, MinIO) named by an endpoint setting.

- A URI is a local path (relative or absolute, optionally ``file://``) or ``s3://bucket/key``.
- Writes publish atomically: the bytes go to a temporary name next to the target
  (``<name>.tmp-<uuid>``), then move into place (``os.replace`` locally; a server-side copy and a
  delete of the temporary key on S3), so a reader sees the old object, the whole new one, or none.
- Listings treat the URI as a folder: ``list_prefix("s3://b/videos")`` lists keys under
  ``videos/``, exactly as a local folder would be listed, and never shows temporary names.
- Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
  ``AWS_PROFILE``, instance roles); the endpoint from ``StorageSettings.endpoint_url``, else
  ``ARVID_S3_ENDPOINT_URL``, else boto3's own ``AWS_ENDPOINT_URL``.
- Retries: botocore's "standard" retry mode (or "adaptive", which adds client-side rate limiting)
  retries throttling errors (SlowDown, 429), 5xx and connection errors with exponential backoff
  and jitter, up to ``max_attempts`` attempts in total; 403 and 404 are never retried.
- Errors are ``StorageError`` → ``ObjectNotFound`` / ``AccessDenied``; each message names the URI
  and the remedy. Secrets never reach messages, reprs or logs.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict, Field, SecretStr

# boto3 is imported where S3 is used, not here: loading the config (which imports this module
# for StorageSettings) must not cost boto3's import, and a local-only run never needs it.
if TYPE_CHECKING:
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig

__all__ = [
    "AccessDenied",
    "ObjectNotFound",
    "StorageError",
    "StorageSettings",
    "configure_storage",
    "delete",
    "download_file",
    "exists",
    "get_settings",
    "is_s3",
    "join",
    "list_prefix",
    "open_read",
    "read_bytes",
    "read_text",
    "s3_client",
    "size",
    "upload_file",
    "write_bytes",
    "write_text",
]

logger = logging.getLogger(__name__)

Uri = str | os.PathLike[str]

ENDPOINT_ENV = "ARVID_S3_ENDPOINT_URL"
_S3_SCHEME = "s3://"
_FILE_SCHEME = "file://"
# Temporary names carry a full uuid4 hex so that listings can exclude them without ever hiding
# a real object that merely contains ".tmp" in its name.
_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{32}$")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}
_MIB = 1024 * 1024
# S3 CopyObject refuses sources above 5 GiB; bigger objects need a multipart copy.
_MAX_SINGLE_COPY = 5 * 1024 * _MIB


class StorageError(OSError):
    """A storage operation failed; the message names the URI and what to do about it."""

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri

    def __str__(self) -> str:
        return str(self.args[0])


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object, file or bucket does not exist."""


class AccessDenied(StorageError, PermissionError):
    """The credentials in use may not perform this operation on this URI."""


class StorageSettings(BaseModel):
    """How to reach S3: endpoint, region, retries, timeouts, transfer sizes (credentials optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(
        default=None,
        description=f"S3-compatible endpoint; None falls back to ${ENDPOINT_ENV}, then AWS_ENDPOINT_URL.",
    )
    region: str | None = Field(default=None, description="None uses AWS_DEFAULT_REGION / profile.")
    max_attempts: int = Field(
        default=5, ge=1, description="Total attempts per request, first included."
    )
    retry_mode: Literal["standard", "adaptive"] = "standard"
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    max_pool_connections: int = Field(default=32, ge=1)
    multipart_threshold: int = Field(default=64 * _MIB, ge=5 * _MIB)
    multipart_chunksize: int = Field(default=16 * _MIB, ge=5 * _MIB)
    transfer_concurrency: int = Field(default=8, ge=1)
    # Explicit credentials are for the rare caller that needs a second identity; normally leave
    # them unset and let boto3's chain find them. SecretStr keeps the secret out of reprs.
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None


_settings = StorageSettings()
_clients: dict[tuple[int, StorageSettings, str | None], Any] = {}
_clients_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child, and the
    # parent's clients share its sockets; the child starts afresh.
    global _clients_lock, _clients
    _clients_lock = threading.Lock()
    _clients = {}


os.register_at_fork(after_in_child=_reset_after_fork)


def configure_storage(settings: StorageSettings | None = None) -> None:
    """Set the process-wide default settings (None restores the defaults) and drop cached clients."""
    global _settings
    _settings = settings if settings is not None else StorageSettings()
    # Cached clients hold the credentials they resolved when created; dropping them lets a
    # change of AWS variables or profile take effect on the next call.
    with _clients_lock:
        _clients.clear()
    logger.debug("storage configured: %r", _settings)


def get_settings() -> StorageSettings:
    """The process-wide default settings."""
    return _settings


def s3_client(settings: StorageSettings | None = None) -> Any:
    """The cached boto3 S3 client for these settings in this process (created on first use)."""
    settings = settings if settings is not None else _settings
    endpoint = settings.endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    # Keyed by PID as well: a client must never cross a fork (Ray workers, multiprocessing).
    key = (os.getpid(), settings, endpoint)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _make_client(settings, endpoint)
            _clients[key] = client
    return client


def _make_client(settings: StorageSettings, endpoint: str | None) -> Any:
    import boto3.session
    import botocore.config

    # A fresh Session per client: boto3's default session is not thread-safe to create from.
    session = boto3.session.Session(
        profile_name=settings.profile,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=_secret(settings.secret_access_key),
        aws_session_token=_secret(settings.session_token),
    )
    config = botocore.config.Config(
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_pool_connections,
        s3={"addressing_style": settings.addressing_style},
        user_agent_extra="arvid",
    )
    logger.debug(
        "creating S3 client: endpoint=%s region=%s pid=%d",
        endpoint,
        session.region_name,
        os.getpid(),
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _transfer_config(settings: StorageSettings) -> TransferConfig:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=settings.transfer_concurrency,
    )


# --- URIs -----------------------------------------------------------------------------------


def is_s3(uri: Uri) -> bool:
    """True when the URI names an S3 object or prefix (``s3://...``)."""
    return isinstance(uri, str) and uri.startswith(_S3_SCHEME)


def join(uri: Uri, *parts: str) -> str:
    """Append path parts to a URI with ``/`` (S3) or the OS separator (local)."""
    if is_s3(uri):
        base = str(uri).rstrip("/")
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        return f"{base}/{tail}" if tail else str(uri)
    text = os.fspath(uri)
    if text.startswith(_FILE_SCHEME):
        return _FILE_SCHEME + os.path.join(text[len(_FILE_SCHEME) :], *parts)
    return os.path.join(text, *parts)


def absolute(uri: Uri) -> str:
    """The URI with a relative local path made absolute against this process's working directory.

    Ray workers do not share the driver's working directory, so every local path handed to them
    must be absolute; S3 and file:// URIs pass through unchanged.
    """
    text = os.fspath(uri)
    if is_s3(text) or text.startswith(_FILE_SCHEME):
        return text
    return os.path.abspath(text)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len(_S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not a valid S3 URI — expected s3://bucket/key", uri)
    return bucket, key


def _object_key(uri: str) -> tuple[str, str]:
    bucket, key = _split_s3(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: names a prefix, not an object — add the object's key", uri)
    return bucket, key


def _local_path(uri: Uri) -> str:
    text = os.fspath(uri)
    if text.startswith(_FILE_SCHEME):
        return url2pathname(urlparse(text).path)
    return text


def _temp_name(name: str) -> str:
    return f"{name}.tmp-{uuid.uuid4().hex}"


def _is_temp(name: str) -> bool:
    return _TEMP_SUFFIX.search(name) is not None


# --- errors ---------------------------------------------------------------------------------


def _client_error(uri: str, exc: botocore.exceptions.ClientError) -> StorageError:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code", "") or "")
    status = meta.get("HTTPStatusCode")
    if code == "NoSuchBucket":
        bucket = _split_s3(uri)[0] if is_s3(uri) else "?"
        return ObjectNotFound(
            f"{uri}: bucket {bucket!r} does not exist (404) — create it or fix the URI", uri
        )
    if status == 404 or code in _NOT_FOUND_CODES:
        return ObjectNotFound(f"{uri}: not found (404) — check the bucket and key", uri)
    if status == 403 or code in _DENIED_CODES:
        # The code (e.g. SignatureDoesNotMatch) tells a wrong secret from a missing permission.
        detail = "" if code in ("", "403", "AccessDenied") else f", {code}"
        return AccessDenied(
            f"{uri}: access denied (403{detail}) — check AWS credentials / bucket policy", uri
        )
    attempts = int(meta.get("RetryAttempts", 0)) + 1
    message = error.get("Message") or ""
    return StorageError(
        f"{uri}: S3 error {code or '?'} (HTTP {status}) after {attempts} attempt(s)"
        f"{': ' + message if message else ''} — retry later or check the endpoint",
        uri,
    )


def _find_client_error(exc: BaseException) -> botocore.exceptions.ClientError | None:
    # boto3's upload_file re-raises a ClientError as S3UploadFailedError, keeping it only as
    # the implicit context, so look down the chain for the structured error.
    import botocore.exceptions

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, botocore.exceptions.ClientError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def _errors(uri: Uri) -> Iterator[None]:
    """Translate boto3/OS exceptions into StorageError subclasses that name the URI."""
    name = os.fspath(uri)
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"{name}: no such file — check the path", name) from exc
    except PermissionError as exc:
        raise AccessDenied(f"{name}: permission denied — check file permissions", name) from exc
    except IsADirectoryError as exc:
        raise StorageError(f"{name}: is a directory, not a file", name) from exc
    except Exception as exc:
        error = _s3_error(name, exc)
        if error is None:
            raise
        raise error from exc


def _s3_error(name: str, exc: Exception) -> StorageError | None:
    """The StorageError for a boto3/botocore failure, or None for any other exception."""
    # Only reached once something failed, so the import costs nothing on the happy path.
    import boto3.exceptions
    import botocore.exceptions

    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(
            f"{name}: no AWS credentials found — set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE",
            name,
        )
    unreachable = (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectionClosedError,
    )
    if isinstance(exc, unreachable):
        return StorageError(
            f"{name}: cannot reach the S3 endpoint ({type(exc).__name__}) — check "
            f"{ENDPOINT_ENV} / AWS_ENDPOINT_URL and the network",
            name,
        )
    client_error = _find_client_error(exc)
    if client_error is not None:
        return _client_error(name, client_error)
    if isinstance(exc, botocore.exceptions.BotoCoreError | boto3.exceptions.Boto3Error):
        return StorageError(f"{name}: {type(exc).__name__}: {exc}", name)
    return None


# --- reading --------------------------------------------------------------------------------


def read_bytes(uri: Uri, *, settings: StorageSettings | None = None) -> bytes:
    """The whole object as bytes."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            response = s3_client(settings).get_object(Bucket=bucket, Key=key)
            with response["Body"] as body:
                return body.read()
        with open(_local_path(uri), "rb") as f:
            return f.read()


def read_text(uri: Uri, encoding: str = "utf-8", *, settings: StorageSettings | None = None) -> str:
    """The whole object decoded as text."""
    return read_bytes(uri, settings=settings).decode(encoding)


def exists(uri: Uri, *, settings: StorageSettings | None = None) -> bool:
    """True when an object (or local file) is at the URI; folders and prefixes are not objects."""
    with _errors(uri):
        if is_s3(uri):
            import botocore.exceptions

            bucket, key = _object_key(str(uri))
            try:
                s3_client(settings).head_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                error = _client_error(str(uri), exc)
                # Only "not there" is an answer; a 403 must surface, not read as absent.
                if isinstance(error, ObjectNotFound):
                    return False
                raise error from exc
            return True
        return os.path.isfile(_local_path(uri))


def size(uri: Uri, *, settings: StorageSettings | None = None) -> int:
    """Size of the object in bytes."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            return int(s3_client(settings).head_object(Bucket=bucket, Key=key)["ContentLength"])
        path = _local_path(uri)
        if os.path.isdir(path):
            raise StorageError(f"{uri}: is a directory, not a file", os.fspath(uri))
        return os.stat(path).st_size


def list_prefix(
    uri: Uri, recursive: bool = True, *, settings: StorageSettings | None = None
) -> list[str]:
    """Sorted full URIs of the objects under a folder/prefix; non-recursive adds subfolders as ``.../``."""
    with _errors(uri):
        if is_s3(uri):
            return _list_s3(str(uri), recursive, settings)
        return _list_local(uri, recursive)


def _list_s3(uri: str, recursive: bool, settings: StorageSettings | None) -> list[str]:
    bucket, key = _split_s3(uri)
    # Folder semantics: "s3://b/videos" must not match "videos2/...", as a local folder wouldn't.
    prefix = key if not key or key.endswith("/") else key + "/"
    base = f"{_S3_SCHEME}{bucket}/"
    kwargs: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    found: list[str] = []
    paginator = s3_client(settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(**kwargs):
        for item in page.get("Contents", []):
            name = item["Key"]
            if not name.endswith("/") and not _is_temp(name):
                found.append(base + name)
        for common in page.get("CommonPrefixes", []):
            found.append(base + common["Prefix"])
    return sorted(found)


def _list_local(uri: Uri, recursive: bool) -> list[str]:
    text = os.fspath(uri)
    root = _local_path(uri)
    if not os.path.isdir(root):
        return []
    found: list[str] = []
    if recursive:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(folder, root)
            for name in files:
                if not _is_temp(name):
                    found.append(join(text, name) if rel == "." else join(text, rel, name))
    else:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_dir():
                    found.append(join(text, entry.name) + "/")
                elif not _is_temp(entry.name):
                    found.append(join(text, entry.name))
    return sorted(found)


class _S3RangeReader(io.RawIOBase):
    """Seekable raw reader over one S3 object: streams from the current offset, re-opens on seek."""

    def __init__(self, client: Any, bucket: str, key: str, uri: str, max_attempts: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._uri = client, bucket, key, uri
        self._max_attempts = max_attempts
        with _errors(uri):
            head = client.head_object(Bucket=bucket, Key=key)
        self._size = int(head["ContentLength"])
        # Pin the version we started reading: a replaced object fails loudly (412) instead of
        # splicing two versions together.
        self._etag = head.get("ETag")
        self._pos = 0
        self._body: Any = None
        self._body_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        import botocore.exceptions

        if self._pos >= self._size or len(buffer) == 0:
            return 0
        data = b""
        for attempt in range(1, self._max_attempts + 1):
            try:
                if self._body is None or self._body_pos != self._pos:
                    self._open_body()
                data = self._body.read(len(buffer))
                if data:
                    break
                # An empty read before the end is a stream cut short, not EOF: returning 0
                # here would silently truncate the object for the caller.
                problem = "stream ended early"
            except (
                botocore.exceptions.ReadTimeoutError,
                botocore.exceptions.ResponseStreamingError,
                botocore.exceptions.IncompleteReadError,
                botocore.exceptions.ConnectionClosedError,
            ) as exc:
                problem = type(exc).__name__
            # botocore does not retry body reads, so re-open from the current offset.
            self._close_body()
            logger.debug("re-opening %s at byte %d after %s", self._uri, self._pos, problem)
            if attempt == self._max_attempts:
                raise StorageError(
                    f"{self._uri}: read failed at byte {self._pos} of {self._size} ({problem}) "
                    f"after {attempt} attempt(s) — retry later or check the endpoint",
                    self._uri,
                )
        n = len(data)
        buffer[:n] = data
        self._pos += n
        self._body_pos += n
        return n

    def _open_body(self) -> None:
        import botocore.exceptions

        self._close_body()
        kwargs = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={self._pos}-"}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            with _errors(self._uri):
                self._body = self._client.get_object(**kwargs)["Body"]
        except StorageError as exc:
            cause = exc.__cause__
            if (
                isinstance(cause, botocore.exceptions.ClientError)
                and cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
            ):
                raise StorageError(
                    f"{self._uri}: object changed while being read — read it again", self._uri
                ) from cause
            raise
        self._body_pos = self._pos

    def _close_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_read(
    uri: Uri, *, buffer_size: int = _MIB, settings: StorageSettings | None = None
) -> io.BufferedReader:
    """A seekable binary reader: the local file, or an S3 object streamed with ranged GETs."""
    with _errors(uri):
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            settings = settings if settings is not None else _settings
            raw = _S3RangeReader(s3_client(settings), bucket, key, str(uri), settings.max_attempts)
            return io.BufferedReader(raw, buffer_size=buffer_size)
        return open(_local_path(uri), "rb")


def download_file(uri: Uri, local_path: Uri, *, settings: StorageSettings | None = None) -> None:
    """Copy an object to a local file; the file appears complete or not at all."""
    target = _local_path(local_path)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    temp = _temp_name(target)
    try:
        with _errors(uri):
            if is_s3(uri):
                bucket, key = _object_key(str(uri))
                settings = settings if settings is not None else _settings
                s3_client(settings).download_file(
                    bucket, key, temp, Config=_transfer_config(settings)
                )
            else:
                shutil.copyfile(_local_path(uri), temp)
        os.replace(temp, target)
    finally:
        _remove_quietly(temp)


# --- writing --------------------------------------------------------------------------------


def write_bytes(uri: Uri, data: bytes, *, settings: StorageSettings | None = None) -> None:
    """Publish bytes at the URI atomically (temporary name, then move into place)."""
    logger.debug("write %s (%d bytes)", os.fspath(uri), len(data))
    with _errors(uri):
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            client = s3_client(settings)
            temp = _temp_name(key)
            try:
                client.put_object(Bucket=bucket, Key=temp, Body=data)
                _publish(client, bucket, temp, key, len(data), settings)
            finally:
                _delete_quietly(client, bucket, temp)
            return
        _write_local(_local_path(uri), data)


def write_text(
    uri: Uri, text: str, encoding: str = "utf-8", *, settings: StorageSettings | None = None
) -> None:
    """Publish text at the URI atomically."""
    write_bytes(uri, text.encode(encoding), settings=settings)


def upload_file(local_path: Uri, uri: Uri, *, settings: StorageSettings | None = None) -> None:
    """Publish a local file at the URI atomically; big files go up in parallel multipart chunks."""
    source = _local_path(local_path)
    logger.debug("upload %s -> %s", source, os.fspath(uri))
    with _errors(uri):
        if not os.path.isfile(source):
            raise ObjectNotFound(f"{source}: no such file to upload — check the path", source)
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            settings = settings if settings is not None else _settings
            client = s3_client(settings)
            temp = _temp_name(key)
            try:
                client.upload_file(source, bucket, temp, Config=_transfer_config(settings))
                _publish(client, bucket, temp, key, os.path.getsize(source), settings)
            finally:
                _delete_quietly(client, bucket, temp)
            return
        target = _local_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        temp = _temp_name(target)
        try:
            shutil.copyfile(source, temp)
            _fsync(temp)
            os.replace(temp, target)
        finally:
            _remove_quietly(temp)


def delete(uri: Uri, *, settings: StorageSettings | None = None) -> None:
    """Remove one object; removing what is already gone is not an error (as on S3)."""
    logger.debug("delete %s", os.fspath(uri))
    with _errors(uri):
        if is_s3(uri):
            bucket, key = _object_key(str(uri))
            s3_client(settings).delete_object(Bucket=bucket, Key=key)
            return
        try:
            os.remove(_local_path(uri))
        except FileNotFoundError:
            pass


def _publish(
    client: Any,
    bucket: str,
    temp: str,
    key: str,
    nbytes: int,
    settings: StorageSettings | None,
) -> None:
    # S3 has no rename: copy server-side (no bytes through this process), then drop the temp key.
    settings = settings if settings is not None else _settings
    source = {"Bucket": bucket, "Key": temp}
    if nbytes < min(settings.multipart_threshold, _MAX_SINGLE_COPY):
        client.copy_object(Bucket=bucket, Key=key, CopySource=source)
    else:
        client.copy(source, bucket, key, Config=_transfer_config(settings))


def _write_local(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = _temp_name(path)
    try:
        # "xb": never clobber another writer's temp file; fsync before the rename so a crash
        # cannot publish a name that points at unwritten blocks.
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        _remove_quietly(temp)


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _delete_quietly(client: Any, bucket: str, key: str) -> None:
    # Best effort: the temp key is invisible to listings, and a failed cleanup must not mask
    # the error (or success) of the publish itself.
    import botocore.exceptions

    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        logger.warning("could not delete temporary object s3://%s/%s: %s", bucket, key, exc)
