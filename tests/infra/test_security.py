"""Security: loading a registered model never unpickles, the stack's credentials reach no log and
no MLflow param, and its services listen on loopback only."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from infra.local_stack import SERVICES, LocalStack
from tasks.pretrain.generator_registry import load_generator
from tasks.registry import TOKENIZER_MODEL, log_model_dir, register
from tasks.tracking import TrackingConfig, tracked_run
from tasks.train.tokenizer_registry import load_tokenizer
from tests.infra.conftest import CleanRun
from tests.infra.stack_support import stack_env
from tests.tasks.tokenize.support import tiny_tokenizer


class _Payload:
    """A pickle that, when loaded, creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _register_folder(
    tracking: TrackingConfig, folder: Path, kind: str, name: str, raw: bool = False
) -> str:
    """Register `folder` as a model (`raw`: as plain artifacts, past arvid's own file checks)."""
    import mlflow

    with tracked_run(tracking, f"crafted-{kind}") as run:
        if raw:
            mlflow.log_artifacts(str(folder), kind)
            uri = f"runs:/{run.info.run_id}/{kind}"
        else:
            uri = log_model_dir(folder, kind, kind)
        register(uri, name, run.info.run_id, {}, alias="champion")
    return f"models:/{name}@champion"


@pytest.mark.parametrize("kind", ["tokenizer", "generator"])
def test_a_pickle_posing_as_weights_in_the_registry_is_refused_unloaded(
    tmp_path: Path, tracking_config: TrackingConfig, kind: str
) -> None:
    from models.tokenizer import save_tokenizer

    folder = tmp_path / "model"
    save_tokenizer(tiny_tokenizer(), folder)  # a valid config.json for the tokenizer case
    marker = tmp_path / "pwned"
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    name = TOKENIZER_MODEL if kind == "tokenizer" else "arvid-generator"
    reference = _register_folder(tracking_config, folder, kind, name)
    load = load_tokenizer if kind == "tokenizer" else load_generator
    with pytest.raises(Exception) as caught:
        load(reference, tracking_config=tracking_config)
    assert not marker.exists(), "loading a registered model ran pickled code"
    assert not isinstance(caught.value, AssertionError)


def test_a_model_folder_with_only_a_pickled_model_is_refused_by_name(
    tmp_path: Path, tracking_config: TrackingConfig
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    marker = tmp_path / "pwned"
    # What mlflow.pytorch / pyfunc would unpickle: arvid's loaders never look at it.
    (folder / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    (folder / "python_model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    reference = _register_folder(tracking_config, folder, "tokenizer", TOKENIZER_MODEL, raw=True)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_tokenizer(reference, tracking_config=tracking_config)
    assert not marker.exists()


def _text_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]


@pytest.mark.slow
@pytest.mark.stack
def test_stack_credentials_reach_no_log_and_no_mlflow_param(
    local_stack: LocalStack, clean_run: CleanRun
) -> None:
    from mlflow.tracking import MlflowClient

    secrets = [s.encode() for s in local_stack._ensure_credentials().values()]
    folders = [local_stack.root / "logs", local_stack.data_dir("s3") / "logs"]
    folders.append(Path(local_stack.state.ray_temp_dir))  # Ray's runtime-env agent logs too
    leaks = [str(p) for p in _leaking_files(folders, secrets)]
    for name, output in clean_run.outputs.items():
        leaks += [f"output of {name}" for s in secrets if s.decode() in output]
    client = MlflowClient(tracking_uri=local_stack.endpoints().mlflow)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            logged = json.dumps({**run.data.params, **run.data.tags})
            leaks += [f"run {run.info.run_id}" for s in secrets if s.decode() in logged]
    assert not leaks, f"a stack credential appears in: {sorted(set(leaks))}"


def _leaking_files(folders: list[Path], secrets: list[bytes]) -> list[Path]:
    """Files under `folders` that hold one of `secrets`."""
    found = []
    for folder in folders:
        for path in _text_files(folder):
            try:
                data = path.read_bytes()
            except OSError:
                continue  # a socket, or a file removed meanwhile
            if any(s in data for s in secrets):
                found.append(path)
    return found


def _listeners(stack: LocalStack) -> dict[str, set[str]]:
    """Service -> the addresses its processes listen on (TCP)."""
    found: dict[str, set[str]] = {}
    groups = {pid: name for name, pid in stack.state.pids.items()}
    for process in psutil.process_iter(["pid"]):
        try:
            name = groups.get(os.getpgid(process.pid))
            if name is None:
                continue
            for conn in process.net_connections("inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.setdefault(name, set()).add(conn.laddr.ip.removeprefix("::ffff:"))
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.stack
def test_stack_services_listen_on_loopback_only(local_stack: LocalStack) -> None:
    listeners = _listeners(local_stack)
    assert set(listeners) == set(SERVICES), listeners
    for name in ("s3", "postgres", "mlflow", "prefect"):
        assert all(ip.startswith("127.") for ip in listeners[name]), (name, listeners[name])
    # Ray's multi-node mode (`ray start`) opens its gRPC ports on every interface whatever the
    # node address; what it advertises is loopback, and it admits no client without the token.
    for name in ("ray-head", "ray-worker"):
        assert all(ip.startswith("127.") or ip in ("0.0.0.0", "::") for ip in listeners[name])


@pytest.mark.slow
@pytest.mark.stack
def test_ray_refuses_a_driver_without_the_stack_token(local_stack: LocalStack) -> None:
    env = {k: v for k, v in stack_env(local_stack).items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(local_stack.root / "no-token-home")  # no ~/.ray/auth_token either
    code = "import ray, sys; ray.init(address=sys.argv[1]); print(ray.cluster_resources())"
    out = subprocess.run(
        [sys.executable, "-c", code, local_stack.endpoints().ray_address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0, out.stdout
