"""Manifests: one JSON row per item, canonical JSONL, versioned by content hash, `latest.json`.

A manifest's bytes define its version (`manifest_version`), so rows are written canonically:
sorted keys, no spaces, one row per line, a trailing newline. `latest.json` beside the version
folders names the latest version of a versioned output (ingested datasets).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from tasks import storage

MANIFEST_FILE = "manifest.jsonl"
LATEST_FILE = "latest.json"


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """Canonical JSON lines: sorted keys, one row per line, trailing newline."""
    return "".join(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n" for row in rows)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Rows of JSON-lines text (blank lines skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """Rows of a manifest (or any JSONL file) on storage."""
    return parse_jsonl(storage.read_text(uri))


def manifest_version(manifest_text: str) -> str:
    """The version of a manifest: the content hash of its canonical text."""
    return hashlib.sha256(manifest_text.encode()).hexdigest()[:16]


def read_latest(root: str) -> str | None:
    """The version `<root>/latest.json` names, or None when nothing was published under root."""
    uri = storage.join(root, LATEST_FILE)
    if not storage.exists(uri):
        return None
    return str(json.loads(storage.read_text(uri))["version"])


def point_latest(root: str, version: str) -> bool:
    """Make `<root>/latest.json` name `version`; True when it changed."""
    if read_latest(root) == version:
        return False
    storage.write_text(storage.join(root, LATEST_FILE), json.dumps({"version": version}))
    return True
