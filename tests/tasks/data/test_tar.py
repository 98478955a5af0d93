"""The one shard reader: webdataset grouping through the storage layer, clear errors for bad shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tasks import storage
from tasks.data.tar import ShardReadError, deterministic_tar, read_samples
from tasks.ingest.quarantine import Reason
from tasks.ingest.sources import _shard_members


def _members() -> list[tuple[str, bytes]]:
    return [
        ("clip0.json", b"{}"),
        ("clip0.tokens.0.npy", b"a"),
        ("clip0.tokens.1.npy", b"b"),
        ("clip1.json", b"{}"),
        ("clip1.tokens.npy", b"c"),
        ("sub/clip2.MP4", b"d"),
    ]


def test_samples_group_at_the_first_dot_of_the_basename_in_shard_order(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    shard.write_bytes(deterministic_tar(_members()))
    assert list(read_samples(str(shard))) == [
        ("clip0", {"json": b"{}", "tokens.0.npy": b"a", "tokens.1.npy": b"b"}),
        ("clip1", {"json": b"{}", "tokens.npy": b"c"}),
        ("sub/clip2", {"MP4": b"d"}),
    ]


def test_samples_stream_from_s3_as_from_a_local_file(s3_env: str, tmp_path: Path) -> None:
    data = deterministic_tar(_members())
    uri = f"s3://{s3_env}/reader/s.tar"
    storage.write_bytes(uri, data)
    (tmp_path / "s.tar").write_bytes(data)
    assert list(read_samples(uri)) == list(read_samples(str(tmp_path / "s.tar")))


@pytest.mark.parametrize("cut", ["truncated", "garbage", "duplicate"])
def test_an_unreadable_shard_raises_shard_read_error_naming_it(tmp_path: Path, cut: str) -> None:
    data = deterministic_tar(_members())
    if cut == "truncated":
        data = data[:700]
    elif cut == "garbage":
        data = b"not a tar at all" * 64
    else:
        data = deterministic_tar([("clip0.json", b"{}"), ("clip0.json", b"{}")])
    shard = tmp_path / "bad.tar"
    shard.write_bytes(data)
    with pytest.raises(ShardReadError, match="bad.tar: not a readable tar shard"):
        list(read_samples(str(shard)))


def test_an_unreadable_input_shard_is_quarantined_as_a_read_error(tmp_path: Path) -> None:
    shard = tmp_path / "00001.tar"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("000000001.mp4")
        info.size = 4096
        tar.addfile(info, io.BytesIO(b"\0" * 4096))
    shard.write_bytes(buffer.getvalue()[:1500])
    inputs, quarantine = _shard_members(str(shard), tmp_path / "staging")
    assert inputs == []
    assert [(q.input, q.reason_code) for q in quarantine] == [("00001.tar", Reason.READ_ERROR)]
    assert "not a readable tar shard" in quarantine[0].reason
