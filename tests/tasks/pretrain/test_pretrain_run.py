"""`pretrain` end to end on the CPU: two stages on Ray Train, tokens made on demand, MLflow runs,
the registered generator; and every bad config refused before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from models.generator.videoar import VideoAR
from models.tokenizer import TokenizerConfig
from tasks.pretrain.config import PretrainConfig
from tasks.pretrain.generator_registry import load_generator
from tasks.pretrain.lineage import GeneratorLineage
from tasks.pretrain.run import check_stages, generator_config, pretrain
from tasks.promote.metrics import read_version_metrics
from tasks.registry import GENERATOR_MODEL, ModelKindError
from tasks.settings import ArvidConfig
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.tokenize.support import make_dataset, register_tokenizer, tiny_tokenizer

STAGES = [
    {"name": "small", "resolution": 16, "frames": 5, "schedule": "next_scale", "steps": 3,
     "batch_size": 2, "error_correction": {"enabled": True}, "frame_mask": {"prob": 0.5}},
    {"name": "large", "resolution": 32, "frames": 9, "schedule": "next_scale", "steps": 2,
     "batch_size": 2},
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    from tasks.tracking import TrackingConfig

    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-pretrain-test",
        artifact_location=str(root / "mlartifacts"),
    )
    register_tokenizer(tracking, root / "tokenizer", tiny_tokenizer(scales=[1, 2, 4]))
    dataset = make_dataset(root, count=4, inputs_per_shard=2)
    return {"root": root, "tracking": tracking, "dataset": dataset}


def _config(workspace, stages=STAGES, **pretrain) -> ArvidConfig:
    root: Path = workspace["root"]
    return ArvidConfig.model_validate(
        {
            "tracking": workspace["tracking"].model_dump(),
            "ingest": {"source": "unused", "output_root": "unused"},
            "tokenize": {
                "tokens_root": str(root / "tokens"),
                "batch_size": 2,
                "num_actors": 1,
                "progress": False,
            },
            "pretrain": {
                "dataset": workspace["dataset"].dataset_root,
                "model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
                "stages": stages,
                "checkpoint_dir": str(root / "checkpoints"),
                "checkpoint_every": 2,
                "log_every": 1,
                "register_alias": "candidate",
                **pretrain,
            },
        }
    )


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_two_stages_train_on_ray_register_a_generator_and_a_rerun_skips_them(workspace):
    config = _config(workspace)
    first = pretrain(config)

    assert [s.name for s in first.stages] == ["small", "large"]
    assert [s.steps for s in first.stages] == [3, 2]
    assert not any(s.skipped for s in first.stages)
    assert all(s.val_bits is not None and s.val_bits > 0 for s in first.stages)
    # Each stage trained on tokens of its own clip shape, made on demand by tokenization.
    assert first.stages[0].tokens_uri.endswith("16x5+latent")  # error correction needs latents
    assert first.stages[1].tokens_uri.endswith("32x9")

    client = MlflowClient()
    version = client.get_model_version_by_alias(GENERATOR_MODEL, "candidate")
    assert str(version.version) == first.model_version
    assert version.tags["arvid.dataset_version"] == first.dataset_version
    assert version.tags["arvid.tokens_version"] == first.stages[-1].tokens_version
    # Promotion's gates read the held-out bits/token from the version itself.
    metrics = read_version_metrics(GENERATOR_MODEL, first.model_version)
    assert metrics["val_bits_per_token"] == pytest.approx(first.stages[-1].val_bits)
    children = client.search_runs(
        [client.get_run(first.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'",
    )
    assert sorted(r.data.tags["arvid.stage"] for r in children) == ["large", "small"]
    assert all("val_bits_per_token" in r.data.metrics for r in children)

    model = load_generator(f"models:/{GENERATOR_MODEL}@candidate")
    assert isinstance(model, VideoAR) and model.config.latent_hw == (4, 4)
    with pytest.raises(ModelKindError, match="not a generator"):
        load_generator("models:/arvid-tokenizer@champion")

    again = pretrain(config)
    assert all(s.skipped for s in again.stages)
    # The same training is registered once; its lineage is on the version for evaluation.
    assert again.registered_before and again.model_version == first.model_version
    lineage = GeneratorLineage.from_tags(
        dict(client.get_model_version(GENERATOR_MODEL, first.model_version).tags), "v"
    )
    assert (lineage.resolution, lineage.frames, lineage.schedule) == (32, 9, "next_scale")
    assert lineage.tokens_uri == first.stages[-1].tokens_uri and lineage.val_shards == 1
    assert [s.checkpoint for s in again.stages] == [s.checkpoint for s in first.stages]


def _tokenizer(scales=None) -> TokenizerConfig:
    return TokenizerConfig(base_channels=4, channel_multipliers=[1, 1, 1, 1], scales=scales)


def test_a_copy_head_on_a_stage_other_than_next_scale_is_refused_naming_the_field():
    stage = {"name": "s", "resolution": 32, "frames": 9, "schedule": "ntp", "steps": 1}
    config = PretrainConfig(stages=[stage], model={"copy_previous": True})
    with pytest.raises(ValueError, match=r"stages\[0\] \(s\): schedule ntp: pretrain.model.copy"):
        check_stages(config, _tokenizer(None))


@pytest.mark.parametrize(
    ("stage", "scales", "message"),
    [
        ({"resolution": 36}, [1, 2], r"stages\[0\] \(s\): resolution/frames: H=36"),
        ({"frames": 8}, [1, 2], r"stages\[0\] \(s\): resolution/frames: T=8 frames"),
        ({"schedule": "ntp"}, [1, 2], r"stages\[0\] \(s\): schedule ntp needs single-scale"),
        ({"schedule": "next_scale"}, None, r"next_scale needs a multi-scale tokenizer"),
        ({"schedule": "nbp", "block": (1, 1, 3)}, None, r"block/regions: nbp block \(1, 1, 3\)"),
    ],
)
def test_stages_the_tokenizer_cannot_serve_are_refused_naming_stage_and_field(
    stage, scales, message
):
    base = {"name": "s", "resolution": 32, "frames": 9, "schedule": "next_scale", "steps": 1}
    config = PretrainConfig(stages=[{**base, **stage}])
    with pytest.raises(ValueError, match=message):
        check_stages(config, _tokenizer(scales))


@pytest.mark.parametrize(
    ("pretrain", "message"),
    [
        ({"stages": [{"name": "s", "resolution": 32, "frames": 9, "schedule": "diffusion", "steps": 1}]},
         "stages.0.schedule"),
        ({"stages": [{"name": "s", "resolution": 32, "frames": 9, "steps": 1, "batch_size": 3}],
          "num_workers": 2}, r"stages\[0\] \(s\): batch_size=3 does not split over num_workers=2"),
        ({"stages": [{"name": "s", "resolution": 32, "frames": 9}]}, "exactly one of steps and token_budget"),
        ({"stages": [{"name": "s", "resolution": 32, "frames": 9, "steps": 1, "schedule": "ntp",
                      "error_correction": {"enabled": True}}]}, "need schedule next_scale"),
    ],
)  # fmt: skip
def test_bad_pretrain_configs_fail_validation_naming_the_field(pretrain, message):
    from tasks.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(ArvidConfig, overrides=[f"pretrain={pretrain}".replace("'", '"')])


def test_a_missing_dataset_fails_before_any_training(workspace, tmp_path):
    config = _config(workspace, dataset=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere: no ingested dataset here"):
        pretrain(config)


def test_holding_out_every_shard_fails_before_any_work(workspace, tmp_path):
    # The workspace dataset has 2 shards.
    config = _config(workspace, val_shards=2, checkpoint_dir=str(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match="val_shards=2 would leave nothing to train on"):
        pretrain(config)
    assert not (tmp_path / "checkpoints").exists()


def test_a_config_survives_a_dump_and_revalidation_as_pipelines_and_deployments_do_it(workspace):
    config = _config(workspace)
    again = ArvidConfig.model_validate(config.model_dump(mode="json"))
    assert again == config
    with pytest.raises(ValueError, match="far holds FAR's switches"):
        PretrainConfig.model_validate({"stages": [{**STAGES[0], "far": {"short_window": 2}}]})


def test_the_generator_takes_vocabulary_and_digit_levels_from_the_tokenizer():
    pretrain_config = PretrainConfig.model_validate(
        {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "output_head": "digits"},
         "stages": STAGES}
    )  # fmt: skip
    model = generator_config(pretrain_config, [8, 5, 5], num_classes=4)
    assert (model.vocab_size, model.output_levels, model.num_classes) == (200, [8, 5, 5], 4)
    plain = pretrain_config.model_copy(
        update={"model": pretrain_config.model.model_copy(update={"output_head": "vocab"})}
    )
    assert generator_config(plain, [8, 5, 5], num_classes=4).output_levels is None
