"""Flow `arvid-pretrain`: token shards -> a generator trained stage by stage -> arvid-generator."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.pretrain.run import PretrainSummary
from tasks.pretrain.steps import pretrain_step
from tasks.settings import ArvidConfig


@flow(name="arvid-pretrain", validate_parameters=True)
def pretrain_flow(config: ArvidConfig) -> PretrainSummary:
    """Tokenize what each stage needs, train the stages in order on Ray, register the result."""
    storage.configure_storage(config.storage)
    return pretrain_step(config)
