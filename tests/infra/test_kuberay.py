"""infra/kuberay/: the RayCluster and RayJob agree with the image, the config and arvid's settings,
and the same config keys drive the local stack, docker-compose and the cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.local_stack import LocalStack, StackState
from tasks.config import load_config
from tasks.ray_runtime import RayConfig
from tasks.settings import ArvidConfig

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "infra" / "kuberay"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    return yaml.safe_load((KUBERAY / "rayjob.yaml").read_text())


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    templates = [cluster["spec"]["headGroupSpec"]["template"]]
    templates += [group["template"] for group in cluster["spec"]["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"]]


def test_the_cluster_has_a_head_and_cpu_and_gpu_worker_groups_of_one_image(cluster, job) -> None:
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"
    images = {c["image"] for c in _containers(cluster)}
    images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert cluster["spec"]["rayVersion"] == pins["ray"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]


def test_every_pod_gets_what_arvid_and_its_ray_workers_read(cluster, job) -> None:
    pods = _containers(cluster) + job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    for container in pods:
        names = {e["name"] for e in container.get("env", [])}
        secrets = {s["secretRef"]["name"] for s in container.get("envFrom", [])}
        assert {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_DEFAULT_REGION"} <= names
        assert secrets == {"arvid-s3"}
        assert names <= set(RayConfig().forward_env) | {"PREFECT_API_URL"}


def test_the_job_runs_the_pipeline_on_the_mounted_config(job) -> None:
    entry = job["spec"]["entrypoint"]
    for command in ("arvid ingest", "arvid train-tokenizer", "arvid pretrain"):
        assert f"{command} --config /opt/arvid/cluster/arvid.yaml" in entry
    config = load_config(ArvidConfig, KUBERAY / "arvid.yaml")
    assert config.ray.address == "auto"
    assert config.ingest.output_root.startswith("s3://")


def test_local_stack_compose_and_cluster_configs_use_the_same_keys(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    ports = dict.fromkeys(["s3", "mlflow", "prefect", "ray_gcs", "ray_dashboard", "postgres"], 1)
    stack.state = StackState(
        root=str(tmp_path), ports=ports, ray_temp_dir=str(tmp_path), postgres_dir=str(tmp_path)
    )
    configs = {
        "local stack": stack.job_config(),
        "compose": yaml.safe_load((ROOT / "configs" / "compose.yaml").read_text()),
        "cluster": yaml.safe_load((KUBERAY / "arvid.yaml").read_text()),
    }
    for name, data in configs.items():
        ArvidConfig.model_validate(data)
        for section in ("storage", "tracking", "ray", "ingest", "tokenize", "tokenizer_training"):
            assert section in data, f"{name}: no {section} section"
        assert data["tokenize"]["tokens_root"].startswith("s3://arvid/"), name
