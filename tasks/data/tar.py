"""Webdataset tars, the one shard format arvid writes and reads (clips, tokens, input shards).

A sample is the group of consecutive members that share a key; webdataset's rule splits a member
name at the first dot of its basename: `clip0.tokens.2.npy` is key `clip0`, extension
`tokens.2.npy`. Writing is byte-deterministic; reading goes through the storage layer (local or
s3://) and webdataset's own tar expander and grouper, so shards arvid writes are read exactly as
webdataset loaders read them.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator

from tasks import storage

Sample = tuple[str, dict[str, bytes]]


class ShardReadError(OSError):
    """A shard that is not a readable tar: truncated, corrupt, or holding one member twice."""


def deterministic_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A USTAR tar of (name, data) members in the given order, with fixed owner, mode and mtime,
    so the same content always gives the same bytes (and the same shard hash)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_samples(uri: str) -> Iterator[Sample]:
    """(key, {extension: bytes}) for every sample of one shard, in shard order (streamed).

    Keys keep the member's folder (`a/clip0.mp4` is key `a/clip0`); extensions keep their case.
    Raises storage errors as they are (missing, forbidden) and ShardReadError for a shard whose
    bytes are not a readable tar.
    """
    # Imported here: webdataset pulls in torch, which the light modules of tasks/ must not.
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with storage.open_read(uri) as stream:
        files = tar_file_expander([{"url": uri, "stream": stream}], eof_value=None)
        try:
            for sample in group_by_keys(files, lcase=False):
                key = sample.pop("__key__")
                yield key, {ext: data for ext, data in sample.items() if not ext.startswith("__")}
        except storage.StorageError:
            raise
        except Exception as exc:  # webdataset re-raises tarfile, zlib and its own ValueErrors
            # webdataset appends the stream and url to the error's args; keep the message only.
            message = str(exc.args[0]).partition(" @ ")[0] if exc.args else ""
            raise ShardReadError(
                f"{uri}: not a readable tar shard ({type(exc).__name__}: {message})"
            ) from exc
