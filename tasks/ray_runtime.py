"""Connect to Ray: a local single-machine Ray by default, or a cluster (`auto`, `ray://host:port`)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from tasks.config import StrictModel

# Never forwarded: Ray's runtime-env agent writes the runtime env it builds, variables and all,
# into its session log. Ray nodes hold credentials in their own environment instead (a local Ray
# inherits this process's; `ray start` and the cluster pods get them where they start).
CREDENTIAL_VARIABLES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
)
_CREDENTIAL_MARKERS = ("SECRET", "PASSWORD", "TOKEN", "CREDENTIAL")


def is_credential(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential."""
    upper = name.upper()
    return upper in CREDENTIAL_VARIABLES or any(m in upper for m in _CREDENTIAL_MARKERS)


class RayConfig(StrictModel):
    """How to reach Ray and how much of this machine a local Ray may use."""

    address: str | None = Field(
        None, description="None: start a local Ray; 'auto' or 'ray://host:10001' for a cluster"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    num_gpus: int | None = Field(None, ge=0)
    # Forwarded to every Ray worker so S3 endpoints and the tracking server are found there too.
    forward_env: list[str] = Field(
        default_factory=lambda: [
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "ARVID_S3_ENDPOINT_URL",
            "MLFLOW_TRACKING_URI",
        ],
        description="variables copied to Ray workers; never credentials (they would be logged)",
    )

    @field_validator("forward_env")
    @classmethod
    def _no_credentials(cls, names: list[str]) -> list[str]:
        refused = [name for name in names if is_credential(name)]
        if refused:
            raise ValueError(
                f"{', '.join(refused)}: credentials are never forwarded to Ray workers (Ray's "
                "runtime-env agent logs forwarded variables); give the Ray nodes their own "
                "credentials instead: a local Ray inherits this process's environment, and on a "
                "cluster set them where `ray start` runs (the pods' secret)"
            )
        return names


def worker_env(config: RayConfig) -> dict[str, str]:
    """The environment variables a Ray job forwards to its workers (none of them credentials)."""
    return {name: os.environ[name] for name in config.forward_env if name in os.environ}


def ensure_ray(config: RayConfig) -> None:
    """Initialise Ray once per process (a no-op if this process is already connected)."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(config)}
    if config.address is None:
        # The local raylet, and so every worker, inherits this environment, credentials included.
        ray.init(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    else:
        ray.init(address=config.address, runtime_env=runtime_env)
