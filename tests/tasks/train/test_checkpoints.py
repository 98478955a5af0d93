"""Checkpoints: round trips through local files and S3, atomic publication, pruning, verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.tokenizer import TokenizerLoss, VideoTokenizer
from tasks import storage
from tasks.train import checkpoints
from tasks.train.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from tests.tasks.train.conftest import tiny_training


def _trained_pieces(seed: int = 0):
    """A tokenizer, discriminator and optimizers that have taken one step (non-empty state)."""
    torch.manual_seed(seed)
    config = tiny_training()
    tokenizer, loss = VideoTokenizer(config.model), TokenizerLoss(config.loss)
    optimizers = {
        "tokenizer": torch.optim.AdamW(tokenizer.parameters(), lr=1e-3),
        "discriminator": torch.optim.AdamW(loss.discriminator.parameters(), lr=1e-3),
    }
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    reconstruction, _ = tokenizer(video)
    (reconstruction - video).abs().mean().backward()
    loss.discriminator(video).mean().backward()
    for optimizer in optimizers.values():
        optimizer.step()
    return tokenizer, loss.discriminator, optimizers


def _assert_round_trip(run_dir: str) -> None:
    tokenizer, discriminator, optimizers = _trained_pieces()
    uri = save_checkpoint(run_dir, 7, tokenizer, discriminator, optimizers, {"note": "x"})
    assert latest_checkpoint(run_dir) == uri
    loaded = load_checkpoint(uri)
    assert loaded.step == 7 and loaded.metadata == {"note": "x"}
    assert loaded.tokenizer_config == tokenizer.config
    assert state_digest(loaded.tokenizer_state) == state_digest(tokenizer.state_dict())
    assert state_digest(loaded.discriminator_state) == state_digest(discriminator.state_dict())
    # Optimizer moments come back bit for bit, and load into fresh optimizers.
    fresh = torch.optim.AdamW(VideoTokenizer(tokenizer.config).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded.optimizer_state["tokenizer"])
    original = optimizers["tokenizer"].state_dict()["state"]
    for index, state in fresh.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], original[index]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], original[index]["exp_avg_sq"])
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.build_tokenizer()(video)[0], tokenizer(video)[0])


def test_checkpoint_round_trips_through_local_files(tmp_path: Path) -> None:
    _assert_round_trip(str(tmp_path / "run"))


def test_checkpoint_round_trips_through_s3(s3_env: str) -> None:
    _assert_round_trip(f"s3://{s3_env}/checkpoints/run")


def test_checkpoint_folder_is_a_loadable_model_directory(tmp_path: Path) -> None:
    from models.tokenizer import load_tokenizer_from_dir

    tokenizer, discriminator, optimizers = _trained_pieces()
    uri = save_checkpoint(str(tmp_path), 2, tokenizer, discriminator, optimizers)
    loaded = load_tokenizer_from_dir(uri)
    assert state_digest(loaded.state_dict()) == state_digest(tokenizer.state_dict())


def test_a_crash_mid_save_leaves_the_previous_checkpoint_as_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = str(tmp_path / "run")
    tokenizer, discriminator, optimizers = _trained_pieces()
    first = save_checkpoint(run_dir, 2, tokenizer, discriminator, optimizers)
    written: list[str] = []
    real_write = storage.write_bytes

    def recording_write(uri, data, **kwargs):
        written.append(Path(uri).name)
        real_write(uri, data, **kwargs)

    # A healthy save writes the files, then the manifest, then the pointer: nothing after it.
    monkeypatch.setattr(storage, "write_bytes", recording_write)
    save_checkpoint(run_dir, 4, tokenizer, discriminator, optimizers)
    assert written[-2:] == [checkpoints.MANIFEST_FILE, checkpoints.LATEST_FILE]
    assert set(written[:-2]) == {
        checkpoints.TOKENIZER_WEIGHTS,
        checkpoints.TOKENIZER_CONFIG,
        checkpoints.DISCRIMINATOR_WEIGHTS,
        checkpoints.OPTIMIZER_STATE,
    }

    # Now die after two files of step 6 are out: step 4 stays the latest and loads complete.
    calls = {"n": 0}

    def dying_write(uri, data, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed")
        real_write(uri, data, **kwargs)

    monkeypatch.setattr(storage, "write_bytes", dying_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run_dir, 6, tokenizer, discriminator, optimizers)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    latest = latest_checkpoint(run_dir)
    assert latest.endswith("step-00000004") and load_checkpoint(latest).step == 4
    assert [Path(uri).name for uri in list_checkpoints(run_dir)] == [
        Path(first).name,
        "step-00000004",
    ]
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(storage.join(run_dir, "step-00000006"))


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    tokenizer, discriminator, optimizers = _trained_pieces()
    for step in (1, 2, 3, 4):
        save_checkpoint(run_dir, step, tokenizer, discriminator, optimizers, keep=2)
    assert [Path(uri).name for uri in list_checkpoints(run_dir)] == [
        "step-00000003",
        "step-00000004",
    ]
    assert latest_checkpoint(run_dir).endswith("step-00000004")


def test_a_corrupt_checkpoint_file_is_refused_by_name(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    tokenizer, discriminator, optimizers = _trained_pieces()
    uri = save_checkpoint(run_dir, 3, tokenizer, discriminator, optimizers)
    weights = Path(uri) / checkpoints.DISCRIMINATOR_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="discriminator.safetensors: size or sha256"):
        load_checkpoint(uri)


def test_run_without_checkpoints_has_no_latest(tmp_path: Path) -> None:
    assert latest_checkpoint(str(tmp_path / "empty")) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / checkpoints.LATEST_FILE).write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="not a checkpoint pointer"):
        latest_checkpoint(str(tmp_path / "bad"))
