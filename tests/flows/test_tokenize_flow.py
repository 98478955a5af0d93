"""`arvid tokenize` end to end: the CLI runs the arvid-tokenize flow on a Prefect test server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from flows.cli import main
from tasks import storage
from tasks.tracking import TrackingConfig
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.tokenize.support import make_dataset, register_tokenizer, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("prefect_server", "ray_session")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 4-clip dataset and a registered toy tokenizer, shared by this module's tests."""
    root = tmp_path_factory.mktemp("tokenize-flow")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-tokenize-flow-test",
        artifact_location=str(root / "mlartifacts"),
    )
    register_tokenizer(tracking, root / "tokenizer", tiny_tokenizer())
    return {"dataset": make_dataset(root, count=2), "tracking": tracking}


def _args(tmp_path: Path, workspace: dict, *extra: str) -> list[str]:
    tracking = workspace["tracking"]
    settings = [
        f"tracking.uri={tracking.uri}",
        f"tracking.experiment={tracking.experiment}",
        f"tracking.artifact_location={tracking.artifact_location}",
        f"tokenize.tokens_root={tmp_path / 'tokens'}",
        "tokenize.batch_size=2",
        "tokenize.num_actors=1",
    ]
    return [
        "tokenize",
        "--json",
        "--dataset",
        workspace["dataset"].dataset_root,
        "--tokenizer",
        "models:/arvid-tokenizer@champion",
        *extra,
        *[item for setting in settings for item in ("--set", setting)],
    ]


async def _completed_flow_runs(name: str) -> int:
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        runs = await client.read_flow_runs()
    return sum(
        1
        for run in runs
        if flows.get(run.flow_id) == name and run.state is not None and run.state.is_completed()
    )


def test_cli_tokenize_runs_the_flow_and_prints_the_token_version(
    tmp_path: Path, workspace: dict, capsys
) -> None:
    dataset = workspace["dataset"]
    before = asyncio.run(_completed_flow_runs("arvid-tokenize"))

    assert main(_args(tmp_path, workspace, "--resolution", "32", "--frames", "9")) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[-2].startswith(
        f"tokenize d@{dataset.version} with arvid-tokenizer-v1 at 32x9: 4 clips"
    )
    assert summary["clips_total"] == 4 and summary["published_new"]
    assert len(storage.read_text(summary["manifest"]).splitlines()) == 4
    assert asyncio.run(_completed_flow_runs("arvid-tokenize")) == before + 1

    mlflow.set_tracking_uri(workspace["tracking"].uri)
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.data.tags["arvid.tokens_version"] == summary["tokens_version"]
    assert run.data.tags["arvid.dataset_version"] == dataset.version


def test_cli_tokenize_names_a_clip_shape_the_tokenizer_cannot_encode_and_exits_2(
    tmp_path: Path, workspace: dict, capsys
) -> None:
    assert main(_args(tmp_path, workspace, "--resolution", "36")) == 2
    err = capsys.readouterr().err
    assert "H=36: the tokenizer needs H divisible by 8" in err and "--resolution" in err
    assert not (tmp_path / "tokens").exists()
