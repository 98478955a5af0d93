"""A killed training run resumes from its latest checkpoint and ends at exactly the step budget."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT
from tasks.data.datasets import DatasetRef
from tasks.storage import StorageSettings
from tasks.train import tokenizer_loop
from tasks.train.checkpoints import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    state_digest,
)
from tasks.train.tokenizer_loop import TrainingSpec, resume_point, run_training
from tests.tasks.train.conftest import small_window_training, tiny_training

_RUN_SPEC = (
    "import sys\n"
    "from tasks.train.tokenizer_loop import TrainingSpec, run_training\n"
    "run_training(TrainingSpec.model_validate_json(open(sys.argv[1]).read()))\n"
)


def _spec(dataset: DatasetRef, run_dir: Path, **overrides) -> TrainingSpec:
    training = small_window_training(**overrides)
    return TrainingSpec(
        training=training, storage=StorageSettings(), dataset=dataset, run_dir=str(run_dir)
    )


def _kill_after_first_checkpoint(spec: TrainingSpec, tmp_path: Path) -> int:
    """Run the loop in a child process, SIGKILL it once a checkpoint exists; the latest step."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    child = subprocess.Popen([sys.executable, "-c", _RUN_SPEC, str(spec_file)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(spec.run_dir) is None:
            assert child.poll() is None, "training exited before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
    return load_checkpoint(latest_checkpoint(spec.run_dir)).step


def test_killed_run_resumes_from_its_checkpoint_to_the_exact_step_count(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    killed_at = _kill_after_first_checkpoint(
        _spec(tiny_dataset, run_dir, steps=10_000, checkpoint_every=2), tmp_path
    )
    assert killed_at >= 2 and killed_at % 2 == 0
    saved = load_checkpoint(latest_checkpoint(str(run_dir)))

    # The same run with a budget a few steps past the kill: it continues, it does not restart.
    total = killed_at + 3
    summary = run_training(_spec(tiny_dataset, run_dir, steps=total, checkpoint_every=2))
    assert summary.resumed_from_step == killed_at
    assert summary.resumed_weights_digest == state_digest(saved.tokenizer_state)
    assert summary.steps_trained == 3 and summary.final_step == total
    final = load_checkpoint(latest_checkpoint(str(run_dir)))
    assert final.step == total and final.uri == summary.checkpoint
    # Adam counts its updates: restored optimizer state means one count across both runs.
    adam_steps = {float(s["step"]) for s in final.optimizer_state["tokenizer"]["state"].values()}
    assert adam_steps == {float(total)}
    assert len(list_checkpoints(str(run_dir))) <= 2  # keep_checkpoints

    # Re-running a finished run trains nothing more.
    again = run_training(_spec(tiny_dataset, run_dir, steps=total, checkpoint_every=2))
    assert again.steps_trained == 0 and again.final_step == total


def test_resume_refuses_a_checkpoint_beyond_the_budget_or_of_another_model(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_training(_spec(tiny_dataset, run_dir, steps=2))
    with pytest.raises(
        CheckpointError, match="already at step 2, beyond tokenizer_training.steps=1"
    ):
        resume_point(_spec(tiny_dataset, run_dir, steps=1))
    other = _spec(tiny_dataset, run_dir, steps=4)
    other.training.model.base_channels = 8
    with pytest.raises(CheckpointError, match="another tokenizer config"):
        resume_point(other)
    fresh = run_training(_spec(tiny_dataset, run_dir, steps=1, resume=False))
    assert fresh.resumed_from_step == 0 and fresh.final_step == 1


def test_run_key_ignores_the_budget_but_not_what_shapes_the_weights() -> None:
    base = tiny_training()
    assert base.run_key("v1") == tiny_training(steps=999, checkpoint_every=7).run_key("v1")
    assert base.run_key("v1") != base.run_key("v2")
    assert base.run_key("v1") != tiny_training(lr=3e-4).run_key("v1")
    windowed = tiny_training(resolution=64)
    assert windowed.run_key("v1") != tiny_training(resolution=64, crop=32).run_key("v1")


def test_clip_sizes_the_tokenizer_cannot_take_are_config_errors() -> None:
    with pytest.raises(ValueError, match="frames=8: the tokenizer needs frames = 1 \\+ 4n"):
        tiny_training(frames=8)
    with pytest.raises(ValueError, match="resolution=36: the tokenizer needs a multiple of 8"):
        tiny_training(resolution=36)
    with pytest.raises(ValueError, match="crop=12: must be a multiple of 8"):
        tiny_training(crop=12)
    with pytest.raises(ValueError, match="crop=64: .* at most resolution="):
        tiny_training(crop=64)


def test_multiscale_training_windows_must_keep_every_scale_of_the_pyramid() -> None:
    # (1, 2, 4) on a 2x2 latent would merge the two coarse scales: not the pyramid used at 32px.
    with pytest.raises(ValueError, match="window 16px .* at least 32px so that every scale"):
        tiny_training(resolution=64, crop=16)
    assert tiny_training(resolution=64, crop=32).window_side == 32
    single_scale = {"base_channels": 4, "num_res_blocks": 1}
    assert tiny_training(model=single_scale, resolution=64, crop=8).window_side == 8
    with pytest.raises(ValueError, match="resolution=16: .* clips of at least 32px"):
        tiny_training(resolution=16, crop=8, full_window_fraction=0.5)


def test_small_crops_train_a_pyramid_when_training_ends_on_whole_windows() -> None:
    finishing = tiny_training(resolution=64, crop=16, full_window_fraction=0.25)
    assert [finishing.on_full_windows(p) for p in (0.0, 0.74, 0.75, 1.0)] == [
        False,
        False,
        True,
        True,
    ]
    assert tiny_training(resolution=64).on_full_windows(0.0)
    single_scale = {"base_channels": 4, "num_res_blocks": 1}
    assert not tiny_training(model=single_scale, resolution=64, crop=8).on_full_windows(1.0)


def test_training_switches_to_whole_windows_for_its_last_share_of_steps(
    tiny_dataset: DatasetRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, ...]] = []

    class Recording(tokenizer_loop.VideoTokenizer):
        def forward(self, video):  # the shape of every batch the loop trains on
            if self.training:  # not the samples
                seen.append(tuple(video.shape[-2:]))
            return super().forward(video)

    monkeypatch.setattr(tokenizer_loop, "VideoTokenizer", Recording)
    # (1, 2) needs 16px windows: 8px crops merge its scales, so the last half runs uncropped.
    spec = _spec(
        tiny_dataset, tmp_path / "run", steps=4, crop=8, full_window_fraction=0.5, resume=False
    )
    assert run_training(spec).final_step == 4
    assert seen == [(8, 8), (8, 8), (16, 16), (16, 16)]
