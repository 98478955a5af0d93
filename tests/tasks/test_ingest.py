"""Ingestion on real files and a real loopback S3 server: bad input, resume, idempotence, sources."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from tasks import storage
from tasks.data.manifest import read_manifest
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.ingest.decode import clip_key, clip_spans, resample_indices
from tasks.ingest.quarantine import Reason
from tasks.ingest.run import ingest_dataset
from tasks.ingest.synthetic import make_synthetic_dataset
from tests.support.bad_inputs import (
    write_all_bad_inputs,
    write_good_video,
    write_mpeg_ps_video,
    write_truncated_faststart_mp4,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _config(source: str | Path, out: str | Path, **overrides) -> IngestConfig:
    values = dict(
        source=str(source),
        output_root=str(out),
        name="t",
        fps=8,
        clip_frames=9,
        clip_stride=8,
        min_duration_s=1.0,
        max_pixels=640 * 480,
        inputs_per_shard=2,
        workers=2,
        decode_timeout_s=60,
        progress=False,
    )
    values.update(overrides)
    return IngestConfig(**values)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six labelled synthetic videos (3 s at 8 fps, 64x64) and their labels.jsonl."""
    out = tmp_path_factory.mktemp("videos")
    make_synthetic_dataset(
        SyntheticDatasetConfig(count=6, frames=24, fps=8, preset="ultrafast", seed=1), out
    )
    return out


def test_resampling_and_clipping_arithmetic() -> None:
    assert resample_indices(30, 30.0, 10.0) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert resample_indices(8, 8.0, 16.0) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert clip_spans(20, 9, 8) == [(0, 9), (8, 17)]
    assert clip_spans(8, 9, 8) == []


def test_clip_keys_are_webdataset_safe_and_distinct() -> None:
    keys = {clip_key(name, 0) for name in ["a/b.mp4", "a_b.mp4", "a.b/mp4", "s3 x.mp4"]}
    assert len(keys) == 4
    assert all("." not in key and "/" not in key for key in keys)


def test_every_bad_input_is_quarantined_with_its_reason_and_good_inputs_land(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    bad = write_all_bad_inputs(source)
    good = [write_good_video(source, f"good_{i}.mp4", seconds=3, seed=i) for i in range(3)]
    lines = [json.dumps({"path": p.name, "label": "x"}) for p in [*good, *bad.values()]]
    lines.append(json.dumps({"path": "does_not_exist.mp4", "label": "x"}))
    lines.append('{"path": "broken.mp4", "label": ')  # malformed JSON
    (source / "list.jsonl").write_text("\n".join(lines) + "\n")

    summary = ingest_dataset(_config(source / "list.jsonl", tmp_path / "out"))

    quarantine = {
        json.loads(line)["input"]: json.loads(line)
        for line in storage.read_text(summary.quarantine_file).splitlines()
    }
    expected = {
        "zero_bytes": {Reason.EMPTY_FILE},
        "truncated": {Reason.NOT_A_VIDEO, Reason.TRUNCATED},
        "text_as_mp4": {Reason.NOT_A_VIDEO},
        "audio_only": {Reason.NO_VIDEO_STREAM},
        "one_frame": {Reason.TOO_SHORT},
        "short": {Reason.TOO_SHORT},
        "oversized": {Reason.TOO_MANY_PIXELS},
    }
    for kind, path in bad.items():
        if kind == "truncated_faststart":  # decodes 21 of 24 frames: lands partial (see below)
            assert path.name not in quarantine
            continue
        record = quarantine[path.name]
        assert record["reason_code"] in {r.value for r in expected[kind]}, (kind, record)
        assert record["reason"]
    assert quarantine["does_not_exist.mp4"]["reason_code"] == Reason.MISSING
    malformed = [k for k in quarantine if k.endswith("list.jsonl:line 13")]
    assert malformed and quarantine[malformed[0]]["reason_code"] == Reason.MALFORMED_MANIFEST
    assert summary.quarantined_total == len(bad) - 1 + 2

    rows = read_manifest(summary.manifest)
    truncated = bad["truncated_faststart"].name
    assert {row["input"] for row in rows} == {p.name for p in good} | {truncated}
    assert len(rows) == 4 * 2  # 24 frames at 8 fps -> clips at 0 and 8 of 9 frames
    assert all(row["frames"] == 9 and row["label"] == "x" for row in rows)
    assert summary.inputs_partial == 1
    assert {row["input"] for row in rows if row.get("partial")} == {truncated}


def test_shards_are_readable_webdataset_with_manifest_rows(videos: Path, tmp_path: Path) -> None:
    summary = ingest_dataset(_config(videos / "labels.jsonl", tmp_path / "out"))
    rows = {row["key"]: row for row in read_manifest(summary.manifest)}
    shard_uris = sorted({storage.join(summary.dataset_root, row["shard"]) for row in rows.values()})
    seen = {}
    for sample in wds.WebDataset(shard_uris, shardshuffle=False):
        meta = json.loads(sample["json"])
        seen[sample["__key__"]] = meta
        assert len(sample["mp4"]) == rows[sample["__key__"]]["bytes"]
    assert set(seen) == set(rows)
    labels = {
        json.loads(line)["path"]: json.loads(line)["label"]
        for line in (videos / "labels.jsonl").read_text().splitlines()
    }
    assert all(meta["label"] == labels[meta["input"]] for meta in seen.values())
    assert summary.clips_total == 12 and summary.quarantined_total == 0


def test_rerun_publishes_nothing_and_new_inputs_make_a_new_version(
    videos: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for path in sorted(videos.glob("*.mp4"))[:4]:
        (source / path.name).write_bytes(path.read_bytes())
    config = _config(source, tmp_path / "out")
    first = ingest_dataset(config)
    shards_before = storage.list_prefix(storage.join(first.dataset_root, "shards"))
    again = ingest_dataset(config)
    assert (again.version, again.inputs_processed, again.shards_new, again.published_new) == (
        first.version,
        0,
        0,
        False,
    )
    assert storage.list_prefix(storage.join(first.dataset_root, "shards")) == shards_before

    for path in sorted(videos.glob("*.mp4"))[4:]:
        (source / path.name).write_bytes(path.read_bytes())
    grown = ingest_dataset(config)
    assert grown.inputs_processed == 2 and grown.inputs_skipped == 4
    assert grown.version != first.version and grown.published_new
    old_rows = read_manifest(first.manifest)
    new_rows = read_manifest(grown.manifest)
    assert len(new_rows) == len(old_rows) + 4
    assert all(row in new_rows for row in old_rows)  # earlier clips kept as they were


def test_local_folder_and_s3_prefix_give_the_same_manifest(
    videos: Path, tmp_path: Path, s3_env: str
) -> None:
    for path in sorted(videos.glob("*.mp4")):
        storage.upload_file(path, f"s3://{s3_env}/raw/{path.name}")
    local = ingest_dataset(_config(videos, tmp_path / "local"))
    remote = ingest_dataset(_config(f"s3://{s3_env}/raw", f"s3://{s3_env}/datasets"))
    assert storage.read_text(remote.manifest) == storage.read_text(local.manifest)
    assert remote.version == local.version
    shards = storage.list_prefix(f"s3://{s3_env}/datasets/t/shards")
    assert len(shards) == 3 and not any(".tmp" in uri for uri in shards)


def test_missing_and_forbidden_s3_objects_are_quarantined(
    videos: Path, tmp_path: Path, s3_server, s3_env: str
) -> None:
    if not s3_server.supports_access_control:
        pytest.skip("the fallback S3 server has no access control")
    good = sorted(videos.glob("*.mp4"))[0]
    storage.upload_file(good, f"s3://{s3_env}/raw/{good.name}")
    try:
        s3_server.make_bucket("outsider-only")
    except Exception:  # noqa: BLE001 - already made by an earlier test of this session
        pass
    manifest = tmp_path / "list.jsonl"
    rows = [
        {"path": str(good), "label": "ok"},  # local: readable whatever the S3 identity
        {"uri": "s3://outsider-only/missing.mp4", "label": "gone"},  # readable bucket, no object
        {
            "uri": f"s3://{s3_env}/raw/{good.name}",
            "label": "no",
        },  # object exists, identity has no rights
    ]
    manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    # Run as the identity that may read only the outsider-only bucket: a genuine 403 from the server.
    outsider = storage.StorageSettings(
        max_attempts=2,
        access_key_id=s3_server.outsider_access_key,
        secret_access_key=s3_server.outsider_secret_key,
    )
    storage.configure_storage(outsider)
    summary = ingest_dataset(_config(manifest, tmp_path / "out"), outsider)
    quarantine = {
        json.loads(line)["input"]: json.loads(line)
        for line in storage.read_text(summary.quarantine_file).splitlines()
    }
    assert quarantine["s3://outsider-only/missing.mp4"]["reason_code"] == Reason.MISSING
    forbidden = quarantine[f"s3://{s3_env}/raw/{good.name}"]
    assert forbidden["reason_code"] == Reason.FORBIDDEN and s3_env in forbidden["reason"]
    assert summary.clips_total == 2 and {r["input"] for r in read_manifest(summary.manifest)} == {
        str(good)
    }
    assert s3_server.outsider_secret_key not in storage.read_text(summary.quarantine_file)


# Runs an ingestion that stops for good right after its n-th batch record is written, and says so
# in a marker file: the test then kills it there, so the kill point never races the run.
_HELD_RUNNER = """
import sys
import threading
from pathlib import Path

from tasks import storage
from tasks.ingest.config import IngestConfig
from tasks.ingest.run import ingest_dataset

hold_after, marker = int(sys.argv[2]), Path(sys.argv[3])
write_text = storage.write_text
written = []


def write_text_then_hold(uri, *args, **kwargs):
    write_text(uri, *args, **kwargs)
    if "/batches/" in str(uri):
        written.append(uri)
        if len(written) == hold_after:
            marker.write_text(str(uri))
            threading.Event().wait()  # until the test kills the process group


storage.write_text = write_text_then_hold

if __name__ == "__main__":
    ingest_dataset(IngestConfig.model_validate_json(sys.argv[1]))
"""


def test_killed_ingestion_resumes_to_the_same_manifest(videos: Path, tmp_path: Path) -> None:
    runner = tmp_path / "run_ingest.py"
    runner.write_text(_HELD_RUNNER)
    marker = tmp_path / "held"
    # One input per shard: six shards, published one after another.
    config = _config(videos, tmp_path / "killed", inputs_per_shard=1)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(runner), config.model_dump_json(), "2", str(marker)],
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None, "ingestion ended before its second batch record"
        assert time.monotonic() < deadline, "ingestion never reached its second batch record"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its decode workers
    proc.wait()
    batches = tmp_path / "killed" / "t" / "batches"
    assert len(list(batches.glob("*.json"))) == 2

    resumed = ingest_dataset(config)
    assert (resumed.inputs_skipped, resumed.inputs_processed) == (2, 4)
    shards = list((tmp_path / "killed" / "t" / "shards").glob("*.tar"))
    assert len(shards) == 6 and len(list(batches.glob("*.json"))) == 6
    fresh = ingest_dataset(_config(videos, tmp_path / "fresh", inputs_per_shard=1))
    assert storage.read_text(resumed.manifest) == storage.read_text(fresh.manifest)


def test_webdataset_video_shards_are_a_source(videos: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i, path in enumerate(sorted(videos.glob("*.mp4"))[:3]):
            key = f"{i:09d}"
            tar.add(path, arcname=f"{key}.mp4")
            sidecar = tmp_path / f"{key}.json"
            sidecar.write_text(
                json.dumps({"caption": f"video {i}", "label": "L", "url": str(path.name)})
            )
            tar.add(sidecar, arcname=f"{key}.json")
    summary = ingest_dataset(_config(shards, tmp_path / "out"))
    rows = read_manifest(summary.manifest)
    assert summary.source_kind == "webdataset"
    assert {row["input"] for row in rows} == {f"00000.tar/{i:09d}" for i in range(3)}
    assert {row["caption"] for row in rows} == {"video 0", "video 1", "video 2"}
    assert all(row["label"] == "L" and row["source_metadata"]["url"] for row in rows)


# --- partial decodes ----------------------------------------------------------------------


def _partial_source(tmp_path: Path) -> tuple[Path, Path]:
    """A folder with one faststart video cut to 70% of its bytes, and a folder with it whole."""
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    cut.mkdir()
    whole.mkdir()
    # The same rendered video (seed 4, 3 s at 8 fps, faststart) as the truncation maker uses.
    write_truncated_faststart_mp4(cut, "clip.mp4", keep=0.7)
    write_good_video(whole, "clip.mp4", seconds=3.0, seed=4, faststart=True)
    return cut, whole


def test_truncated_video_keeps_the_clips_that_decode_cleanly_marked_partial(
    tmp_path: Path,
) -> None:
    cut, whole = _partial_source(tmp_path)
    # Clips of 9 frames every 4: spans 0-8, 4-12, 8-16, 12-20 of the 24 frames the header promises.
    summary = ingest_dataset(_config(cut, tmp_path / "out", clip_stride=4))
    complete = ingest_dataset(_config(whole, tmp_path / "out-whole", clip_stride=4))

    rows = read_manifest(summary.manifest)
    assert summary.quarantined_total == 0 and summary.inputs_partial == 1
    decoded = rows[0]["source_frames_decoded"]
    assert 9 <= decoded < 24  # the cut keeps some clips and loses others
    assert {row["clip_index"] for row in rows} == {i for i in range(4) if 4 * i + 9 <= decoded}
    assert all(row["partial"] is True and row["source_frames_promised"] == 24 for row in rows)
    # Kept clips are clean: byte for byte the clips the whole file gives (the encoder is exact).
    whole_rows = {row["clip_index"]: row for row in read_manifest(complete.manifest)}
    assert len(whole_rows) == 4 and complete.inputs_partial == 0
    assert not any("partial" in row for row in whole_rows.values())
    for row in rows:
        assert row["sha256"] == whole_rows[row["clip_index"]]["sha256"], row["clip_index"]
    assert "1 partial" in summary.line()


def test_strict_frame_count_quarantines_a_truncated_video(tmp_path: Path) -> None:
    cut, _ = _partial_source(tmp_path)
    summary = ingest_dataset(_config(cut, tmp_path / "out", clip_stride=4, strict_frame_count=True))
    assert summary.clips_total == 0 and summary.inputs_partial == 0
    (record,) = [
        json.loads(line) for line in storage.read_text(summary.quarantine_file).splitlines()
    ]
    assert record["input"] == "clip.mp4" and record["reason_code"] == Reason.TRUNCATED
    assert "header promises 24 frames" in record["reason"]
    assert "strict_frame_count" in record["reason"]


def test_truncated_video_without_one_whole_clip_is_quarantined(tmp_path: Path) -> None:
    cut, _ = _partial_source(tmp_path)
    summary = ingest_dataset(_config(cut, tmp_path / "out", clip_frames=17, clip_stride=4))
    assert summary.clips_total == 0 and summary.inputs_partial == 0
    (record,) = [
        json.loads(line) for line in storage.read_text(summary.quarantine_file).splitlines()
    ]
    assert record["reason_code"] == Reason.TRUNCATED
    assert "no whole clip" in record["reason"] and "clip_frames" in record["reason"]


# --- discovery by extension ----------------------------------------------------------------


def test_folder_scan_ingests_common_containers_and_counts_what_it_skips(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    write_mpeg_ps_video(source, "broadcast.mpg")
    write_good_video(source, "clip.mp4", seconds=3)
    (source / "clip.json").write_text("{}")  # a sidecar of clip.mp4: expected, not counted
    (source / "labels.jsonl").write_text("")  # a manifest beside the videos: not counted
    (source / "notes.txt").write_text("not a video")
    (source / "README").write_text("no extension")
    (source / "b.txt").write_text("counted too")

    summary = ingest_dataset(_config(source, tmp_path / "out"))

    assert {row["input"] for row in read_manifest(summary.manifest)} == {
        "broadcast.mpg",
        "clip.mp4",
    }
    assert summary.skipped_by_extension == {"none": 1, "txt": 2}
    assert "3 files skipped by extension (none: 1, txt: 2)" in summary.line()
    assert summary.model_dump(mode="json")["skipped_by_extension"] == {"none": 1, "txt": 2}


def test_ingest_run_in_mlflow_counts_partial_inputs_and_skipped_files(
    tmp_path: Path, tracking_config
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.ingest.run import run_ingest
    from tasks.settings import ArvidConfig

    cut, _ = _partial_source(tmp_path)
    (cut / "notes.txt").write_text("not a video")
    config = ArvidConfig(
        ingest=_config(cut, tmp_path / "out", clip_stride=4), tracking=tracking_config
    )
    run_id = run_ingest(config).mlflow_run_id

    mlflow.set_tracking_uri(tracking_config.uri)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["inputs_partial"] == 1
    assert metrics["skipped_ext_txt"] == 1 and metrics["skipped_total"] == 1
