"""Deployments: prefect.yaml mirrors the table in flows/deployments.py, `prefect deploy` accepts
it, and a deployment served by `arvid serve` runs to completion when triggered with
run_deployment, all against the session's Prefect test server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from flows.deployments import DEPLOYMENTS, build_deployment, select
from tasks.config import REPO_ROOT, load_config
from tasks.settings import ArvidConfig
from tasks.tracking import TrackingConfig
from tests.tasks.promote.support import NAME, aliases, register_generator

PREFECT_YAML = REPO_ROOT / "prefect.yaml"


def _yaml_deployments() -> dict[str, dict]:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in data["deployments"]}


def _expected_schedules(cron: str | None, timezone: str) -> list[dict[str, str]]:
    return [{"cron": cron, "timezone": timezone}] if cron else []


def test_prefect_yaml_declares_exactly_the_deployments_of_the_table() -> None:
    declared = _yaml_deployments()
    assert list(declared) == [spec.name for spec in DEPLOYMENTS]
    demo = load_config(ArvidConfig)
    for spec in DEPLOYMENTS:
        entry = declared[spec.name]
        assert entry["entrypoint"] == spec.entrypoint, spec.name
        assert (entry.get("schedules") or []) == _expected_schedules(spec.cron, spec.timezone)
        assert entry["description"] == spec.description, spec.name
        assert entry["work_pool"]["name"], spec.name
        # The defaults are configs/demo.yaml, as `arvid serve` makes them.
        assert ArvidConfig.model_validate(entry["parameters"]["config"]) == demo, spec.name


def test_each_deployment_takes_the_config_models_as_its_parameters() -> None:
    config = load_config(ArvidConfig, None, ["ingest.fps=4"])
    for spec in DEPLOYMENTS:
        schema = spec.load_flow().parameters.model_dump()
        assert schema["required"] == ["config"], spec.name
        assert schema["properties"]["config"]["$ref"] == "#/definitions/ArvidConfig"
        # Prefect's UI draws every section from the pydantic models' schema.
        assert {"IngestConfig", "TokenizeConfig", "PromoteConfig"} <= set(schema["definitions"])
        deployment = build_deployment(spec, config)
        assert deployment.enforce_parameter_schema
        assert ArvidConfig.model_validate(deployment.parameters["config"]) == config
        crons = [s.schedule.cron for s in deployment.schedules or []]
        assert crons == ([spec.cron] if spec.cron else []), spec.name


def test_selecting_an_unknown_deployment_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no deployment 'nope' — choose from"):
        select(["nope"])


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_server fixture sets the API URL"
    return url


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": _api_url(), **extra}


async def _read_deployment(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)


async def _create_process_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_prefect_deploy_registers_every_deployment_of_prefect_yaml(tmp_path: Path) -> None:
    pool = yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["work_pool"]["name"]
    asyncio.run(_create_process_pool(pool))
    # A copy, so that `prefect deploy` writes nothing into the checkout.
    shutil.copy(PREFECT_YAML, tmp_path / "prefect.yaml")
    shutil.copytree(
        REPO_ROOT / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("__pycache__")
    )
    prefect = Path(sys.executable).parent / "prefect"
    result = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    demo = load_config(ArvidConfig)
    for spec in DEPLOYMENTS:
        flow_name = spec.load_flow().name
        deployment = asyncio.run(_read_deployment(f"{flow_name}/{spec.name}"))
        assert deployment.entrypoint == spec.entrypoint
        assert deployment.work_pool_name == pool
        assert deployment.enforce_parameter_schema
        assert ArvidConfig.model_validate(deployment.parameters["config"]) == demo
        assert [s.schedule.cron for s in deployment.schedules] == ([spec.cron] if spec.cron else [])


async def _delete_deployment(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            await client.delete_deployment((await client.read_deployment_by_name(name)).id)
        except ObjectNotFound:
            pass


def _wait_for_deployment(name: str, server: subprocess.Popen, log: Path, timeout_s: float):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"arvid serve exited early:\n{log.read_text()}"
        try:
            return asyncio.run(_read_deployment(name))
        except ObjectNotFound:
            time.sleep(1)
    raise AssertionError(f"{name} not registered within {timeout_s} s:\n{log.read_text()}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_served_promote_deployment_completes_a_run_triggered_with_run_deployment(
    tmp_path: Path, tracking_config: TrackingConfig
) -> None:
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    version = register_generator(
        tracking_config, tmp_path, {"fvd": 40.0, "val_bits_per_token": 3.0}
    )
    sets = [
        f"tracking.uri={tracking_config.uri}",
        f"tracking.experiment={tracking_config.experiment}",
        f"tracking.artifact_location={tracking_config.artifact_location}",
    ]
    config = load_config(ArvidConfig, None, sets)
    asyncio.run(_delete_deployment("arvid-promote/promote"))  # `prefect deploy` may have made one
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--only", "promote"]
            + [item for s in sets for item in ("--set", s)],
            cwd=tmp_path,
            env=_env(PREFECT_RUNNER_POLL_FREQUENCY="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            # A shell that starts `make test` in the background hands its children SIGINT
            # ignored, and Python then never turns Ctrl-C into KeyboardInterrupt: as from a
            # terminal, the served process gets SIGINT's default action back.
            preexec_fn=_default_sigint,
        )
    try:
        deployment = _wait_for_deployment("arvid-promote/promote", server, log, timeout_s=180)
        assert ArvidConfig.model_validate(deployment.parameters["config"]) == config

        # The server validates parameters against the config models before any run exists.
        bad = config.model_dump(mode="json")
        bad["ingest"]["fps"] = -1
        with pytest.raises(PrefectHTTPStatusError, match="fps"):
            run_deployment("arvid-promote/promote", parameters={"config": bad}, timeout=0)

        run = run_deployment(
            "arvid-promote/promote",
            parameters={"config": config.model_dump(mode="json")},
            timeout=300,
            poll_interval=1,
        )
        assert run.state is not None and run.state.is_completed(), (run.state, log.read_text())
        mlflow.set_tracking_uri(tracking_config.uri)
        assert aliases() == {"champion": version}, NAME
    finally:
        server.send_signal(signal.SIGINT)  # serve shuts down its runner on Ctrl-C
        try:
            code = server.wait(timeout=180)  # a loaded 2-core machine is slow to wind down
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, log.read_text()
    assert "serve: stopped serving arvid-promote/promote" in log.read_text()
