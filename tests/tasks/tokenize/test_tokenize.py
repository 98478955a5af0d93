"""Tokenization on a real local Ray: round trip, exactly-once, idempotence, S3, early failures."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models.tokenizer import load_tokenizer_from_dir
from tasks import storage
from tasks.data.clips import clip_tensor, iter_shard
from tasks.data.datasets import resolve_dataset
from tasks.data.video import decode_clip
from tasks.tokenize.format import TokenizedClip, read_token_shard, token_shard_bytes
from tasks.tokenize.run import tokenize_dataset
from tasks.tracking import TrackingConfig
from tests.support.mlflow_store import fresh_store_uri
from tests.support.tokenize_workers import crashing_worker, stalling_worker
from tests.tasks.tokenize.support import config, make_dataset, register_tokenizer, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One dataset (2 shards x 4 clips) and two registered toy tokenizers, for the whole module."""
    root = tmp_path_factory.mktemp("tokenize")
    dataset = make_dataset(root)
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-tokenize-test",
        artifact_location=str(root / "mlartifacts"),
    )
    register_tokenizer(tracking, root / "fsq", tiny_tokenizer())
    register_tokenizer(tracking, root / "multiscale", tiny_tokenizer([1, 2, 4]), "multiscale")
    return {"root": root, "dataset": dataset, "tracking": tracking}


@pytest.fixture(scope="module")
def tokenized(workspace: dict):
    """The dataset tokenized once into a local folder with the single-scale tokenizer.

    num_actors=None: one actor per CPU slot, two on the test session's 2-CPU Ray.
    """
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        _tokens(workspace),
        num_actors=None,
    )
    return cfg, tokenize_dataset(cfg)


def _tokens(workspace: dict, name: str = "tokens") -> str:
    return str(workspace["root"] / name)


def _reference_clips(dataset_root: str) -> dict[str, torch.Tensor]:
    """Every dataset clip as the tokenizer sees it: (1, 3, 9, 32, 32), center crop."""
    ref = resolve_dataset(dataset_root)
    clips = {}
    for shard in ref.rows_by_shard():
        for metadata, mp4 in iter_shard(ref.shard_uri(shard)):
            clips[metadata["key"]] = clip_tensor(decode_clip(mp4), 32, 9)[None]
    return clips


def _token_clips(tokens_uri: str) -> list[TokenizedClip]:
    shards = sorted(storage.list_prefix(storage.join(tokens_uri, "shards")))
    return [clip for shard in shards for clip in read_token_shard(shard)]


def _snapshot(folder: str) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in Path(folder).rglob("*")
        if path.is_file()
    }


@pytest.mark.parametrize(
    ("kind", "where"), [("fsq", "local"), ("multiscale", "s3")], ids=["fsq-local", "multiscale-s3"]
)
def test_detokenized_shards_reproduce_the_tokenizers_own_reconstruction(
    workspace: dict, tokenized, kind: str, where: str, request: pytest.FixtureRequest
) -> None:
    if where == "local":
        _, summary = tokenized
    else:
        bucket = request.getfixturevalue("s3_env")
        cfg = config(
            workspace["tracking"],
            workspace["dataset"].dataset_root,
            f"s3://{bucket}/tokens",
            tokenizer="models:/arvid-tokenizer@multiscale",
        )
        summary = tokenize_dataset(cfg)
        assert summary.tokens_uri.startswith(f"s3://{bucket}/tokens/")
        assert summary.token_shapes == [[3, 1, 1], [3, 2, 2], [3, 4, 4]]
    tokenizer = load_tokenizer_from_dir(workspace["root"] / kind).eval()
    reference = _reference_clips(workspace["dataset"].dataset_root)
    clips = _token_clips(summary.tokens_uri)
    assert sorted(c.key for c in clips) == sorted(reference)
    with torch.inference_mode():
        for clip in clips:
            own = tokenizer.encode(reference[clip.key])
            expected = tokenizer.decode(own.quantized)
            assert torch.equal(tokenizer.decode_indices(clip.tokenizer_indices()), expected)
            scales = own.indices if isinstance(own.indices, list) else [own.indices]
            assert [a.dtype for a in clip.indices] == [np.dtype(np.uint16)] * len(scales)
            assert clip.multiscale == (kind == "multiscale")
            assert clip.token_shapes == summary.token_shapes == clip.metadata["token_shapes"]


def test_manifest_lists_every_dataset_clip_once_with_label_and_tokenizer_record(
    workspace: dict, tokenized
) -> None:
    _, summary = tokenized
    dataset = resolve_dataset(workspace["dataset"].dataset_root)
    out = summary.tokens_uri
    assert out.endswith(f"{dataset.version}/arvid-tokenizer-v1/32x9")
    manifest_text = storage.read_text(summary.manifest)
    rows = [json.loads(line) for line in manifest_text.splitlines()]
    labels = {row["key"]: row["label"] for row in dataset.rows}
    assert [row["key"] for row in rows] == sorted(labels)
    assert all(row["label"] == labels[row["key"]] for row in rows)
    assert {row["shard"] for row in rows} == {row["shard"] for row in dataset.rows}
    assert all(row["token_shapes"] == [[3, 4, 4]] for row in rows)
    assert summary.tokens_version == hashlib.sha256(manifest_text.encode()).hexdigest()[:16]
    record = json.loads(storage.read_text(storage.join(out, "tokenizer.json")))
    assert (record["name"], record["version"]) == ("arvid-tokenizer", "1")
    assert record["run_id"] and record["config_hash"] and record["weights_sha256"]
    info = json.loads(storage.read_text(storage.join(out, "tokens.json")))
    assert info["tokens_version"] == summary.tokens_version and info["clips"] == 8
    assert (summary.clips_total, summary.clips_new, summary.shards_new) == (8, 8, 2)
    assert summary.actors == 2 and summary.clips_per_s > 0 and summary.published_new


def test_mlflow_run_records_dataset_tokenizer_and_token_versions(
    workspace: dict, tokenized
) -> None:
    _, summary = tokenized
    mlflow.set_tracking_uri(workspace["tracking"].uri)
    run = MlflowClient().get_run(summary.mlflow_run_id)
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags["arvid.dataset_version"] == summary.dataset_version
    assert tags["arvid.tokenizer"] == "arvid-tokenizer"
    assert tags["arvid.tokenizer_version"] == "1"
    assert tags["arvid.tokens_version"] == summary.tokens_version
    assert params["tokenize.resolution"] == "32" and params["tokenize.frames"] == "9"
    assert metrics["clips_total"] == 8 and metrics["clips_per_s"] > 0
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "tokens")}
    assert {"tokens/manifest.jsonl", "tokens/tokenizer.json", "tokens/summary.json"} <= artifacts


def test_second_run_publishes_nothing(tokenized) -> None:
    cfg, first = tokenized
    before = _snapshot(first.tokens_uri)
    second = tokenize_dataset(cfg)
    assert _snapshot(first.tokens_uri) == before
    assert (second.shards_new, second.clips_new, second.shards_skipped) == (0, 0, 2)
    assert not second.published_new and second.tokens_version == first.tokens_version
    assert "nothing new" in second.line()


def test_run_cut_short_resumes_to_the_same_token_shards(tokenized) -> None:
    first_cfg, first = tokenized
    cfg = config(first_cfg.tracking, first_cfg.tokenize.dataset, first_cfg.tokenize.tokens_root)
    out = Path(first.tokens_uri)
    shard = sorted((out / "shards").iterdir())[0]
    original = shard.read_bytes()
    # As if the run died before this shard was published: neither it nor its record exists.
    shard.unlink()
    (out / "records" / f"{shard.stem}.json").unlink()
    resumed = tokenize_dataset(cfg)
    assert (resumed.shards_new, resumed.shards_skipped) == (1, 1)
    assert shard.read_bytes() == original
    assert resumed.tokens_version == first.tokens_version and not resumed.published_new


def test_actors_dying_mid_run_still_yield_every_clip_exactly_once(
    workspace: dict, tokenized, tmp_path: Path
) -> None:
    _, clean = tokenized
    dataset = resolve_dataset(workspace["dataset"].dataset_root)
    victim = sorted(row["key"] for row in dataset.rows)[5]  # a batch of the second shard
    marker = tmp_path / "crashes"
    # Two deaths with one restart allowed: Ray restarts the actor and retries the batch there,
    # it dies again for good, and the driver resubmits its batches to the other actor.
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        str(tmp_path / "t"),
        num_actors=2,
        max_retries=1,
    )
    summary = tokenize_dataset(cfg, worker=crashing_worker(victim, marker, times=2))
    assert marker.read_text() == "2", "the actor holding the victim clip should have died twice"
    assert summary.batch_retries >= 1
    keys = [clip.key for clip in _token_clips(summary.tokens_uri)]
    assert sorted(keys) == sorted(row["key"] for row in dataset.rows) and len(set(keys)) == 8
    manifest = [json.loads(line) for line in storage.read_text(summary.manifest).splitlines()]
    assert [row["key"] for row in manifest] == sorted(keys)
    # Same tokens as the undisturbed run, byte for byte through the manifest hash.
    assert summary.tokens_version == clean.tokens_version


def test_a_run_without_progress_stops_at_its_deadline_and_a_rerun_resumes(
    workspace: dict, tokenized, tmp_path: Path
) -> None:
    _, clean = tokenized
    dataset = resolve_dataset(workspace["dataset"].dataset_root)
    victim = sorted(row["key"] for row in dataset.rows)[7]  # the last batch of the last shard
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        str(tmp_path / "t"),
        stall_timeout_s=4,
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"tokenization stalled: no batch finished in 4 s"):
        tokenize_dataset(cfg, worker=stalling_worker(victim))
    assert time.monotonic() - started < 120, "the deadline did not stop the run"
    # The re-run keeps the default deadline: 4 s is tight enough for a loaded 2-core machine to
    # miss while the killed run's actor is still being torn down (a CI failure).
    rerun = config(workspace["tracking"], workspace["dataset"].dataset_root, str(tmp_path / "t"))
    resumed = tokenize_dataset(rerun)
    # The stuck batch's shard is redone; shards finished before the deadline are usually kept.
    assert resumed.shards_new >= 1 and resumed.shards_new + resumed.shards_skipped == 2
    assert resumed.tokens_version == clean.tokens_version


def test_actors_that_do_not_start_in_time_stop_the_run_naming_the_start_deadline(
    workspace: dict, tmp_path: Path
) -> None:
    # Start-up has its own deadline: loading the tokenizer on a busy node can outlast a tight
    # stall_timeout_s, which only bounds the wait for the next finished batch.
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        str(tmp_path / "t"),
        start_timeout_s=0.01,
    )
    with pytest.raises(RuntimeError, match=r"did not start within tokenize.start_timeout_s=0.01 s"):
        tokenize_dataset(cfg)
    assert not list((tmp_path / "t").rglob("*.tar"))


@pytest.mark.parametrize(
    "reference",
    ["models:/arvid-tokenizer@nope", "models:/no-such-tokenizer/1", "runs:/0123abc/tokenizer"],
)
def test_missing_tokenizer_fails_before_any_work(
    workspace: dict, tmp_path: Path, reference: str
) -> None:
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        str(tmp_path / "t"),
        tokenizer=reference,
    )
    with pytest.raises(FileNotFoundError, match=reference.split("@")[0]):
        tokenize_dataset(cfg)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"resolution": 36}, r"H=36: the tokenizer needs H divisible by 8 \(e.g. 32 or 40\)"),
        ({"frames": 10}, r"T=10 frames: the tokenizer needs T = 1 \+ 4n \(e.g. 9 or 13\)"),
        ({"frames": 13}, r"has 9 frames, tokenize.frames=13 needs at least 13"),
    ],
    ids=["resolution", "frames", "clips-too-short"],
)
def test_clip_shape_the_tokenizer_or_the_clips_cannot_serve_fails_before_any_work(
    workspace: dict, tmp_path: Path, shape: dict, message: str
) -> None:
    cfg = config(
        workspace["tracking"], workspace["dataset"].dataset_root, str(tmp_path / "t"), **shape
    )
    mlflow.set_tracking_uri(workspace["tracking"].uri)
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    with pytest.raises(ValueError, match=message):
        tokenize_dataset(cfg)
    assert not (tmp_path / "t").exists()
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_actors_that_would_leave_no_cpu_for_decoding_are_refused(
    workspace: dict, tmp_path: Path
) -> None:
    cfg = config(
        workspace["tracking"],
        workspace["dataset"].dataset_root,
        str(tmp_path / "t"),
        num_actors=2,
        actor_num_cpus=1.0,
    )
    mlflow.set_tracking_uri(workspace["tracking"].uri)
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    with pytest.raises(ValueError, match="decoding would wait forever"):
        tokenize_dataset(cfg)
    assert not (tmp_path / "t").exists()
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_token_shards_are_byte_deterministic_and_read_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clips = [
        TokenizedClip(
            key=f"clip{i}",
            metadata={"key": f"clip{i}", "label": "left"},
            indices=[rng.integers(0, 64000, (3, s, s)).astype(np.uint16) for s in (1, 2, 4)],
            multiscale=True,
        )
        for i in (2, 0, 1)
    ]
    data = token_shard_bytes(clips)
    assert token_shard_bytes(list(reversed(clips))) == data
    (tmp_path / "s.tar").write_bytes(data)
    back = list(read_token_shard(str(tmp_path / "s.tar")))
    assert [c.key for c in back] == ["clip0", "clip1", "clip2"]
    originals = {c.key: c for c in clips}
    for clip in back:
        assert all(
            np.array_equal(a, b) and a.dtype == b.dtype
            for a, b in zip(clip.indices, originals[clip.key].indices, strict=True)
        )
        assert clip.metadata["label"] == "left" and clip.token_shapes == [
            [3, 1, 1],
            [3, 2, 2],
            [3, 4, 4],
        ]
