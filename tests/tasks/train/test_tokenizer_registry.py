"""One tiny Ray Train run (2 CPU workers, DDP over gloo), registered and loaded back every way."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tasks.data.datasets import DatasetRef
from tasks.ingest.config import IngestConfig
from tasks.ray_runtime import RayConfig
from tasks.settings import ArvidConfig
from tasks.tracking import TrackingConfig
from tasks.train.checkpoints import load_checkpoint
from tasks.train.tokenizer_registry import load_tokenizer
from tasks.train.tokenizer_trainer import TokenizerTrainingSummary, train_tokenizer
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.train.conftest import tiny_training

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def trained(tiny_dataset: DatasetRef, tmp_path_factory: pytest.TempPathFactory):
    """(summary, tracking config) of a 4-step training on two workers."""
    root = tmp_path_factory.mktemp("registry")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-test",
        artifact_location=str(root / "mlartifacts"),
    )
    config = ArvidConfig(
        ingest=IngestConfig(source="unused", output_root=str(root / "unused")),
        tracking=tracking,
        ray=RayConfig(num_cpus=2),
        tokenizer_training=tiny_training(
            dataset=f"{tiny_dataset.root}@{tiny_dataset.version}",
            checkpoint_dir=str(root / "checkpoints"),
            num_workers=2,
            register_alias="champion",
        ),
    )
    return train_tokenizer(config), tracking


def _clip() -> torch.Tensor:
    return torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _outputs(tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return tokenizer(_clip())[0]


def test_training_runs_the_budget_and_registers_the_champion(trained) -> None:
    summary, _ = trained
    assert isinstance(summary, TokenizerTrainingSummary)
    assert summary.steps == 4 and summary.steps_trained == 4 and summary.num_workers == 2
    assert summary.registered_model == "arvid-tokenizer" and summary.model_version == "1"
    assert summary.reference() == "models:/arvid-tokenizer@champion"
    assert summary.clips_per_s > 0 and "psnr_db" in summary.metrics


def test_loading_by_alias_version_run_or_folder_gives_the_trained_weights(trained) -> None:
    summary, tracking = trained
    expected = _outputs(load_checkpoint(summary.checkpoint).build_tokenizer().eval())
    for reference in (
        "models:/arvid-tokenizer@champion",
        f"models:/arvid-tokenizer/{summary.model_version}",
        f"runs:/{summary.run_id}/tokenizer",
        summary.checkpoint,  # a checkpoint folder is a model directory too
    ):
        tokenizer = load_tokenizer(reference, tracking_config=tracking)
        assert not tokenizer.training
        assert torch.equal(_outputs(tokenizer), expected), reference


@pytest.mark.parametrize(
    "reference",
    [
        "models:/arvid-tokenizer@nonexistent",
        "models:/arvid-tokenizer/99",
        "models:/no-such-model@champion",
        "runs:/0123456789abcdef/tokenizer",
        "no/such/folder",
    ],
)
def test_a_missing_reference_is_an_error_that_names_it(trained, reference: str) -> None:
    _, tracking = trained
    with pytest.raises(FileNotFoundError, match=f"tokenizer '{reference}' not found"):
        load_tokenizer(reference, tracking_config=tracking)


def test_mlflow_run_holds_metrics_samples_and_lineage(trained) -> None:
    summary, tracking = trained
    mlflow.set_tracking_uri(tracking.uri)
    client = MlflowClient()
    run = client.get_run(summary.run_id)
    metrics = run.data.metrics
    for key in ("loss/reconstruction", "psnr_db", "ssim", "clips_per_s", "code_usage"):
        assert key in metrics, key
    assert {f"code_usage/scale{k}" for k in range(3)} <= set(metrics)
    assert "loss/discriminator" in metrics  # the GAN came on at step 2
    history = client.get_metric_history(summary.run_id, "psnr_db")
    assert [m.step for m in history] == [2, 4]
    samples = [a.path for a in client.list_artifacts(summary.run_id, "samples")]
    assert samples == ["samples/step-00000002.mp4", "samples/step-00000004.mp4"]
    local = Path(client.download_artifacts(summary.run_id, samples[-1]))
    from tasks.data.video import decode_clip

    assert decode_clip(local.read_bytes()).shape == (9, 32, 64, 3)  # input | reconstruction
    assert run.data.tags["arvid.dataset_version"] == summary.dataset_version
    version = client.get_model_version("arvid-tokenizer", summary.model_version)
    assert version.tags["arvid.dataset_version"] == summary.dataset_version
    assert version.tags["arvid.config_hash"] == summary.config_hash
    assert version.tags["arvid.git_commit"] == summary.git_commit
