"""What a registered generator was trained on, kept as version tags so evaluation can find it.

Evaluation needs the tokenizer, the held-out token shards and the clips behind them, the clip
shape and the schedule of the last stage; pretraining writes them as `arvid.*` tags on the
version it registers, and `GeneratorLineage.from_tags` reads them back (naming what is missing).
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from models.generator.config import ScheduleConfig

_PREFIX = "arvid."


class GeneratorLineage(BaseModel):
    """The data, tokenizer and last-stage shape of one trained generator."""

    dataset_uri: str  # the dataset root (absolute or s3://), without a version
    dataset_version: str
    tokenizer: str  # a pinned reference: models:/<name>/<version>, runs:/..., a folder
    tokens_uri: str  # the last stage's token dataset
    tokens_version: str
    val_shards: int  # the last `val_shards` token shards by name were held out
    resolution: int
    frames: int
    schedule: str
    schedule_config: ScheduleConfig | None  # None for next_scale and far (built by their models)
    run_key: str  # names the pretraining run's checkpoints: same key, same training

    def as_tags(self) -> dict[str, str]:
        """The lineage as `arvid.<field>` version tags (strings; the schedule config as JSON)."""
        data = self.model_dump(mode="json")
        return {
            _PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in data.items()
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str], where: str) -> GeneratorLineage:
        """Read the lineage back from a version's tags; `where` names the version in errors."""
        missing = [name for name in cls.model_fields if _PREFIX + name not in tags]
        if missing:
            raise ValueError(
                f"{where}: has no lineage tags {[_PREFIX + m for m in missing]} — it was not "
                "registered by `arvid pretrain` (or by an older arvid); re-run pretraining"
            )
        data = {}
        for name in cls.model_fields:
            text = tags[_PREFIX + name]
            data[name] = text if cls.model_fields[name].annotation is str else json.loads(text)
        return cls.model_validate(data)
