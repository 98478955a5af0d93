"""The sharded-output protocol on real storage: skip what is complete, publish, commit once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks import storage
from tasks.data.manifest import jsonl, manifest_version, read_latest, read_manifest
from tasks.data.sharded_output import ShardedOutput, ShardRecord


class ItemRecord(ShardRecord):
    """A toy step's record: the rows of its unit."""

    format: int = 3
    rows: list[dict[str, Any]]


def _output(root: Path, digest: str = "d1", **options: Any) -> ShardedOutput[ItemRecord]:
    return ShardedOutput(str(root), digest, ItemRecord, **options)


def test_a_unit_is_complete_only_with_its_record_digest_and_shard_of_the_recorded_size(
    tmp_path: Path,
) -> None:
    output = _output(tmp_path)
    unit = output.unit_id(["a\t1", "b\t2"])
    assert unit == output.unit_id(["a\t1", "b\t2"]) != _output(tmp_path, "d2").unit_id(["a\t1"])
    assert output.complete(unit) is None
    record = output.publish(unit, b"shard bytes", ItemRecord(rows=[{"key": "a"}]))
    assert (record.digest, record.shard, record.bytes) == ("d1", f"shards/{unit}.tar", 11)
    assert output.complete(unit) == record
    assert output.complete_records() == {unit: record}
    # Another digest's output in the same root is foreign work: ignored, not reused.
    assert _output(tmp_path, "d2").complete(unit) is None
    # A shard lost or cut since its record was written makes the unit incomplete again.
    (tmp_path / "shards" / f"{unit}.tar").write_bytes(b"shard")
    assert output.complete(unit) is None
    # A unit that produced nothing is complete without a shard.
    empty = output.publish("empty", None, ItemRecord(rows=[]))
    assert output.complete("empty") == empty and empty.shard is None


def test_an_exclusive_root_refuses_records_of_another_digest(tmp_path: Path) -> None:
    _output(tmp_path, records_dir="records").publish("u", b"x", ItemRecord(rows=[]))
    with pytest.raises(ValueError, match="digest d1, this run d2"):
        _output(tmp_path, "d2", exclusive=True).complete("u")


def test_commit_writes_side_files_then_the_manifest_once_and_points_latest(tmp_path: Path) -> None:
    output = _output(tmp_path, versioned=True)
    rows = [{"key": "b", "n": 2}, {"key": "a", "n": 1}]
    text = jsonl(rows)
    first = output.commit(text, {"notes.txt": "hello\n", "info.json": {"clips": 2}})
    assert first.published and first.version == manifest_version(text)
    assert first.manifest == storage.join(str(tmp_path), first.version, "manifest.jsonl")
    assert read_manifest(first.manifest) == rows and read_latest(str(tmp_path)) == first.version
    info = json.loads((tmp_path / first.version / "info.json").read_text())
    assert info["clips"] == 2 and info["created"]
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = output.commit(text, {"notes.txt": "hello\n", "info.json": {"clips": 2}})
    assert not again.published and again.version == first.version
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files
    other = output.commit(jsonl(rows[:1]))
    assert other.published and read_latest(str(tmp_path)) == other.version != first.version
