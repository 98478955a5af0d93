"""A mutual-exclusion lock on a local path or an s3:// key, for read-decide-write sections.

MLflow has no transactions, so promotion holds one of these while it reads the aliases, decides,
and moves them. What each kind guarantees, honestly:

- **Local path** (`fcntl.flock` on the file): exclusive between processes and threads of one
  machine, and between machines only on a filesystem whose flock is coherent (a local disk; not
  NFS in general — use s3:// there). The kernel drops the lock when its holder dies, so there are
  no stale local locks: `stale_after_s` does not apply, and a waiter gives up after `timeout_s`
  naming the holder (pid, host) written in the file.
- **s3:// key**: taken by a conditional create (`PutObject` with `If-None-Match: *`), which AWS S3
  and SeaweedFS refuse with 412/409 while the key exists, so exactly one concurrent writer wins.
  A holder that dies leaves the object behind: once it is older than `stale_after_s` by the
  *server's* clock (`Date` minus `Last-Modified`, so machines' clock skew does not matter), a
  waiter deletes exactly that object (`If-Match` its ETag) and competes again. The guarantee thus
  assumes a live holder finishes within `stale_after_s`; a holder paused longer (suspended VM,
  partition) may overlap a successor. `HeldLock.verify()` before writing narrows that window to
  the writes themselves, and release deletes only the holder's own object. An S3 endpoint that
  ignores `If-None-Match` gives no exclusion at all: check yours (tests/tasks/promote does).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from tasks import storage
from tasks.storage import StorageError

if TYPE_CHECKING:
    import botocore.exceptions

logger = logging.getLogger(__name__)

_CONFLICT_STATUS = {409, 412}  # 412 PreconditionFailed; 409 ConditionalRequestConflict (AWS)


class LockTimeout(StorageError, TimeoutError):
    """The lock stayed held by someone else for the whole timeout."""


class LockLost(StorageError):
    """The lock was taken over (judged stale) while this holder still worked under it."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: written into the lock so that a waiter can name it."""

    token: str
    purpose: str
    host: str
    pid: int
    acquired_at: str  # ISO 8601, UTC, the holder's clock

    @staticmethod
    def new(purpose: str) -> LockHolder:
        """A holder record for this process."""
        return LockHolder(
            token=uuid.uuid4().hex,
            purpose=purpose,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> str:
        """The lock file's content."""
        return json.dumps(self.__dict__, sort_keys=True)

    @staticmethod
    def describe(text: str) -> str:
        """A lock file's content in words, for error messages (tolerates junk)."""
        try:
            data = json.loads(text)
            return (
                f"{data['purpose']} by pid {data['pid']} on {data['host']} since "
                f"{data['acquired_at']}"
            )
        except (ValueError, KeyError, TypeError):
            return "an unknown holder"


class HeldLock:
    """A lock this process holds; `verify()` raises LockLost if it no longer does."""

    def __init__(self, uri: str, holder: LockHolder, etag: str | None = None) -> None:
        self.uri = uri
        self.holder = holder
        self._etag = etag

    def verify(self) -> None:
        """Raise LockLost when an s3:// lock was taken over (local locks cannot be)."""
        if not storage.is_s3(self.uri):
            return
        import botocore.exceptions  # only S3 locks need boto; local ones stay light

        bucket, key = _split(self.uri)
        try:
            etag = storage.s3_client().head_object(Bucket=bucket, Key=key).get("ETag")
        except botocore.exceptions.ClientError as exc:
            if _status(exc) != 404:
                raise _storage_error(self.uri, exc) from exc
            etag = None
        if etag != self._etag:
            raise LockLost(
                f"{self.uri}: the lock was taken over while held (judged stale) — nothing was "
                "written; run again, and raise promote.lock.stale_after_s if holders are slow",
                self.uri,
            )


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"{uri}: a lock needs an object key, s3://<bucket>/<key>")
    return bucket, key


def _status(exc: botocore.exceptions.ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _storage_error(uri: str, exc: botocore.exceptions.ClientError) -> StorageError:
    code = exc.response.get("Error", {}).get("Code", "?")
    return StorageError(
        f"{uri}: lock operation failed ({code}, HTTP {_status(exc)}) — check that the bucket "
        "exists and these credentials may read, write and delete in it",
        uri,
    )


def _sleep(attempt: int, deadline: float) -> None:
    # Capped exponential backoff with jitter: waiters must not poll in lockstep.
    pause = min(0.5, 0.02 * 2**attempt) * random.uniform(0.5, 1.5)
    time.sleep(max(0.0, min(pause, deadline - time.monotonic())))


@contextmanager
def hold_lock(uri: str, timeout_s: float, stale_after_s: float, purpose: str) -> Iterator[HeldLock]:
    """Hold the lock at `uri` (a local path or s3:// key) for the `with` block; see the module."""
    holder = LockHolder.new(purpose)
    if storage.is_s3(uri):
        with _hold_s3(uri, holder, timeout_s, stale_after_s) as held:
            yield held
    else:
        with _hold_local(uri, holder, timeout_s) as held:
            yield held


@contextmanager
def _hold_local(uri: str, holder: LockHolder, timeout_s: float) -> Iterator[HeldLock]:
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Never unlinked: a waiter that opened the old inode would lock a file nobody else sees.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        who = LockHolder.describe(f.read())
                    raise LockTimeout(
                        f"{uri}: still locked after {timeout_s:g} s ({who}) — another promotion "
                        "is running; wait for it, or raise promote.lock.timeout_s",
                        uri,
                    ) from None
                _sleep(attempt, deadline)
                attempt += 1
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.to_json().encode(), 0)
        try:
            yield HeldLock(uri, holder)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _server_age_s(head: dict[str, Any]) -> float:
    """Age of an object by the server's clock (its Date header), falling back to ours."""
    modified = head["LastModified"]
    date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    return (now - modified).total_seconds()


def _take_over_if_stale(client: Any, uri: str, stale_after_s: float) -> str | None:
    """Delete the lock object at `uri` if it is stale; returns who held it when it is still live."""
    import botocore.exceptions  # only S3 locks need boto; local ones stay light

    bucket, key = _split(uri)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        current = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])
        who = LockHolder.describe(current["Body"].read().decode("utf-8", "replace"))
    except botocore.exceptions.ClientError as exc:
        if _status(exc) in (404, 412):
            return None  # released or replaced meanwhile: just try again
        raise _storage_error(uri, exc) from exc
    age = _server_age_s(head)
    if age <= stale_after_s:
        return who
    try:
        # If-Match: remove exactly the stale object, never a successor's fresh one.
        client.delete_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])
        logger.warning(
            "%s: took over a stale lock (%s, %.0f s old > %g s)", uri, who, age, stale_after_s
        )
    except botocore.exceptions.ClientError as exc:
        if _status(exc) not in (404, 412):
            raise _storage_error(uri, exc) from exc
    return None


@contextmanager
def _hold_s3(
    uri: str, holder: LockHolder, timeout_s: float, stale_after_s: float
) -> Iterator[HeldLock]:
    import botocore.exceptions  # only S3 locks need boto; local ones stay light

    bucket, key = _split(uri)
    client = storage.s3_client()
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            response = client.put_object(
                Bucket=bucket, Key=key, Body=holder.to_json().encode(), IfNoneMatch="*"
            )
            etag = response["ETag"]
            break
        except botocore.exceptions.ClientError as exc:
            if _status(exc) not in _CONFLICT_STATUS:
                raise _storage_error(uri, exc) from exc
        who = _take_over_if_stale(client, uri, stale_after_s)
        if who is None:
            continue
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{uri}: still locked after {timeout_s:g} s ({who}) — another promotion is "
                f"running; wait for it, or if its holder died, it is taken over once older than "
                f"promote.lock.stale_after_s={stale_after_s:g} s",
                uri,
            )
        _sleep(attempt, deadline)
        attempt += 1
    try:
        yield HeldLock(uri, holder, etag)
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) in (404, 412):
                logger.warning("%s: the lock was taken over while held; left the new one", uri)
            else:
                raise _storage_error(uri, exc) from exc
