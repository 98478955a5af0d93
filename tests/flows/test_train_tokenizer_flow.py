"""`arvid train-tokenizer`: the Prefect flow end to end on Ray, a Prefect test server and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from flows.cli import main
from tasks.tracking import TrackingConfig
from tasks.train.tokenizer_registry import load_tokenizer
from tests.support.mlflow_store import fresh_store_uri

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_session")]


def _overrides(tmp_path: Path, tracking) -> list[str]:
    return [
        f"synthetic_dir={tmp_path / 'raw'}",
        "synthetic.count=2",
        "synthetic.width=32",
        "synthetic.height=32",
        "synthetic.frames=24",
        "synthetic.preset=ultrafast",
        f"ingest.source={tmp_path / 'raw' / 'labels.jsonl'}",
        f"ingest.output_root={tmp_path / 'datasets'}",
        "ingest.clip_frames=9",
        "ingest.clip_stride=8",
        "ingest.inputs_per_shard=1",
        "ingest.progress=false",
        f"tracking.uri={tracking.uri}",
        f"tracking.experiment={tracking.experiment}",
        f"tracking.artifact_location={tracking.artifact_location}",
        "tokenizer_training.model={base_channels: 4, num_res_blocks: 1}",
        "tokenizer_training.loss={discriminator: {base_channels: 4, num_layers: 2}}",
        "tokenizer_training.resolution=32",
        "tokenizer_training.frames=9",
        "tokenizer_training.batch_size=1",
        "tokenizer_training.log_every=1",
        f"tokenizer_training.checkpoint_dir={tmp_path / 'checkpoints'}",
    ]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory):
    """(--set arguments, tracking config) of a made and ingested two-video dataset."""
    root = tmp_path_factory.mktemp("train-flow")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-test",
        artifact_location=str(root / "mlartifacts"),
    )
    sets = [x for o in _overrides(root, tracking) for x in ("--set", o)]
    assert main(["make-dataset", *sets]) == 0
    assert main(["ingest", *sets]) == 0
    return sets, tracking


def test_cli_trains_registers_and_prints_a_loadable_reference(ingested, capsys) -> None:
    sets, tracking = ingested
    capsys.readouterr()
    flow_name = FlowFilter(name=FlowFilterName(any_=["arvid-train-tokenizer"]))
    with get_client(sync_client=True) as client:
        # The Prefect server is shared by the session: other tests run this flow too.
        earlier = {run.id for run in client.read_flow_runs(flow_filter=flow_name)}
    # The dataset defaults to what the ingest section wrote; two workers, one shard each; the
    # flow runs under the Prefect test server.
    assert main(["train-tokenizer", "--steps", "2", "--workers", "2", "--json", *sets]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[-2].startswith("train-tokenizer tiny@") or out[-2].startswith(
        "train-tokenizer demo@"
    )
    assert "-> models:/arvid-tokenizer@champion" in out[-2]
    assert summary["steps"] == 2 and summary["num_workers"] == 2
    assert summary["model_version"] == "1" and summary["alias"] == "champion"

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(flow_filter=flow_name) if r.id not in earlier]
    assert [run.state.type.value for run in runs] == ["COMPLETED"]

    tokenizer = load_tokenizer("models:/arvid-tokenizer@champion", tracking_config=tracking)
    video = torch.zeros(1, 3, 9, 32, 32)
    with torch.no_grad():
        assert tokenizer(video)[0].shape == video.shape


def test_cli_reports_too_many_workers_for_the_shards_before_training(ingested, capsys) -> None:
    sets, _ = ingested
    capsys.readouterr()
    assert main(["train-tokenizer", "--workers", "3", *sets]) == 2
    assert "2 shard(s) for 3 workers" in capsys.readouterr().err
