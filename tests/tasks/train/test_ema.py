"""The weights' moving average: its arithmetic, its checkpoint file, and resuming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from models.tokenizer import VideoTokenizer
from tasks.data.datasets import DatasetRef
from tasks.storage import StorageSettings
from tasks.train.checkpoints import latest_checkpoint, load_checkpoint, state_digest
from tasks.train.ema import WeightAverage
from tasks.train.tokenizer_loop import TrainingSpec, run_training
from tests.tasks.train.conftest import small_window_training


class _WithCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def test_each_update_moves_the_average_towards_the_weights_by_the_warmed_up_decay() -> None:
    module = _WithCounter()
    average = WeightAverage(module, decay=0.9)
    expected = torch.zeros(3)
    for step in range(30):
        with torch.no_grad():
            module.weight.fill_(float(step + 1))
            module.count += 1
        average.update(module, step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * (step + 1)
        assert torch.allclose(average.state_dict()["weight"], expected)
    # The warm-up binds early, the cap later; integer buffers are copied, not averaged.
    assert average.decay_at(0) == pytest.approx(0.1) and average.decay_at(1000) == 0.9
    assert int(average.state_dict()["count"]) == 30
    assert not torch.equal(average.state_dict()["weight"], module.weight.detach())


def test_a_decay_outside_0_1_or_a_state_of_another_module_is_refused() -> None:
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        WeightAverage(_WithCounter(), decay=1.0)
    with pytest.raises(ValueError, match="lacks count"):
        WeightAverage(_WithCounter(), decay=0.9, state={"weight": torch.zeros(3)})


def _spec(dataset: DatasetRef, run_dir: Path, **overrides) -> TrainingSpec:
    return TrainingSpec(
        training=small_window_training(**overrides),
        storage=StorageSettings(),
        dataset=dataset,
        run_dir=str(run_dir),
    )


def test_a_run_saves_its_average_publishes_it_and_a_resumed_run_continues_it(
    tiny_dataset: DatasetRef, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_training(_spec(tiny_dataset, run_dir, steps=2, ema_decay=0.99))
    first = load_checkpoint(latest_checkpoint(str(run_dir)))
    assert first.averaged_state is not None
    assert state_digest(first.averaged_state) != state_digest(first.tokenizer_state)

    # Resumed for one more step: the average continues from the saved one, not from the weights.
    run_training(_spec(tiny_dataset, run_dir, steps=3, ema_decay=0.99))
    final = load_checkpoint(latest_checkpoint(str(run_dir)))
    assert final.step == 3
    decay = WeightAverage(nn.Linear(1, 1), 0.99).decay_at(2)
    for name, averaged in final.averaged_state.items():
        if averaged.is_floating_point():
            expected = torch.lerp(
                first.averaged_state[name], final.tokenizer_state[name], 1 - decay
            )
            assert torch.allclose(averaged, expected, atol=1e-6), name

    # What a finished run publishes is the average; the last step's weights stay available.
    published, last_step = final.build_tokenizer(), final.build_tokenizer(averaged=False)
    assert isinstance(published, VideoTokenizer)
    assert state_digest(published.state_dict()) == state_digest(final.averaged_state)
    assert state_digest(last_step.state_dict()) == state_digest(final.tokenizer_state)


def test_a_run_without_ema_decay_keeps_no_average(tiny_dataset: DatasetRef, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_training(_spec(tiny_dataset, run_dir, steps=1))
    checkpoint = load_checkpoint(latest_checkpoint(str(run_dir)))
    assert checkpoint.averaged_state is None
    built = checkpoint.build_tokenizer()
    assert state_digest(built.state_dict()) == state_digest(checkpoint.tokenizer_state)
