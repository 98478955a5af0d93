"""Prefect tasks of promotion: thin wrappers over the plain functions, naming the flow run."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from tasks.promote.run import PromotionSummary, promote, rollback
from tasks.settings import ArvidConfig


def _invoked_by() -> str:
    return f"prefect flow run {flow_run.name} ({flow_run.id})"


@task(name="promote-candidate")
def promote_step(config: ArvidConfig) -> PromotionSummary:
    """Judge the candidate against the gates and the champion; move the aliases accordingly."""
    return promote(config, invoked_by=_invoked_by())


@task(name="rollback-champion")
def rollback_step(config: ArvidConfig) -> PromotionSummary:
    """Move `champion` back to `previous`."""
    return rollback(config, invoked_by=_invoked_by())
