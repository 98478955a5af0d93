"""The sharded-output protocol: how every step publishes work that must survive being cut short.

An output lives under one root and is shaped by one digest (a hash of everything that decides its
content: config, model version, format). Its work is cut into units with deterministic names;
each unit becomes at most one shard:

    <root>/shards/<unit>.tar         the unit's shard (a webdataset tar), published atomically
    <root>/<records>/<unit>.json     its completion record, written only after the shard
    <root>[/<version>]/<side files>  e.g. counts, the config, the exact model used
    <root>[/<version>]/manifest.jsonl  one row per item; written last: the commit point
    <root>/latest.json               versioned outputs only: names the latest version

1. Plan: name units deterministically (`unit_id` hashes the digest and the unit's inputs), so a
   re-run names the same work the same way.
2. Skip what is complete: a unit is complete when its record exists, carries this digest and
   format, and its shard is on storage with the recorded size (a shard lost since is redone).
   Resuming is "skip what is complete", never "guess where we stopped".
3. Publish: the shard goes first (atomic), then its record. A unit killed in between has no
   record and is redone with the same name and bytes. Only one process publishes a unit.
4. Commit: side files, then the manifest, then latest.json. The manifest's content hash is the
   version; readers that start from the manifest (or latest.json) never see a half-made version.

Ingestion (clip shards), tokenization (token shards) use it; pretraining checkpoints and
evaluation results are the next users: subclass `ShardRecord` with the unit's rows and publish.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from tasks import storage
from tasks.data.manifest import MANIFEST_FILE, manifest_version, point_latest

SHARDS_DIR = "shards"


class ShardRecord(BaseModel):
    """What every completion record holds; a step subclasses it with its own rows and format."""

    format: int
    digest: str = ""  # set by ShardedOutput.publish
    shard: str | None = None  # relative to the root; None when the unit produced nothing
    bytes: int = 0
    sha256: str | None = None


RecordT = TypeVar("RecordT", bound=ShardRecord)

# A side file: text written as is, or a JSON object stamped with "created" (that stamp alone
# never causes a rewrite).
SideFile = str | dict[str, Any]


@dataclass(frozen=True)
class Commit:
    """A committed manifest: its version, where it is, and whether this call published it."""

    version: str
    folder: str
    manifest: str
    published: bool


class ShardedOutput(Generic[RecordT]):
    """One output root shaped by one digest: plan, skip complete units, publish, commit.

    `records_dir` names the folder of completion records; `versioned` puts each manifest in its
    own `<version>/` folder and points `latest.json` at it (otherwise the manifest sits at the
    root); `exclusive` makes a record of another digest an error (the root belongs to one digest)
    instead of foreign work to ignore.
    """

    def __init__(
        self,
        root: str,
        digest: str,
        record_type: type[RecordT],
        *,
        records_dir: str = "records",
        versioned: bool = False,
        exclusive: bool = False,
    ) -> None:
        self.root = root
        self.digest = digest
        self.record_type = record_type
        self.records_dir = records_dir
        self.versioned = versioned
        self.exclusive = exclusive
        self.format = record_type.model_fields["format"].default

    def unit_id(self, identity: Iterable[str], prefix: str = "shard-") -> str:
        """A deterministic unit name from this digest and the unit's inputs (one line each)."""
        text = "\n".join([self.digest, *identity])
        return prefix + hashlib.sha256(text.encode()).hexdigest()[:16]

    def shard_name(self, unit: str) -> str:
        """The shard of a unit, relative to the root (as manifests and records name it)."""
        return f"{SHARDS_DIR}/{unit}.tar"

    def record_uri(self, unit: str) -> str:
        """Where the completion record of a unit lives."""
        return storage.join(self.root, self.records_dir, f"{unit}.json")

    def complete(self, unit: str) -> RecordT | None:
        """The record of `unit` if the unit is complete here, else None."""
        uri = self.record_uri(unit)
        if not storage.exists(uri):
            return None
        return self._verified(uri)

    def complete_records(self) -> dict[str, RecordT]:
        """Every complete unit under the root, by unit name."""
        done: dict[str, RecordT] = {}
        for uri in storage.list_prefix(storage.join(self.root, self.records_dir), recursive=False):
            if uri.endswith(".json"):
                record = self._verified(uri)
                if record is not None:
                    done[uri.rsplit("/", 1)[-1].removesuffix(".json")] = record
        return done

    def _verified(self, uri: str) -> RecordT | None:
        try:
            record = self.record_type.model_validate_json(storage.read_text(uri))
        except ValidationError:
            record = None  # another format or a foreign file: not a record of this protocol
        if record is None or record.digest != self.digest or record.format != self.format:
            if self.exclusive:
                found = record.digest if record is not None else "unreadable"
                raise ValueError(
                    f"{self.root}: holds output made otherwise (record {uri}: digest {found}, "
                    f"this run {self.digest}) — choose another output folder or remove that one"
                )
            return None
        if record.shard is None:
            return record
        # The record is written only after its shard; the size check catches a shard lost since.
        shard = storage.join(self.root, record.shard)
        if storage.exists(shard) and storage.size(shard) == record.bytes:
            return record
        return None

    def publish(self, unit: str, data: bytes | None, record: RecordT) -> RecordT:
        """Publish a unit: its shard atomically (if it has one), then its completion record."""
        shard = None
        if data is not None:
            shard = self.shard_name(unit)
            storage.write_bytes(storage.join(self.root, shard), data)
        record = record.model_copy(
            update={
                "digest": self.digest,
                "shard": shard,
                "bytes": len(data) if data is not None else 0,
                "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
            }
        )
        storage.write_text(self.record_uri(unit), record.model_dump_json())
        return record

    def version_folder(self, version: str) -> str:
        """Where the manifest and side files of a version go."""
        return storage.join(self.root, version) if self.versioned else self.root

    def commit(
        self, manifest_text: str, side_files: Mapping[str, SideFile] | None = None
    ) -> Commit:
        """Write the side files, then the manifest (the commit point), then latest.json.

        Nothing is rewritten whose content is already there, so committing the same output twice
        changes no file; `published` says whether the manifest was new.
        """
        version = manifest_version(manifest_text)
        folder = self.version_folder(version)
        for name, content in (side_files or {}).items():
            _write_side_file(storage.join(folder, name), content)
        manifest = storage.join(folder, MANIFEST_FILE)
        published = _write_if_changed(manifest, manifest_text)
        if self.versioned:
            point_latest(self.root, version)
        return Commit(version=version, folder=folder, manifest=manifest, published=published)


def _write_if_changed(uri: str, text: str) -> bool:
    if storage.exists(uri) and storage.read_text(uri) == text:
        return False
    storage.write_text(uri, text)
    return True


def _write_side_file(uri: str, content: SideFile) -> None:
    if isinstance(content, str):
        _write_if_changed(uri, content)
        return
    if storage.exists(uri):
        existing = json.loads(storage.read_text(uri))
        if {k: v for k, v in existing.items() if k != "created"} == content:
            return
    created = datetime.now(UTC).isoformat(timespec="seconds")
    storage.write_text(
        uri, json.dumps({**content, "created": created}, indent=2, sort_keys=True) + "\n"
    )
