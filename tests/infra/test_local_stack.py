"""arvid's jobs against the local stack: S3 storage, the MLflow server on PostgreSQL, the Prefect
server and a two-node Ray cluster — started by `infra/local_stack.py` as a user would."""

from __future__ import annotations

import pytest

from infra.local_stack import SERVICES, LocalStack
from tests.infra.conftest import CleanRun
from tests.infra.stack_support import nodes_that_ran, read_manifest_rows, run_arvid, s3_keys

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def test_every_service_answers_and_ray_has_two_nodes(local_stack: LocalStack) -> None:
    assert local_stack.healthy() == dict.fromkeys(SERVICES, True)
    assert local_stack.ray_nodes() == 2


def test_ingest_writes_a_versioned_dataset_to_s3(
    local_stack: LocalStack, clean_run: CleanRun
) -> None:
    summary = clean_run.ingest
    assert summary["dataset_root"] == "s3://arvid/datasets/demo"
    rows = read_manifest_rows(local_stack, f"datasets/demo/{summary['version']}/manifest.jsonl")
    assert len(rows) == summary["clips_total"] > 0
    assert len({row["key"] for row in rows}) == len(rows)
    assert summary["shards_new"] == len(s3_keys(local_stack, "datasets/demo/shards/"))


def test_the_tokenizer_is_registered_on_the_mlflow_server_with_artifacts_on_s3(
    local_stack: LocalStack, clean_run: CleanRun
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=local_stack.endpoints().mlflow)
    version = client.get_model_version_by_alias("arvid-tokenizer", "champion")
    run = client.get_run(version.run_id)
    assert run.data.tags["arvid.dataset_version"] == clean_run.ingest["version"]
    # The server proxies artifacts: they land in its S3 destination, not on the client's disk.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert s3_keys(local_stack, "mlartifacts/")


def test_tokenization_spreads_over_both_ray_nodes(
    local_stack: LocalStack, clean_run: CleanRun
) -> None:
    summary = clean_run.tokenize
    assert summary["tokens_uri"].startswith("s3://arvid/tokens/")
    assert summary["clips_total"] == clean_run.ingest["clips_total"]
    ran = nodes_that_ran(local_stack, ["TokenizerWorker", "decode_batch", "read_shard"])
    assert len(ran) == 2, ran


def test_pretraining_registers_a_generator_trained_on_both_ray_nodes(
    local_stack: LocalStack, clean_run: CleanRun
) -> None:
    from mlflow.tracking import MlflowClient

    stage = "{name: s64, resolution: 64, frames: 9, schedule: next_scale, steps: 4, batch_size: 4}"
    result = run_arvid(
        local_stack,
        "pretrain",
        "--workers",
        "2",
        "--set",
        f"pretrain.stages=[{stage}]",
        "--set",
        "pretrain.checkpoint_every=2",
        "--set",
        "pretrain.log_every=2",
    )
    assert result.returncode == 0, result.output[-4000:]
    client = MlflowClient(tracking_uri=local_stack.endpoints().mlflow)
    versions = client.search_model_versions("name='arvid-generator'")
    assert versions and versions[0].tags["arvid.dataset_version"] == clean_run.ingest["version"]
    # Two Ray Train workers of one CPU each on two one-CPU nodes: one ran on each node.
    assert len(nodes_that_ran(local_stack, ["RayTrainWorker"])) == 2
