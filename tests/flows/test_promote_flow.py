"""`arvid promote` end to end: the CLI runs the arvid-promote flow on a Prefect test server."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main
from tasks.tracking import TrackingConfig, setup_tracking
from tests.tasks.promote.support import NAME, aliases, register_generator, version_tags

pytestmark = pytest.mark.usefixtures("prefect_server")


def _args(tracking: TrackingConfig, *extra: str) -> list[str]:
    settings = [
        f"tracking.uri={tracking.uri}",
        f"tracking.experiment={tracking.experiment}",
        f"tracking.artifact_location={tracking.artifact_location}",
    ]
    return ["promote", "--json", *extra, *[i for s in settings for i in ("--set", s)]]


def test_cli_promote_and_rollback_run_the_flow_and_exit_2_on_user_errors(
    tracking_config: TrackingConfig, tmp_path: Path, capsys
) -> None:
    setup_tracking(tracking_config)
    first = register_generator(tracking_config, tmp_path, {"fvd": 50.0, "val_bits_per_token": 3.0})
    second = register_generator(tracking_config, tmp_path, {"fvd": 45.0, "val_bits_per_token": 3.0})

    assert main(_args(tracking_config, "--candidate", f"models:/{NAME}/{first}")) == 0
    assert main(_args(tracking_config)) == 0  # the newest version, judged against the champion
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert out[-2].startswith(f"promote {NAME} v{second}: promoted — champion v{second}, previous")
    assert (summary["decision"], summary["champion"], summary["previous"]) == (
        "promoted",
        second,
        first,
    )
    mlflow.set_tracking_uri(tracking_config.uri)
    assert aliases() == {"champion": second, "previous": first}
    invoked_by = version_tags(second)["arvid.promotion.invoked_by"]
    assert invoked_by.startswith("prefect flow run ")
    run = MlflowClient().get_run(summary["mlflow_run_id"])
    assert run.data.metrics["candidate.fvd"] == 45.0

    assert main(_args(tracking_config, "--rollback")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["champion"] == first
    assert aliases() == {"champion": first}

    assert main(_args(tracking_config, "--rollback")) == 2
    err = capsys.readouterr().err
    assert f"arvid promote: error: {NAME}: no 'previous' version to roll back to" in err
    assert main(_args(tracking_config, "--rollback", "--candidate", f"models:/{NAME}/1")) == 2
    assert "--rollback restores 'previous'; it takes no --candidate" in capsys.readouterr().err
    assert main(_args(tracking_config, "--candidate", f"models:/{NAME}/9")) == 2
    assert f"models:/{NAME}/9: no such registered model" in capsys.readouterr().err
