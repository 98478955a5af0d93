"""Find the inputs of an ingestion: a folder, an s3:// prefix, a JSONL/CSV manifest, or webdataset shards."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks import storage
from tasks.data.tar import ShardReadError, read_samples
from tasks.ingest.quarantine import QuarantineRecord, Reason

# Containers FFmpeg reads that a folder or prefix scan takes as videos. A file listed in a manifest
# is ingested whatever its name; content decides there (probe_video rejects what is not a video).
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".mpe",
    ".m1v",
    ".m2v",
    ".ts",
    ".m2ts",
    ".mts",
    ".vob",
    ".wmv",
    ".asf",
    ".flv",
    ".f4v",
    ".3gp",
    ".3g2",
    ".ogv",
    ".divx",
    ".mxf",
    ".dv",
)
MANIFEST_EXTENSIONS = (".jsonl", ".csv")


class SourceInput(BaseModel):
    """One input video: a stable key relative to the source, where to read it, and its labels."""

    key: str
    uri: str
    size: int
    label: str | None = None
    caption: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Discovery(BaseModel):
    """What a source holds: inputs sorted by key, inputs rejected before any decoding, and the
    files a folder/prefix scan passed over, counted by extension (see `skipped_extension`)."""

    source: str
    kind: str
    inputs: list[SourceInput]
    quarantine: list[QuarantineRecord]
    skipped_by_extension: dict[str, int] = Field(default_factory=dict)


def _relative_key(uri: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else uri


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _extension(name: str) -> str:
    """Lower-case extension without the dot ("mpg"), or "none" for a name without one."""
    suffix = PurePosixPath(name).suffix.lower()[1:]
    # Counted under this name in metrics too (skipped_ext_<ext>), which allow few characters.
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in suffix) or "none"


def skipped_extension(key: str, video_stems: set[str]) -> str | None:
    """The extension to count a non-video file of a folder scan under, or None if it is expected.

    Expected companions are not skipped videos: manifests (.jsonl, .csv) and sidecars that share a
    video's folder and stem (`a.json` or `a.txt` beside `a.mp4`, as video2dataset writes them).
    Everything else - `notes.txt`, a `.rmvb` arvid does not scan for - is counted.
    """
    if key.lower().endswith(MANIFEST_EXTENSIONS):
        return None
    path = PurePosixPath(key)
    if str(path.with_suffix("")) in video_stems:
        return None
    return _extension(key)


def _folder_label(key: str) -> str | None:
    # Class-folder convention (as in UCF-101): <label>/<video>.mp4; top-level videos have no label.
    parts = PurePosixPath(key).parts
    return parts[0] if len(parts) > 1 else None


def _storage_rejection(exc: storage.StorageError) -> tuple[Reason, str]:
    if isinstance(exc, storage.ObjectNotFound):
        return Reason.MISSING, f"not found ({exc})"
    if isinstance(exc, storage.AccessDenied):
        return Reason.FORBIDDEN, f"access denied ({exc})"
    return Reason.READ_ERROR, f"cannot be read ({exc})"


def _parse_manifest_rows(
    manifest_uri: str, text: str
) -> tuple[list[tuple[int, dict]], list[QuarantineRecord]]:
    """Rows of a JSONL or CSV manifest with their line numbers; malformed lines become records."""
    rows: list[tuple[int, dict]] = []
    bad: list[QuarantineRecord] = []
    if manifest_uri.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            rows.append((reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}))
        return rows, bad
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(
                QuarantineRecord(
                    input=f"{manifest_uri}:line {number}",
                    reason_code=Reason.MALFORMED_MANIFEST,
                    reason=f"malformed JSON ({exc.msg} at column {exc.colno})",
                    stage="discover",
                )
            )
            continue
        if not isinstance(row, dict):
            bad.append(
                QuarantineRecord(
                    input=f"{manifest_uri}:line {number}",
                    reason_code=Reason.MALFORMED_MANIFEST,
                    reason="a manifest line must be a JSON object with a 'path' (or 'uri')",
                    stage="discover",
                )
            )
            continue
        rows.append((number, row))
    return rows, bad


def discover_manifest(manifest_uri: str) -> Discovery:
    """Inputs listed in a JSONL/CSV manifest (path or uri, label, optional caption)."""
    text = storage.read_text(manifest_uri)
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    rows, quarantine = _parse_manifest_rows(manifest_uri, text)
    inputs: list[SourceInput] = []
    for number, row in rows:
        where = f"{manifest_uri}:line {number}"
        ref = row.get("path") or row.get("uri") or row.get("url")
        if not ref:
            quarantine.append(
                QuarantineRecord(
                    input=where,
                    reason_code=Reason.MALFORMED_MANIFEST,
                    reason="no 'path' (or 'uri') field",
                    stage="discover",
                )
            )
            continue
        ref = str(ref)
        uri = ref if storage.is_s3(ref) or Path(ref).is_absolute() else storage.join(base, ref)
        try:
            size = storage.size(uri)
        except storage.StorageError as exc:
            code, reason = _storage_rejection(exc)
            quarantine.append(
                QuarantineRecord(input=ref, reason_code=code, reason=reason, stage="discover")
            )
            continue
        label = row.get("label")
        caption = row.get("caption")
        extra = {
            k: v for k, v in row.items() if k not in {"path", "uri", "url", "label", "caption"}
        }
        inputs.append(
            SourceInput(
                key=ref,
                uri=uri,
                size=size,
                label=None if label in (None, "") else str(label),
                caption=None if caption in (None, "") else str(caption),
                metadata=extra,
            )
        )
    return _finish(manifest_uri, "manifest", inputs, quarantine)


def _shard_members(
    shard_uri: str, staging_dir: Path
) -> tuple[list[SourceInput], list[QuarantineRecord]]:
    """Stage the videos of one video2dataset-style shard (<key>.mp4 + <key>.json) as local files."""
    shard_name = shard_uri.rstrip("/").rsplit("/", 1)[-1]
    videos: dict[str, tuple[str, int]] = {}
    sidecars: dict[str, dict] = {}
    quarantine: list[QuarantineRecord] = []
    target = staging_dir / shard_name.replace(".tar", "")
    target.mkdir(parents=True, exist_ok=True)
    try:
        for sample_key, members in read_samples(shard_uri):
            # Staged and keyed by basename, as video2dataset names its members.
            key = PurePosixPath(sample_key).name
            for ext, data in members.items():
                name = f"{key}.{ext}"
                if _is_video(name):
                    local = target / name
                    local.write_bytes(data)
                    videos[key] = (str(local), len(data))
                elif ext == "json":
                    try:
                        sidecars[key] = json.loads(data)
                    except json.JSONDecodeError:
                        sidecars[key] = {}
    except OSError as exc:  # ShardReadError, storage errors, staging writes
        detail = str(exc) if isinstance(exc, ShardReadError) else f"{type(exc).__name__}: {exc}"
        quarantine.append(
            QuarantineRecord(
                input=shard_name,
                reason_code=Reason.READ_ERROR,
                reason=f"webdataset shard cannot be read ({detail})",
                stage="discover",
            )
        )
    inputs = []
    for key, (local, size) in sorted(videos.items()):
        meta = sidecars.get(key, {})
        inputs.append(
            SourceInput(
                key=f"{shard_name}/{key}",
                uri=local,
                size=size,
                label=None if meta.get("label") in (None, "") else str(meta["label"]),
                caption=meta.get("caption") or None,
                metadata={k: v for k, v in meta.items() if k not in {"label", "caption"}},
            )
        )
    return inputs, quarantine


def discover_prefix(root: str, staging_dir: Path) -> Discovery:
    """Videos under a local folder or s3:// prefix; webdataset .tar shards there are opened too."""
    if not storage.is_s3(root) and not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: source folder not found (ingest.source)")
    uris = storage.list_prefix(root, recursive=True)
    keys = {uri: _relative_key(uri, root) for uri in uris}
    video_stems = {str(PurePosixPath(k).with_suffix("")) for k in keys.values() if _is_video(k)}
    inputs: list[SourceInput] = []
    quarantine: list[QuarantineRecord] = []
    skipped: dict[str, int] = {}
    kinds = set()
    for uri, key in keys.items():
        if _is_video(key):
            kinds.add("folder")
            inputs.append(
                SourceInput(key=key, uri=uri, size=storage.size(uri), label=_folder_label(key))
            )
        elif key.lower().endswith(".tar"):
            kinds.add("webdataset")
            members, bad = _shard_members(uri, staging_dir)
            inputs.extend(members)
            quarantine.extend(bad)
        elif (extension := skipped_extension(key, video_stems)) is not None:
            skipped[extension] = skipped.get(extension, 0) + 1
    discovery = _finish(root, "+".join(sorted(kinds)) or "empty", inputs, quarantine)
    discovery.skipped_by_extension = dict(sorted(skipped.items()))
    return discovery


def _finish(
    source: str, kind: str, inputs: list[SourceInput], quarantine: list[QuarantineRecord]
) -> Discovery:
    # Duplicate keys would make clip keys collide; the first occurrence wins, the rest are rejected.
    seen: set[str] = set()
    unique: list[SourceInput] = []
    for item in sorted(inputs, key=lambda i: i.key):
        if item.key in seen:
            quarantine.append(
                QuarantineRecord(
                    input=item.key,
                    reason_code=Reason.MALFORMED_MANIFEST,
                    reason="listed more than once; only the first entry is ingested",
                    stage="discover",
                )
            )
            continue
        seen.add(item.key)
        unique.append(item)
    return Discovery(source=source, kind=kind, inputs=unique, quarantine=quarantine)


def source_kind(source: str) -> Literal["manifest", "prefix"]:
    """How `source` is read: as a .jsonl/.csv manifest, or as a folder / s3:// prefix to scan."""
    return "manifest" if source.lower().endswith(MANIFEST_EXTENSIONS) else "prefix"


def discover_inputs(source: str, staging_dir: Path) -> Discovery:
    """Every input of `source`, sorted by key, plus what was rejected while listing it."""
    if source_kind(source) == "manifest":
        return discover_manifest(source)
    return discover_prefix(source, staging_dir)
