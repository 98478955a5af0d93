"""The Prefect deployments of arvid's flows: one table, served by `arvid serve`, mirrored by prefect.yaml.

Every deployed flow takes `config: ArvidConfig`, so Prefect derives the parameter schema from the
pydantic models: the UI shows each section and field, and the server validates a run's
parameters before the run starts. The default parameters are a whole config (configs/demo.yaml
unless `arvid serve --config` names another).

Prefect is imported only when deployments are built: `arvid` reads the table to parse its
arguments, before any check has run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasks.settings import ArvidConfig

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

TAGS = ("arvid",)


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, under what name, on which schedule (None: on demand only)."""

    name: str
    module: str  # the flow's module, e.g. flows.promote
    function: str  # the flow object in it, e.g. promote_flow
    description: str
    cron: str | None = None
    timezone: str = "UTC"

    @property
    def entrypoint(self) -> str:
        """The flow as prefect.yaml names it: flows/promote.py:promote_flow."""
        return f"{self.module.replace('.', '/')}.py:{self.function}"

    def load_flow(self) -> Flow:
        """Import the flow (and with it Prefect and the flow's tasks)."""
        return getattr(importlib.import_module(self.module), self.function)


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="nightly",
        module="flows.pipeline",
        function="pipeline_flow",
        description="The whole pipeline every night: ingest new videos, reuse or train the "
        "tokenizer, tokenize, pretrain, evaluate and promote; steps whose outputs exist are "
        "skipped.",
        cron="0 2 * * *",
    ),
    DeploymentSpec(
        name="retokenize",
        module="flows.tokenize",
        function="tokenize_flow",
        description="Tokenize a new dataset version on demand: set tokenize.dataset (and "
        "tokenize.tokenizer, resolution, frames) in the run's config.",
    ),
    DeploymentSpec(
        name="promote",
        module="flows.promote",
        function="promote_flow",
        description="Judge a registered generator against the gates and move `champion` "
        "(promote.candidate; default the newest version), or roll back with rollback=true.",
    ),
)


def deployment_names() -> list[str]:
    """The names of the deployments in the table, in its order."""
    return [spec.name for spec in DEPLOYMENTS]


def select(names: Iterable[str] | None = None) -> list[DeploymentSpec]:
    """The specs named (all of them for None), in the table's order; ValueError names an unknown one."""
    if names is None:
        return list(DEPLOYMENTS)
    wanted = set(names)
    unknown = sorted(wanted - set(deployment_names()))
    if unknown:
        raise ValueError(
            f"no deployment {', '.join(map(repr, unknown))} — choose from "
            f"{', '.join(deployment_names())}"
        )
    return [spec for spec in DEPLOYMENTS if spec.name in wanted]


def default_parameters(config: ArvidConfig) -> dict[str, Any]:
    """The parameters every run starts from: the whole config as the flow's `config` argument."""
    return {"config": config.model_dump(mode="json")}


def build_deployment(spec: DeploymentSpec, config: ArvidConfig) -> RunnerDeployment:
    """The runner deployment of one spec, with `config` as its default parameters."""
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    schedules = [Cron(spec.cron, timezone=spec.timezone)] if spec.cron else None
    return spec.load_flow().to_deployment(
        name=spec.name,
        description=spec.description,
        schedules=schedules,
        parameters=default_parameters(config),
        tags=list(TAGS),
        enforce_parameter_schema=True,
        # By module, not file: the served process imports the installed package from any folder.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_deployments(
    config: ArvidConfig, names: Iterable[str] | None = None, limit: int | None = None
) -> list[str]:
    """Register the deployments with the Prefect API and run their flow runs here until stopped.

    Returns the full names (flow/deployment) that were served, once a signal stops serving.
    """
    from prefect import serve

    deployments = [build_deployment(spec, config) for spec in select(names)]
    serve(*deployments, limit=limit)
    return [f"{d.flow_name}/{d.name}" for d in deployments]
