"""Connect to Ray: a local single-machine Ray by default, or a cluster (`auto`, `ray://host:port`)."""

from __future__ import annotations

import os

from pydantic import Field

from tasks.config import StrictModel


class RayConfig(StrictModel):
    """How to reach Ray and how much of this machine a local Ray may use."""

    address: str | None = Field(
        None, description="None: start a local Ray; 'auto' or 'ray://host:10001' for a cluster"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    num_gpus: int | None = Field(None, ge=0)
    # Forwarded to every Ray worker so S3 endpoints and credentials work there too.
    forward_env: list[str] = Field(
        default_factory=lambda: [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "ARVID_S3_ENDPOINT_URL",
            "MLFLOW_TRACKING_URI",
        ]
    )


def worker_env(config: RayConfig) -> dict[str, str]:
    """The environment variables a Ray job forwards to its workers (values never logged)."""
    return {name: os.environ[name] for name in config.forward_env if name in os.environ}


def ensure_ray(config: RayConfig) -> None:
    """Initialise Ray once per process (a no-op if this process is already connected)."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(config)}
    if config.address is None:
        ray.init(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    else:
        ray.init(address=config.address, runtime_env=runtime_env)
