"""The whole job as one config object; a YAML file (configs/demo.yaml) maps onto it one to one."""

from __future__ import annotations

from pydantic import Field

from tasks.config import StrictModel
from tasks.evaluate.config import EvaluateConfig
from tasks.ingest.config import IngestConfig, SyntheticDatasetConfig
from tasks.pipeline.config import PipelineConfig
from tasks.pretrain.config import PretrainConfig, StageConfig
from tasks.promote.config import PromoteConfig
from tasks.ray_runtime import RayConfig
from tasks.storage import StorageSettings
from tasks.tokenize.config import TokenizeConfig
from tasks.tracking import TrackingConfig
from tasks.train.tokenizer_config import TokenizerTrainingConfig


class ArvidConfig(StrictModel):
    """Every section of an arvid run; each command reads the sections it needs."""

    storage: StorageSettings = Field(default_factory=StorageSettings)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    synthetic_dir: str = Field(
        ".arvid/demo/raw", description="where `arvid make-dataset` writes videos"
    )
    synthetic: SyntheticDatasetConfig = Field(default_factory=SyntheticDatasetConfig)
    ingest: IngestConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    tokenizer_training: TokenizerTrainingConfig = Field(default_factory=TokenizerTrainingConfig)
    pretrain: PretrainConfig = Field(
        default_factory=lambda: PretrainConfig(
            stages=[StageConfig(name="base", resolution=64, frames=17, steps=100)]
        )
    )
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
