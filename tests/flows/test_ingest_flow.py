"""The ingest flow and the `arvid` CLI, on a real Prefect test server and a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

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
