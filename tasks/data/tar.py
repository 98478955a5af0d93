"""Byte-deterministic tar writing for every shard arvid publishes (clips, tokens)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable


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
