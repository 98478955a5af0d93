"""A `schedule: far` pretraining stage: trains FAR on the stored continuous latents."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.generator.config import FARConfig, GeneratorConfig
from models.generator.far import FAR
from models.generator.far_sampling import predict_frames
from models.generator.persist import load_generator_from_dir
from tasks.pretrain.config import StageConfig
from tasks.pretrain.loop import StageSpec, TrainOptions, run_stage
from tasks.pretrain.tokens import class_names, load_token_clips, read_token_dataset
from tasks.storage import StorageSettings
from tasks.train.worker import WorkerContext
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.pretrain.support import write_token_dataset

LEVELS = [4, 4]


def _spec(tmp_path, tokens_uri, stage, far):
    dataset = read_token_dataset(tokens_uri)
    classes = class_names(dataset.rows)
    model = GeneratorConfig(
        vocab_size=1, num_classes=len(classes), n_layer=2, n_head=2, n_embd=32, label_dropout=0.1
    )
    train_shards, val_shards = dataset.split(1)
    return StageSpec(
        stage=stage,
        model=model,
        videoar=None,
        train=load_token_clips(dataset, train_shards, classes, model.num_classes),
        val=load_token_clips(dataset, val_shards, classes, model.num_classes),
        run_dir=str(tmp_path / stage.name),
        init_from=None,
        seed=3,
        options=TrainOptions(checkpoint_every=10, log_every=5),
        storage=StorageSettings(),
        far=far,
    )


def test_a_far_stage_trains_on_continuous_latents_and_saves_a_far_model(tmp_path):
    tokens = write_token_dataset(tmp_path / "t", [(3, 4, 4)], 16, levels=LEVELS)
    stage = StageConfig(
        name="far", resolution=32, frames=9, schedule="far", steps=40, batch_size=8, lr=3e-3,
        far={"short_window": 2, "long_patch": 2},
    )  # fmt: skip
    assert stage.needs_latents
    far = FARConfig(latent_dim=len(LEVELS), latent_hw=(4, 4), short_window=2, long_patch=2)
    events = []
    spec = _spec(tmp_path, tokens, stage, far)
    result = run_stage(spec, dataclasses.replace(WorkerContext(), publish=events.append))
    losses = [e.metrics["loss_flow_mse"] for e in events if "loss_flow_mse" in e.metrics]
    assert losses[-1] < 0.8 * losses[0]
    assert result.val_bits is not None and 0 < result.val_bits < losses[0]
    model = load_generator_from_dir(result.final_checkpoint)
    assert isinstance(model, FAR) and model.config == far
    # The saved model predicts frames beyond its training length.
    context = torch.from_numpy(spec.val.continuous[:2, :, :1])
    predicted = predict_frames(model.eval(), context, 4, ode_steps=2)
    assert predicted.shape == (2, len(LEVELS), 4, 4, 4) and torch.isfinite(predicted).all()


def test_a_far_stage_without_stored_latents_fails_naming_the_remedy(tmp_path):
    tokens = write_token_dataset(tmp_path / "t", [(3, 4, 4)], 16)  # ids only
    stage = StageConfig(name="far", resolution=32, frames=9, schedule="far", steps=1, batch_size=4)
    far = FARConfig(latent_dim=len(LEVELS), latent_hw=(4, 4), long_patch=2)
    with pytest.raises(ValueError, match="tokenize.latents=true"):
        run_stage(_spec(tmp_path, tokens, stage, far))


def test_far_switches_on_another_schedule_are_refused():
    with pytest.raises(ValueError, match="need schedule far"):
        StageConfig(name="s", resolution=32, frames=9, schedule="frame", steps=1,
                    far={"short_window": 2})  # fmt: skip


def test_far_stages_are_checked_against_the_tokenizer_latent_before_any_work():
    from models.tokenizer import TokenizerConfig
    from tasks.pretrain.config import PretrainConfig
    from tasks.pretrain.run import check_stages, far_config

    tokenizer = TokenizerConfig(base_channels=4, channel_multipliers=[1, 1, 1, 1], scales=[1, 2])
    base = {"name": "s", "resolution": 32, "frames": 9, "schedule": "far", "steps": 1}
    check_stages(PretrainConfig(stages=[base]), tokenizer)  # multi-scale tokenizers have latents
    config = far_config(tokenizer, StageConfig(**base, far={"short_window": 2}))
    assert config.latent_hw == (4, 4) and config.latent_dim == len(tokenizer.levels)
    assert config.short_window == 2
    with pytest.raises(ValueError, match=r"(?s)stages\[0\] \(s\): far: .*long_patch"):
        check_stages(PretrainConfig(stages=[{**base, "resolution": 16}]), tokenizer)
    mixed = [base, {**base, "name": "t", "schedule": "next_scale"}]
    with pytest.raises(ValueError, match=r"\['s'\] are far stages"):
        check_stages(PretrainConfig(stages=mixed), tokenizer)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_far_stage_trains_with_ddp_on_two_ray_workers(tmp_path):
    from tasks.pretrain.driver import fit_stage
    from tasks.ray_runtime import RayConfig
    from tasks.train.events import ignore_event
    from tasks.train.ray_driver import WorkerGroup

    tokens = write_token_dataset(tmp_path / "t", [(3, 4, 4)], 16, levels=LEVELS)
    stage = StageConfig(name="ddp", resolution=32, frames=9, schedule="far", steps=3, batch_size=4)
    # No compressed frame in a 3-frame clip: that path still gets a (zero) gradient for DDP.
    far = FARConfig(latent_dim=len(LEVELS), latent_hw=(4, 4), long_patch=2)
    result = fit_stage(
        _spec(tmp_path, tokens, stage, far), WorkerGroup(num_workers=2), RayConfig(num_cpus=2),
        ignore_event,
    )  # fmt: skip
    assert result.steps == 3 and result.val_bits is not None
    assert isinstance(load_generator_from_dir(result.final_checkpoint), FAR)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_pretrain_flow_tokenizes_latents_trains_far_and_registers_it(tmp_path):
    from mlflow import MlflowClient

    from tasks.pretrain.generator_registry import load_generator
    from tasks.pretrain.run import pretrain
    from tasks.promote.metrics import read_version_metrics
    from tasks.registry import GENERATOR_MODEL
    from tasks.settings import ArvidConfig
    from tasks.tracking import TrackingConfig
    from tests.tasks.tokenize.support import make_dataset, register_tokenizer, tiny_tokenizer

    tracking = TrackingConfig(
        uri=fresh_store_uri(tmp_path / "mlflow.db"),
        experiment="arvid-far-test",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    tokenizer = tiny_tokenizer(scales=[1, 2, 4])
    register_tokenizer(tracking, tmp_path / "tokenizer", tokenizer)
    dataset = make_dataset(tmp_path, count=4, inputs_per_shard=2)
    stage = {"name": "far", "resolution": 32, "frames": 9, "schedule": "far", "steps": 2,
             "batch_size": 2, "far": {"short_window": 2, "long_patch": 2}}  # fmt: skip
    config = ArvidConfig.model_validate(
        {
            "tracking": tracking.model_dump(),
            "ingest": {"source": "unused", "output_root": "unused"},
            "tokenize": {
                "tokens_root": str(tmp_path / "tokens"),
                "batch_size": 2,
                "num_actors": 1,
                "progress": False,
            },  # fmt: skip
            "pretrain": {
                "dataset": dataset.dataset_root,
                "model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
                "stages": [stage],
                "checkpoint_dir": str(tmp_path / "checkpoints"),
                "register_alias": "candidate",
            },
        }
    )
    summary = pretrain(config)

    last = summary.stages[-1]
    assert last.tokens_uri.endswith("32x9+latent") and last.val_bits is not None
    assert "flow MSE" in summary.line()
    model = load_generator(f"models:/{GENERATOR_MODEL}@candidate")
    assert isinstance(model, FAR)
    assert model.config.latent_hw == (4, 4) and model.config.short_window == 2
    assert model.config.latent_dim == tokenizer.latent_dim
    assert model.generator.config.vocab_size == 1  # no token vocabulary to carry
    # A flow-matching error is no bits/token: promotion's bits gate does not read it.
    assert "val_bits_per_token" not in read_version_metrics(GENERATOR_MODEL, summary.model_version)
    run = MlflowClient().get_run(summary.run_id)
    assert "final/val_flow_mse" in run.data.metrics
