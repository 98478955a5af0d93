"""Evaluation metrics attached to registered model versions, the record promotion gates read.

Convention (shared with evaluation): a metric lives as a model-version tag
`arvid.metric.<name>` whose value is the float as a string (`repr`, so it reads back exactly),
e.g. `arvid.metric.fvd`, `arvid.metric.val_bits_per_token`, `arvid.metric.seconds_per_video`.
Tags, not run metrics: a version's evidence then travels with the version, whichever run
produced it, and a later evaluation simply overwrites it.
"""

from __future__ import annotations

import math
import re

METRIC_TAG_PREFIX = "arvid.metric."
# MLflow tag keys allow these characters; a metric name becomes part of one.
_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def metric_tag(name: str) -> str:
    """The version tag key that holds metric `name`."""
    if not _NAME.match(name):
        raise ValueError(
            f"metric name {name!r}: use letters, digits and _ . - / only (it becomes the tag "
            f"{METRIC_TAG_PREFIX}{name})"
        )
    return METRIC_TAG_PREFIX + name


def set_version_metrics(model_name: str, version: str, metrics: dict[str, float]) -> None:
    """Attach `metrics` to model version `model_name`/`version` as `arvid.metric.<name>` tags."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for name, value in metrics.items():
        number = float(value)
        if math.isnan(number):
            raise ValueError(
                f"metric {name!r} of {model_name} v{version} is NaN — fix the evaluation that "
                "produced it rather than recording it"
            )
        client.set_model_version_tag(model_name, version, metric_tag(name), repr(number))


def metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """The `arvid.metric.*` tags of a version's tag dict as floats; unparsable values raise."""
    found: dict[str, float] = {}
    for key, text in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                found[key[len(METRIC_TAG_PREFIX) :]] = float(text)
            except ValueError as exc:
                raise ValueError(
                    f"version tag {key}={text!r} is not a number — re-run the evaluation, or "
                    "set it with tasks.promote.metrics.set_version_metrics"
                ) from exc
    return found


def read_version_metrics(model_name: str, version: str) -> dict[str, float]:
    """The metrics attached to model version `model_name`/`version` (name -> value)."""
    from mlflow import MlflowClient

    return metrics_from_tags(dict(MlflowClient().get_model_version(model_name, version).tags))
