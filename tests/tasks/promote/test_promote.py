"""Promotion and rollback against a real MLflow sqlite registry with real registered generators."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tasks.promote.config import GateConfig, LockConfig
from tasks.promote.gates import MissingMetricError
from tasks.promote.metrics import read_version_metrics, set_version_metrics
from tasks.promote.run import lock_uri, promote, rollback
from tasks.tracking import TrackingConfig, setup_tracking
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.promote.support import (
    NAME,
    aliases,
    make_config,
    promote_in_process,
    register_generator,
    version_tags,
)

GOOD = {"fvd": 50.0, "val_bits_per_token": 3.0}
# Thresholds only: any candidate under them passes, whatever the champion's values.
LOOSE = [GateConfig(metric="fvd", greater_is_better=False, threshold=100.0)]


@pytest.fixture
def store(tmp_path: Path) -> TrackingConfig:
    """A fresh registry of this test's own (a copy of the session's empty store), made active."""
    tracking = TrackingConfig(
        uri=fresh_store_uri(tmp_path / "mlflow.db"),
        experiment="arvid-test",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    setup_tracking(tracking)
    return tracking


def _champion_v1(store: TrackingConfig, tmp_path: Path) -> str:
    version = register_generator(store, tmp_path, GOOD)
    assert promote(make_config(store, candidate=f"models:/{NAME}/{version}")).decision == "promoted"
    return version


def test_metrics_round_trip_as_version_tags_named_arvid_metric(
    store: TrackingConfig, tmp_path: Path
) -> None:
    version = register_generator(store, tmp_path)
    set_version_metrics(NAME, version, {"fvd": 41.25, "seconds_per_video": 0.1})
    assert version_tags(version)["arvid.metric.fvd"] == "41.25"
    assert read_version_metrics(NAME, version) == {"fvd": 41.25, "seconds_per_video": 0.1}
    with pytest.raises(ValueError, match="is NaN"):
        set_version_metrics(NAME, version, {"fvd": float("nan")})
    with pytest.raises(ValueError, match="metric name 'f v d'"):
        set_version_metrics(NAME, version, {"f v d": 1.0})


def test_the_first_model_passes_on_absolute_gates_alone(
    store: TrackingConfig, tmp_path: Path
) -> None:
    version = register_generator(store, tmp_path, GOOD)
    gates = [
        GateConfig(metric="fvd", greater_is_better=False, threshold=100, min_relative_change=0.02)
    ]
    summary = promote(make_config(store, gates))  # candidate: the newest version
    assert summary.decision == "promoted" and summary.champion_before is None
    assert aliases() == {"champion": version}
    tags = version_tags(version)
    assert tags["arvid.promotion.decision"] == "promoted"
    assert tags["arvid.promotion.champion_before"] == "none"
    assert "arvid.promotion.replaced" not in tags
    assert summary.line().startswith(f"promote {NAME} v{version}: promoted — champion v{version}")


def test_the_first_model_failing_a_threshold_is_rejected_as_challenger(
    store: TrackingConfig, tmp_path: Path
) -> None:
    version = register_generator(store, tmp_path, {"fvd": 150.0})
    summary = promote(make_config(store, LOOSE))
    assert summary.decision == "rejected"
    assert aliases() == {"challenger": version}
    assert (
        "150 is not at most the threshold 100"
        in version_tags(version)["arvid.promotion.reason.fvd"]
    )


def test_a_better_candidate_becomes_champion_and_the_old_one_previous(
    store: TrackingConfig, tmp_path: Path
) -> None:
    first = _champion_v1(store, tmp_path)
    second = register_generator(store, tmp_path, {"fvd": 45.0, "val_bits_per_token": 3.0})
    summary = promote(make_config(store))  # default gates: FVD -2%, bits/token no worse
    assert summary.decision == "promoted", summary.reasons
    assert aliases() == {"champion": second, "previous": first}
    tags = version_tags(second)
    assert tags["arvid.promotion.replaced"] == first
    assert tags["arvid.promotion.champion_before"] == first
    assert json.loads(tags["arvid.promotion.metrics"])["fvd"] == {
        "candidate": 45.0,
        "champion": 50.0,
    }
    assert [g["metric"] for g in json.loads(tags["arvid.promotion.gates"])] == [
        "fvd",
        "val_bits_per_token",
    ]
    # The decision is an MLflow run of its own: gates as params, values as metrics.
    run = MlflowClient().get_run(tags["arvid.promotion.run_id"])
    assert run.info.run_id == summary.mlflow_run_id
    assert run.data.params["gate0.metric"] == "fvd"
    assert run.data.params["gate0.min_relative_change"] == "0.02"
    assert run.data.params["champion_before"] == first
    assert run.data.metrics["candidate.fvd"] == 45.0 and run.data.metrics["champion.fvd"] == 50.0
    assert run.data.metrics["passed"] == 1.0
    assert run.data.tags["arvid.promotion.decision"] == "promoted"


def test_a_candidate_failing_a_gate_becomes_challenger_with_reasons_and_the_champion_stays(
    store: TrackingConfig, tmp_path: Path
) -> None:
    first = _champion_v1(store, tmp_path)
    second = register_generator(store, tmp_path, {"fvd": 49.5, "val_bits_per_token": 3.25})
    summary = promote(make_config(store))
    assert summary.decision == "rejected"
    assert aliases() == {"champion": first, "challenger": second}
    tags = version_tags(second)
    assert tags["arvid.promotion.decision"] == "rejected"
    assert "needs lower by >= 2.00%, is lower by 1.00%" in tags["arvid.promotion.reason.fvd"]
    assert (
        "needs lower by >= 0, is lower by -0.25"
        in tags["arvid.promotion.reason.val_bits_per_token"]
    )
    assert tags["arvid.promotion.reasons"].count(";") == 1  # both reasons, one line
    assert MlflowClient().get_run(summary.mlflow_run_id).data.metrics["passed"] == 0.0
    assert "rejected — challenger v2, champion stays v1" in summary.line()

    # Re-evaluated and better, the challenger passes: its old reasons and the alias go.
    set_version_metrics(NAME, second, {"fvd": 40.0, "val_bits_per_token": 2.9})
    assert promote(make_config(store, candidate=f"models:/{NAME}@challenger")).decision == (
        "promoted"
    )
    assert aliases() == {"champion": second, "previous": first}
    assert not [k for k in version_tags(second) if k.startswith("arvid.promotion.reason.")]


def test_a_missing_metric_fails_the_gate_or_stops_as_the_gate_says(
    store: TrackingConfig, tmp_path: Path
) -> None:
    first = _champion_v1(store, tmp_path)
    second = register_generator(store, tmp_path, {"fvd": 40.0})  # never got bits/token
    summary = promote(make_config(store))
    assert summary.decision == "rejected"
    reason = version_tags(second)["arvid.promotion.reason.val_bits_per_token"]
    assert "has no arvid.metric.val_bits_per_token tag — evaluate it first" in reason

    third = register_generator(store, tmp_path, {"fvd": 40.0})
    strict = [GateConfig(metric="val_bits_per_token", greater_is_better=False, threshold=5,
                         on_missing="error")]  # fmt: skip
    with pytest.raises(MissingMetricError, match=f"{NAME} v{third} has no arvid.metric"):
        promote(make_config(store, strict))
    assert aliases() == {"champion": first, "challenger": second}  # nothing written
    assert "arvid.promotion.decision" not in version_tags(third)


def test_promoting_the_champion_again_changes_nothing(
    store: TrackingConfig, tmp_path: Path
) -> None:
    first = _champion_v1(store, tmp_path)
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    summary = promote(make_config(store, candidate=f"models:/{NAME}@champion"))
    assert summary.decision == "already-champion" and summary.mlflow_run_id is None
    assert aliases() == {"champion": first}
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


def test_rollback_restores_previous_and_walks_the_chain_back(
    store: TrackingConfig, tmp_path: Path
) -> None:
    versions = [register_generator(store, tmp_path, {"fvd": 90.0 - i}) for i in range(3)]
    for version in versions:
        promote(make_config(store, LOOSE, candidate=f"models:/{NAME}/{version}"))
    v1, v2, v3 = versions
    assert aliases() == {"champion": v3, "previous": v2}

    summary = rollback(make_config(store))
    assert (summary.decision, summary.candidate_version, summary.champion) == (
        "rolled-back",
        v3,
        v2,
    )
    assert aliases() == {"champion": v2, "previous": v1}  # v2 had replaced v1
    tags = version_tags(v3)
    assert tags["arvid.promotion.rolled_back_to"] == v2
    assert tags["arvid.promotion.rolled_back_run_id"] == summary.mlflow_run_id
    assert "arvid.promotion.restored_at" in version_tags(v2)
    assert summary.line() == (
        f"rollback {NAME}: champion v{v3} -> v{v2}, previous now v{v1} "
        f"(MLflow run {summary.mlflow_run_id})"
    )

    assert rollback(make_config(store)).previous is None  # v1 replaced nothing
    assert aliases() == {"champion": v1}
    with pytest.raises(ValueError, match="no 'previous' version to roll back to"):
        rollback(make_config(store))


def test_rollback_never_makes_the_rolled_back_version_previous(
    store: TrackingConfig, tmp_path: Path
) -> None:
    v1 = register_generator(store, tmp_path, {"fvd": 60.0})
    v2 = register_generator(store, tmp_path, {"fvd": 50.0})
    for version in (v1, v2, v1):  # v1 promoted back over v2: v1 replaced v2, v2 replaced v1
        promote(make_config(store, LOOSE, candidate=f"models:/{NAME}/{version}"))
    assert aliases() == {"champion": v1, "previous": v2}
    rollback(make_config(store))
    assert aliases() == {"champion": v2}  # v2's predecessor is v1, the version rolled back


@pytest.mark.parametrize(
    ("candidate", "error", "message"),
    [
        ("models:/arvid-tokenizer/1", ValueError, "give a registered version of arvid-generator"),
        ("runs:/abc/model", ValueError, "models:/arvid-generator/<N> or models:/arvid-generator@"),
        (f"models:/{NAME}/7", FileNotFoundError, "no such registered model, version or alias"),
    ],
)
def test_a_candidate_that_is_not_a_version_of_the_model_is_refused(
    store: TrackingConfig, tmp_path: Path, candidate: str, error: type, message: str
) -> None:
    register_generator(store, tmp_path, GOOD)
    with pytest.raises(error, match=message):
        promote(make_config(store, candidate=candidate))
    assert aliases() == {}


def test_the_lock_lives_beside_the_sqlite_store_or_under_the_configured_root(
    store: TrackingConfig, tmp_path: Path
) -> None:
    config = make_config(store)
    assert lock_uri(config) == str(tmp_path / "mlflow.db.promote-arvid-generator.lock")
    config.promote.lock = LockConfig(root="s3://bucket/locks")
    assert lock_uri(config) == "s3://bucket/locks/promote-arvid-generator.lock"
    config.promote.lock = LockConfig()
    config.tracking = TrackingConfig(uri="http://mlflow:5000")
    with pytest.raises(ValueError, match="set promote.lock.root to an s3:// prefix"):
        lock_uri(config)


@pytest.mark.parametrize("lock_place", ["beside-sqlite", "s3"])
def test_concurrent_promotions_leave_aliases_as_some_serial_order_would(
    store: TrackingConfig, tmp_path: Path, lock_place: str, request: pytest.FixtureRequest
) -> None:
    """Three processes promote three passing candidates at once. Serially, each is judged against
    the one promoted just before it; without the lock all three read the same champion."""
    lock = LockConfig(timeout_s=120)
    if lock_place == "s3":  # as machines sharing an MLflow server would; racers inherit the env
        lock = LockConfig(root=f"s3://{request.getfixturevalue('s3_env')}/locks", timeout_s=120)
    first = _champion_v1(store, tmp_path)
    racers = [register_generator(store, tmp_path, GOOD) for _ in range(3)]
    no_worse = [
        GateConfig(metric="fvd", greater_is_better=False, min_absolute_change=0.0),
        GateConfig(metric="val_bits_per_token", greater_is_better=False, min_relative_change=0.0),
    ]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(racers)), context.Queue()
    processes = [
        context.Process(
            target=promote_in_process,
            args=(
                make_config(store, no_worse, f"models:/{NAME}/{v}", lock).model_dump_json(),
                barrier,
                results,
            ),
        )
        for v in racers
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert all("error" not in o for o in outcomes), outcomes
    assert all(o["decision"] == "promoted" for o in outcomes)

    # Serial order = the chain of "judged against": v1 -> a -> b -> c, each link used once.
    before = {v: version_tags(v)["arvid.promotion.champion_before"] for v in racers}
    chain = [first]
    while len(chain) <= len(racers):
        following = [v for v, judged in before.items() if judged == chain[-1]]
        assert len(following) == 1, f"{chain[-1]} was replaced by {following} (racers: {before})"
        chain.append(following[0])
    assert aliases() == {"champion": chain[-1], "previous": chain[-2]}
    assert {o["lock"] for o in outcomes} == {lock_uri(make_config(store, lock=lock))}
