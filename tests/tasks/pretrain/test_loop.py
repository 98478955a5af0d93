import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from models.generator.config import GeneratorConfig, VideoARConfig
from models.generator.persist import build_generator, load_generator_from_dir
from models.generator.videoar import VideoAR
from tasks.pretrain.config import StageConfig
from tasks.pretrain.loop import StageSpec, TrainOptions, run_stage
from tasks.pretrain.tokens import class_names, load_token_clips, read_token_dataset
from tasks.storage import StorageSettings
from tasks.train.events import MetricsEvent
from tasks.train.worker import WorkerContext
from tests.tasks.pretrain.support import write_token_dataset

VOCAB = 16


def _spec(
    tmp_path, tokens_uri, stage, run_name, videoar=None, init_from=None, model=None, **options
):
    dataset = read_token_dataset(tokens_uri)
    classes = class_names(dataset.rows)
    model = GeneratorConfig(
        vocab_size=VOCAB,
        num_classes=len(classes),
        n_layer=2,
        n_head=2,
        n_embd=32,
        label_dropout=0.2,
        **(model or {}),
    )
    train_shards, val_shards = dataset.split(1)
    return StageSpec(
        stage=stage,
        model=model,
        videoar=videoar,
        train=load_token_clips(dataset, train_shards, classes, model.num_classes),
        val=load_token_clips(dataset, val_shards, classes, model.num_classes),
        run_dir=str(tmp_path / run_name),
        init_from=init_from,
        seed=5,
        options=TrainOptions(**{"checkpoint_every": 3, "log_every": 1, **options}),
        storage=StorageSettings(),
    )


def _weights(result) -> dict[str, torch.Tensor]:
    return load_file(f"{result.final_checkpoint}/model.safetensors")


class Killed(Exception):
    pass


def test_a_stage_killed_mid_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    tokens = write_token_dataset(tmp_path / "tokens", [(3, 4, 4)], VOCAB)
    stage = StageConfig(name="s1", resolution=32, frames=9, schedule="nbp", block=(1, 1, 4),
                        steps=8, batch_size=4, lr=3e-3, warmup_steps=2)  # fmt: skip
    straight = run_stage(_spec(tmp_path, tokens, stage, "straight"))

    def kill_at_step_7(event):
        if isinstance(event, MetricsEvent) and event.step == 7:
            raise Killed

    spec = _spec(tmp_path, tokens, stage, "resumed")
    with pytest.raises(Killed):
        run_stage(spec, dataclasses.replace(WorkerContext(), publish=kill_at_step_7))
    resumed = run_stage(spec)

    assert resumed.resumed_from_step == 6  # the last checkpoint before the kill
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # Training moved the weights (the comparison above is not between two copies of the init).
    torch.manual_seed(5)
    initial = build_generator(spec.model).state_dict()
    assert max(float((a[k] - initial[k]).abs().max()) for k in a) > 1e-3


def test_a_second_stage_on_a_larger_grid_starts_from_the_first_stage(tmp_path):
    small = write_token_dataset(tmp_path / "small", [(2, 2, 2)], VOCAB)
    large = write_token_dataset(tmp_path / "large", [(3, 4, 4)], VOCAB)
    first = StageConfig(name="a", resolution=16, frames=5, schedule="ntp", steps=6, batch_size=4)
    done = run_stage(_spec(tmp_path, small, first, "a"))
    second = StageConfig(
        name="b",
        resolution=32,
        frames=9,
        schedule="frame",
        steps=1,
        batch_size=4,
        lr=1e-9,
        warmup_steps=0,
    )
    spec = _spec(tmp_path, large, second, "b", init_from=done.final_checkpoint)
    result = run_stage(spec)
    before, after = _weights(done), _weights(result)
    # One step at lr 1e-9 keeps the inherited weights: the second stage really loaded the first's.
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-5
    assert result.val_bits is not None and np.isfinite(result.val_bits)


def test_a_next_scale_stage_trains_with_error_correction_and_the_frame_mask_on(tmp_path):
    scales = [1, 2, 4]
    tokens = write_token_dataset(tmp_path / "ms", [(3, s, s) for s in scales], VOCAB, levels=[4, 4])
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))
    stage = StageConfig(
        name="vs", resolution=32, frames=9, schedule="next_scale", steps=30, batch_size=4, lr=3e-3,
        error_correction={"enabled": True, "max_strength": 0.3},
        frame_mask={"prob": 0.5},
    )  # fmt: skip
    events = []
    spec = _spec(tmp_path, tokens, stage, "vs", videoar=videoar)
    result = run_stage(spec, dataclasses.replace(WorkerContext(), publish=events.append))
    losses = [
        e.metrics["loss_bits_per_token"] for e in events if "loss_bits_per_token" in e.metrics
    ]
    assert losses[-1] < losses[0]
    model = load_generator_from_dir(result.final_checkpoint)
    assert isinstance(model, VideoAR)
    assert (
        model.config.error_correction.enabled and model.config.error_correction.mode == "infinity"
    )
    assert model.config.frame_mask.prob == 0.5
    assert spec.train.continuous is not None  # the latents the corrections re-quantize from


@pytest.mark.parametrize("copy_previous", [False, True])
def test_a_next_scale_stage_with_a_digit_head_learns_and_saves_the_head(tmp_path, copy_previous):
    scales = [1, 2, 4]
    tokens = write_token_dataset(tmp_path / "ms", [(3, s, s) for s in scales], VOCAB, levels=[4, 4])
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))
    stage = StageConfig(
        name="digits", resolution=32, frames=9, schedule="next_scale", steps=30, batch_size=4,
        lr=3e-3,
    )  # fmt: skip
    events = []
    digits = {"output_head": "digits", "output_levels": [4, 4], "copy_previous": copy_previous}
    spec = _spec(tmp_path, tokens, stage, "digits", videoar=videoar, model=digits)
    result = run_stage(spec, dataclasses.replace(WorkerContext(), publish=events.append))
    losses = [
        e.metrics["loss_bits_per_token"] for e in events if "loss_bits_per_token" in e.metrics
    ]
    assert losses[-1] < losses[0]
    model = load_generator_from_dir(result.final_checkpoint)
    assert model.generator.digit_levels == [4, 4] and model.generator.head.out_features == 8
    assert (model.generator.copy_gate is not None) == copy_previous
    # Held-out bits/token is the code cross-entropy of the product of the digits' softmaxes.
    clips = spec.val
    batch = [torch.from_numpy(a) for a in clips.scales]
    labels = torch.from_numpy(clips.labels)
    with torch.no_grad():
        log_probs, targets = model.eval()(batch, labels, perturb=False)
        bits = float(F.cross_entropy(log_probs.flatten(0, 1), targets.flatten())) / math.log(2)
    assert result.val_bits == pytest.approx(bits, abs=1e-4)


def test_infinity_error_correction_without_stored_latents_fails_naming_the_remedy(tmp_path):
    scales = [1, 2, 4]
    tokens = write_token_dataset(tmp_path / "ms", [(3, s, s) for s in scales], VOCAB)  # no latents
    stage = StageConfig(
        name="vs", resolution=32, frames=9, schedule="next_scale", steps=1, batch_size=4,
        error_correction={"enabled": True},
    )  # fmt: skip
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))
    with pytest.raises(ValueError, match="pass continuous="):
        run_stage(_spec(tmp_path, tokens, stage, "vs", videoar=videoar))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_next_scale_stage_trains_with_ddp_on_two_ray_workers(tmp_path):
    from tasks.pretrain.driver import fit_stage
    from tasks.ray_runtime import RayConfig
    from tasks.train.events import ignore_event
    from tasks.train.ray_driver import WorkerGroup

    scales = [1, 2, 4]
    tokens = write_token_dataset(tmp_path / "ms", [(3, s, s) for s in scales], VOCAB, levels=[4, 4])
    stage = StageConfig(
        name="ddp", resolution=32, frames=9, schedule="next_scale", steps=4, batch_size=4,
        error_correction={"enabled": True}, frame_mask={"prob": 0.5},
    )  # fmt: skip
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))
    spec = _spec(tmp_path, tokens, stage, "ddp", videoar=videoar, checkpoint_every=2)
    result = fit_stage(spec, WorkerGroup(num_workers=2), RayConfig(num_cpus=2), ignore_event)
    assert result.steps == 4 and result.val_bits is not None
    # Both workers stepped together: the saved weights are rank 0's after 4 synchronised steps.
    model = load_generator_from_dir(result.final_checkpoint)
    assert isinstance(model, VideoAR)


def _stages_in_turn(specs: list[StageSpec], worker: WorkerContext) -> list | None:
    """Ray Train loop: the stages one after another on the same workers (rank 0: their results)."""
    results = [run_stage(spec, worker) for spec in specs]
    return results if worker.rank == 0 else None


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_fsdp_on_two_workers_trains_and_resumes_to_the_weights_of_ddp(tmp_path):
    from tasks.pretrain.driver import fit_stage
    from tasks.ray_runtime import RayConfig
    from tasks.train.events import ignore_event
    from tasks.train.ray_driver import WorkerGroup, fit_on_ray

    scales = [1, 2, 4]
    tokens = write_token_dataset(tmp_path / "ms", [(3, s, s) for s in scales], VOCAB, levels=[4, 4])
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))

    # The copy head over a digit head: the output layers run on the hidden states outside the
    # wrapped forward (as the chunked loss does), the path that FSDP could get wrong.
    head = {"output_head": "digits", "output_levels": [4, 4], "copy_previous": True}

    def spec(run: str, fsdp: bool) -> StageSpec:
        stage = StageConfig(name="s", resolution=32, frames=9, schedule="next_scale", steps=4,
                            batch_size=4, lr=3e-3, error_correction={"enabled": True})  # fmt: skip
        return _spec(
            tmp_path, tokens, stage, run, videoar=videoar, model=head, checkpoint_every=2,
            fsdp=fsdp,
        )  # fmt: skip

    workers, ray_config = WorkerGroup(num_workers=2), RayConfig(num_cpus=2)
    # DDP, then FSDP, on one group of workers: starting one costs ~12 s here (an empty fit).
    ddp, whole = fit_on_ray(
        _stages_in_turn,
        [spec("ddp", fsdp=False), spec("fsdp", fsdp=True)],
        workers,
        ray_config,
        ignore_event,
        run_name="arvid-test-ddp-then-fsdp",
        storage_path=str(tmp_path / "ray"),
    )
    a = _weights(whole)
    # Cut short after step 2: the step-4 checkpoint is gone and latest.json points at step 2,
    # whose files hold the whole AdamW state gathered from both shards.
    run_dir = tmp_path / "fsdp"
    shutil.rmtree(run_dir / "step-00000004")
    (run_dir / "latest.json").write_text(json.dumps({"step": 2, "checkpoint": "step-00000002"}))
    resumed = fit_stage(spec("fsdp", fsdp=True), workers, ray_config, ignore_event)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    b, c = _weights(resumed), _weights(ddp)
    assert a.keys() == b.keys() == c.keys()  # whole tensors under the module's own names
    assert any(k.endswith("copy_gate.weight") for k in a)
    assert max(float(v.abs().max()) for k, v in a.items() if "digit_transition" in k) > 0
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6  # resume is exact
    # Against DDP only the order of float sums differs; AdamW's normalised steps turn that into
    # at most ~lr per step on weights whose gradients are near zero (measured: 4e-3 after 4 steps).
    assert max(float((a[k] - c[k]).abs().max()) for k in a) <= 4 * 3e-3
    assert whole.val_bits == pytest.approx(ddp.val_bits, abs=1e-3)


@pytest.mark.parametrize("schedule", ["nbp", "next_scale"])
def test_activation_checkpointing_and_the_chunked_loss_train_to_the_same_weights(
    tmp_path, schedule
):
    scales = [1, 2, 4] if schedule == "next_scale" else [4]
    shapes = [(3, s, s) for s in scales]
    tokens = write_token_dataset(tmp_path / "t", shapes, VOCAB, levels=[4, 4])
    videoar = VideoARConfig(levels=[4, 4], scales=scales, latent_hw=(4, 4))
    stage = StageConfig(name="s", resolution=32, frames=9, schedule=schedule, block=(1, 1, 4),
                        steps=3, batch_size=4, lr=3e-3)  # fmt: skip
    videoar = videoar if schedule == "next_scale" else None
    plain = run_stage(_spec(tmp_path, tokens, stage, "plain", videoar=videoar))
    lean = run_stage(
        _spec(tmp_path, tokens, stage, "lean", videoar=videoar,
              activation_checkpointing=True, loss_chunk_rows=7)
    )  # fmt: skip
    a, b = _weights(plain), _weights(lean)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert lean.val_bits == pytest.approx(plain.val_bits, abs=1e-5)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(tmp_path):
    tokens = write_token_dataset(tmp_path / "t", [(3, 4, 4)], VOCAB)
    stage = StageConfig(name="s", resolution=32, frames=9, schedule="frame", steps=2,
                        batch_size=4, lr=3e-3)  # fmt: skip
    eager = run_stage(_spec(tmp_path, tokens, stage, "eager"))
    compiled = run_stage(_spec(tmp_path, tokens, stage, "compiled", compile_blocks=True))
    a, b = _weights(eager), _weights(compiled)
    assert a.keys() == b.keys()  # in-place compile keeps the state-dict names
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


def test_a_stage_with_a_time_budget_stops_early_with_a_final_checkpoint(tmp_path):
    tokens = write_token_dataset(tmp_path / "tokens", [(3, 4, 4)], VOCAB)
    stage = StageConfig(name="s1", resolution=32, frames=9, schedule="nbp", block=(1, 1, 4),
                        steps=100_000, batch_size=4, lr=3e-3, max_minutes=0.01)  # fmt: skip
    events: list[MetricsEvent] = []
    worker = dataclasses.replace(WorkerContext(), publish=events.append)
    result = run_stage(_spec(tmp_path, tokens, stage, "budget", checkpoint_every=10**6), worker)
    assert 1 <= result.steps < 100_000 and result.seconds >= 0.6
    assert result.final_checkpoint.endswith(f"step-{result.steps:08d}")
    assert load_file(f"{result.final_checkpoint}/model.safetensors")
    # The lr reached the floor with the budget, not with the (far) step limit.
    last_lr = [e.metrics["lr"] for e in events if "lr" in e.metrics][-1]
    assert last_lr < 3e-3 * 0.2
    assert "max_minutes" not in stage.model_dump()  # not part of what the run key hashes
