"""`evaluate` end to end on the CPU: a tiny generator pretrained on Ray, scored by Ray actors with
the real I3D; metrics land on the version, samples in the run; an interrupted evaluation resumes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from tasks import storage
from tasks.evaluate.run import evaluate
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.ingest.run import ingest_dataset
from tasks.ingest.synthetic import make_synthetic_dataset
from tasks.pretrain.run import pretrain
from tasks.promote.metrics import read_version_metrics
from tasks.registry import GENERATOR_MODEL
from tasks.settings import ArvidConfig
from tasks.tracking import TrackingConfig
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.tokenize.support import register_tokenizer, tiny_tokenizer

STAGE = {"name": "only", "resolution": 16, "frames": 17, "schedule": "next_scale", "steps": 2,
         "batch_size": 2}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, i3d_model):
    """A registered tiny VideoAR on 17-frame clips (FVD needs 16 frames); 4 held-out clips."""
    root = tmp_path_factory.mktemp("evaluate")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-evaluate-test",
        artifact_location=str(root / "mlartifacts"),
    )
    register_tokenizer(tracking, root / "tokenizer", tiny_tokenizer(scales=[1, 2]))
    make_synthetic_dataset(
        SyntheticDatasetConfig(count=4, frames=34, preset="ultrafast"), root / "raw"
    )
    ingest_dataset(
        IngestConfig(
            source=str(root / "raw" / "labels.jsonl"), output_root=str(root / "datasets"),
            name="d", clip_frames=17, clip_stride=17, inputs_per_shard=2, workers=1,
            progress=False,
        )
    )  # fmt: skip
    config = ArvidConfig.model_validate(
        {
            "tracking": tracking.model_dump(),
            "ingest": {"source": "unused", "output_root": str(root / "datasets"), "name": "d"},
            "tokenize": {"tokens_root": str(root / "tokens"), "batch_size": 2, "num_actors": 1,
                         "progress": False},
            "pretrain": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32}, "stages": [STAGE],
                         "checkpoint_dir": str(root / "checkpoints"), "num_workers": 1},
            "evaluate": {"output_root": str(root / "evaluations"), "batch_size": 2,
                         "num_actors": 1, "sample_videos": 3, "progress": False,
                         "fvd": {"real_videos": 4, "generated_videos": 4}},
        }
    )  # fmt: skip
    return config, pretrain(config)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_evaluation_scores_the_generator_tags_its_version_and_logs_samples(trained):
    config, pretrained = trained
    summary = evaluate(config)

    assert summary.model == f"models:/{GENERATOR_MODEL}/{pretrained.model_version}"
    assert summary.units_done_before == 0 and not summary.recorded_before
    metrics = summary.metrics
    for name in ("fvd", "fvd_frame_prediction", "val_bits_per_token", "tokenizer_psnr",
                 "tokenizer_ssim", "prediction_psnr", "repeat_last_frame_psnr",
                 "seconds_per_video", "sampling_steps", "frames_per_second"):  # fmt: skip
        assert math.isfinite(metrics[name]), name
    assert metrics["fvd"] > 0
    # 5 latent frames x 2 scales, one forward each; held-out bits as pretraining measured them.
    assert metrics["sampling_steps"] == 10
    assert metrics["val_bits_per_token"] == pytest.approx(pretrained.stages[-1].val_bits, rel=1e-4)
    # Promotion reads what evaluation attached to the version.
    attached = read_version_metrics(GENERATOR_MODEL, pretrained.model_version)
    assert attached["fvd"] == pytest.approx(metrics["fvd"])
    client = MlflowClient()
    run = client.get_run(summary.mlflow_run_id)
    assert run.data.params["fvd_protocol.real_videos"] == "4"
    assert run.data.params["fvd_protocol.standard_size"] == "false"
    local = Path(
        client.download_artifacts(
            summary.mlflow_run_id, "", str(Path(config.evaluate.output_root).parent / "dl")
        )
    )
    assert (
        sorted(p.name for p in (local / "samples").iterdir())
        == [Path(s).name for s in summary.samples]
        and len(summary.samples) == 3
    )
    with Image.open(local / "contact_sheet.png") as sheet:
        assert sheet.size[1] == 3 * 16 + 2 * 2  # three sample rows of 16 px, 2 px apart


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_an_interrupted_evaluation_redoes_only_its_missing_units_to_the_same_numbers(trained):
    config, pretrained = trained
    first = evaluate(config)
    again = evaluate(config)
    assert again.recorded_before and again.units_done_before == again.units
    assert again.metrics == first.metrics

    # Cut short: two units' records lost (their shards stay half-published), the version untagged.
    records = storage.join(first.output, "records")
    lost = sorted(storage.list_prefix(records, recursive=False))[:2]
    for uri in lost:
        Path(uri).unlink()
    MlflowClient().delete_model_version_tag(GENERATOR_MODEL, pretrained.model_version,
                                            "arvid.evaluation")  # fmt: skip
    resumed = evaluate(config)
    assert resumed.units_done_before == resumed.units - 2 and not resumed.recorded_before
    timing = {"seconds_per_video", "frames_per_second"}  # wall clock of redone units: not exact
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == pytest.approx(
        {k: v for k, v in first.metrics.items() if k not in timing}
    )


@pytest.mark.slow
def test_a_model_with_clips_too_short_for_fvd_is_refused_before_any_work(trained):
    config, _ = trained
    short = config.model_copy(deep=True)
    short.evaluate.fvd.start_frame = 4
    with pytest.raises(ValueError, match="FVD protocol needs frames 4..19"):
        evaluate(short)
