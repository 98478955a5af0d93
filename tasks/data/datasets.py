"""Resolve a dataset reference (`<root>/<name>[@version]`) to its manifest and shards."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from tasks import storage
from tasks.data.manifest import LATEST_FILE, MANIFEST_FILE, read_latest, read_manifest


class DatasetRef(BaseModel):
    """One published dataset version: where it lives and its clip rows."""

    root: str  # <output_root>/<name>
    name: str
    version: str
    rows: list[dict[str, Any]]

    @property
    def manifest_uri(self) -> str:
        """The manifest this version was read from."""
        return storage.join(self.root, self.version, MANIFEST_FILE)

    def shard_uri(self, shard: str) -> str:
        """Full URI of a shard named in a manifest row."""
        return storage.join(self.root, shard)

    def rows_by_shard(self) -> dict[str, list[dict[str, Any]]]:
        """Manifest rows grouped by shard (sorted by shard, rows sorted by key)."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            groups[row["shard"]].append(row)
        return {shard: sorted(groups[shard], key=lambda r: r["key"]) for shard in sorted(groups)}


def resolve_dataset(reference: str) -> DatasetRef:
    """Load `<output_root>/<name>` (latest version) or `<output_root>/<name>@<version>`."""
    root, _, version = reference.partition("@")
    root = root.rstrip("/")
    if not version:
        latest = read_latest(root)
        if latest is None:
            raise FileNotFoundError(
                f"{root}: no ingested dataset here (no {LATEST_FILE}); run `arvid ingest` first or give <root>/<name>@<version>"
            )
        version = latest
    manifest = storage.join(root, version, MANIFEST_FILE)
    if not storage.exists(manifest):
        raise FileNotFoundError(f"{manifest}: dataset version {version!r} not found under {root}")
    return DatasetRef(
        root=root, name=root.rsplit("/", 1)[-1], version=version, rows=read_manifest(manifest)
    )
