"""The whole job as one config object; a YAML file (configs/demo.yaml) maps onto it one to one."""

from __future__ import annotations

from pydantic import Field

from tasks.config import StrictModel
from tasks.ingest.config import IngestConfig
from tasks.ingest.synthetic import SyntheticDatasetConfig
from tasks.storage import StorageSettings
from tasks.tracking import TrackingConfig


class ArvidConfig(StrictModel):
    """Every section of an arvid run; each command reads the sections it needs."""

    storage: StorageSettings = Field(default_factory=StorageSettings)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    synthetic_dir: str = Field(
        ".arvid/demo/raw", description="where `arvid make-dataset` writes videos"
    )
    synthetic: SyntheticDatasetConfig = Field(default_factory=SyntheticDatasetConfig)
    ingest: IngestConfig
