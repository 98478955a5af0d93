"""`arvid demo` (make-dataset, then `arvid pipeline`) end to end on a tiny config: every step runs
under one parent MLflow run and leaves a champion with its evidence; the second run skips every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.cli import main
from tasks.promote.metrics import read_version_metrics
from tasks.registry import GENERATOR_MODEL
from tests.support.mlflow_store import fresh_store_uri

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server", "ray_session")]

STEPS = ["ingest", "tokenizer", "tokenize-only", "pretrain", "evaluate", "promote"]


def _config(root: Path) -> Path:
    config = {
        "synthetic_dir": str(root / "raw"),
        "synthetic": {"count": 4, "frames": 34, "preset": "ultrafast"},
        "tracking": {"uri": fresh_store_uri(root / "mlflow.db"), "experiment": "arvid-pipeline-test",
                     "artifact_location": str(root / "mlartifacts")},
        "ingest": {"source": str(root / "raw" / "labels.jsonl"), "output_root": str(root / "ds"),
                   "name": "d", "clip_frames": 17, "clip_stride": 17, "inputs_per_shard": 2,
                   "workers": 1},
        "tokenizer_training": {
            "model": {"base_channels": 4, "channel_multipliers": [1, 1, 1, 1], "scales": [1, 2]},
            "resolution": 16, "frames": 5, "batch_size": 2, "steps": 2, "num_workers": 1,
            "checkpoint_dir": str(root / "ckpt" / "tokenizer"), "checkpoint_every": 2,
            "log_every": 1, "sample_every": 100,
        },
        "tokenize": {"tokens_root": str(root / "tokens"), "batch_size": 2, "num_actors": 1},
        "pretrain": {
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32}, "num_workers": 1,
            "stages": [{"name": "only", "resolution": 16, "frames": 17, "schedule": "next_scale",
                        "steps": 2, "batch_size": 2}],
            "checkpoint_dir": str(root / "ckpt" / "generator"),
        },
        "evaluate": {"output_root": str(root / "eval"), "batch_size": 2, "num_actors": 1,
                     "sample_videos": 2, "fvd": {"real_videos": 4, "generated_videos": 4}},
        "promote": {"lock": {"root": str(root / "locks")}},
    }  # fmt: skip
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_pipeline_promotes_a_generator_and_a_second_run_skips_every_step(
    tmp_path: Path, capsys
) -> None:
    config = _config(tmp_path)
    # `arvid demo` is make-dataset then `arvid pipeline`: one end-to-end run checks both commands.
    assert main(["demo", "--json", "--config", str(config)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    demo = json.loads(out[-1])
    assert out[0].startswith("make-dataset: 4 videos") and demo["make_dataset"]["videos"] == 4
    assert any(line.startswith("pipeline: ingest ran") for line in out)
    assert any(line.strip().startswith("MLflow: mlflow ui --backend-store-uri") for line in out)
    first = demo["pipeline"]
    assert [s["name"] for s in first["steps"]] == STEPS
    assert ": 8 clips from 4 inputs" in first["steps"][0]["line"]
    assert " 0 quarantined" in first["steps"][0]["line"]
    assert all(s["status"] == "ran" for s in first["steps"]), first["steps"]
    assert first["promotion"] == "promoted"
    version = first["generator"].rsplit("/", 1)[-1]
    assert first["champion"] == version
    # The promoted version carries its evidence, and the samples are files one can open.
    metrics = read_version_metrics(GENERATOR_MODEL, version)
    assert {"fvd", "val_bits_per_token", "seconds_per_video"} <= set(metrics)
    assert Path(first["contact_sheet"]).is_file()
    assert all(Path(p).is_file() for p in first["samples"]) and len(first["samples"]) == 2
    # One parent MLflow run; every step's run is its child.
    client = MlflowClient()
    parent = client.get_run(first["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    assert {r.data.tags.get("arvid.step") for r in children} >= {
        "ingest", "train-tokenizer", "pretrain", "evaluate"
    }  # fmt: skip
    assert parent.info.status == "FINISHED"
    # The ingest run holds the counts, throughput and the manifest, tagged with the version.
    ingest = client.search_runs([parent.info.experiment_id], "tags.`arvid.step` = 'ingest'")
    assert len(ingest) == 1
    assert ingest[0].data.tags["arvid.dataset_version"] == first["dataset"].rsplit("@", 1)[-1]
    assert ingest[0].data.metrics["clips_total"] == 8 and ingest[0].data.metrics["clips_per_s"] > 0
    assert ingest[0].data.params["ingest.clip_frames"] == "17"
    artifacts = {a.path for a in client.list_artifacts(ingest[0].info.run_id, "dataset")}
    assert {"dataset/manifest.jsonl", "dataset/quarantine.jsonl", "dataset/summary.json"} <= (
        artifacts
    )

    assert main(["pipeline", "--json", "--config", str(config)]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["status"] for s in second["steps"]] == ["skipped"] * len(STEPS), second["steps"]
    assert second["generator"] == first["generator"] and second["champion"] == version

    # With evaluation and promotion switched off, those two steps say so instead of running.
    off = ["--set", "pipeline.evaluate=false", "--set", "pipeline.promote=false"]
    assert main(["pipeline", "--json", "--config", str(config), *off]) == 0
    third = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lines = {s["name"]: (s["status"], s["line"]) for s in third["steps"]}
    assert lines["evaluate"] == ("skipped", "pipeline.evaluate is off"), lines
    assert lines["promote"] == ("skipped", "pipeline.promote is off"), lines
