"""The ingest flow and the `arvid` CLI, on a real Prefect test server and a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from flows.ingest import ingest_flow
from tasks.config import load_config
from tasks.settings import ArvidConfig

pytestmark = pytest.mark.usefixtures("prefect_server")


def _demo_overrides(tmp_path: Path, tracking) -> list[str]:
    return [
        f"synthetic_dir={tmp_path / 'raw'}",
        "synthetic.count=8",
        "synthetic.frames=24",
        "synthetic.preset=ultrafast",
        f"ingest.source={tmp_path / 'raw' / 'labels.jsonl'}",
        f"ingest.output_root={tmp_path / 'datasets'}",
        "ingest.clip_frames=9",
        "ingest.clip_stride=8",
        "ingest.progress=false",
        f"tracking.uri={tracking.uri}",
        f"tracking.experiment={tracking.experiment}",
        f"tracking.artifact_location={tracking.artifact_location}",
    ]


def test_cli_demo_makes_the_dataset_runs_the_pipeline_and_prints_json(
    tmp_path: Path, tracking_config, capsys, ray_session
) -> None:
    tiny = [
        f"tokenizer_training.checkpoint_dir={tmp_path / 'checkpoints'}",
        "tokenizer_training.steps=2",
        "tokenizer_training.num_workers=1",
        "tokenizer_training.batch_size=2",
        "tokenizer_training.frames=9",
        "tokenizer_training.model.base_channels=4",
        "tokenizer_training.log_every=1",
        "tokenizer_training.sample_every=2",
        f"tokenize.tokens_root={tmp_path / 'tokens'}",
        "tokenize.num_actors=1",
        "ingest.inputs_per_shard=4",  # 2 shards: one trains, one is held out
        "pretrain.stages=[{name: s, resolution: 64, frames: 9, schedule: next_scale, steps: 2, batch_size: 2}]",
        "pretrain.num_workers=1",
        "pretrain.model.n_layer=1",
        "pretrain.model.n_embd=32",
        f"pretrain.checkpoint_dir={tmp_path / 'generator'}",
        # 9-frame clips are too short for FVD's 16 frames; the pipeline test covers both steps.
        "pipeline.evaluate=false",
        "pipeline.promote=false",
    ]
    overrides = _demo_overrides(tmp_path, tracking_config) + tiny
    args = ["demo", "--json"] + [item for o in overrides for item in ("--set", o)]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[0].startswith("make-dataset: 8 videos")
    assert any(line.startswith("pipeline: ingest ran") for line in out)
    assert any(line.strip().startswith("MLflow: mlflow ui --backend-store-uri") for line in out)
    assert summary["make_dataset"]["videos"] == 8
    pipeline = summary["pipeline"]
    assert [(s["name"], s["status"]) for s in pipeline["steps"]] == [
        ("ingest", "ran"), ("tokenizer", "ran"), ("tokenize-s", "ran"), ("pretrain", "ran"),
        ("evaluate", "skipped"), ("promote", "skipped"),
    ]  # fmt: skip
    assert pipeline["generator"].startswith("models:/arvid-generator/")
    assert ": 16 clips from 8 inputs" in pipeline["steps"][0]["line"]
    assert " 0 quarantined" in pipeline["steps"][0]["line"]

    # The ingest run in MLflow holds the counts, throughput and the manifest, tagged with the version.
    mlflow.set_tracking_uri(tracking_config.uri)
    experiment = mlflow.get_experiment_by_name(tracking_config.experiment).experiment_id
    runs = MlflowClient().search_runs([experiment], "tags.`arvid.step` = 'ingest'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["arvid.dataset_version"] == pipeline["dataset"].rsplit("@", 1)[-1]
    assert run.data.metrics["clips_total"] == 16 and run.data.metrics["clips_per_s"] > 0
    assert run.data.params["ingest.clip_frames"] == "9"
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "dataset")}
    assert {
        "dataset/manifest.jsonl",
        "dataset/quarantine.jsonl",
        "dataset/summary.json",
    } <= artifacts


def test_ingest_flow_rerun_reports_nothing_new(tmp_path: Path, tracking_config) -> None:
    overrides = _demo_overrides(tmp_path, tracking_config)
    assert main(["make-dataset", *[x for o in overrides for x in ("--set", o)]]) == 0
    config = load_config(ArvidConfig, None, overrides)
    first = ingest_flow(config)
    second = ingest_flow(config)
    assert first.published_new and not second.published_new
    assert second.version == first.version and second.inputs_processed == 0
    assert "nothing new" in second.line()


def test_cli_names_the_bad_input_and_exits_2(tmp_path: Path, capsys) -> None:
    assert (
        main(["ingest", "--source", str(tmp_path / "nowhere"), "--set", "ingest.progress=false"])
        == 2
    )
    err = capsys.readouterr().err
    assert "nowhere" in err and "not found" in err
    assert main(["ingest", "--set", "ingest.fps=-1"]) == 2
    assert "ingest.fps" in capsys.readouterr().err
