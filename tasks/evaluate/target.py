"""Which generator an evaluation scores, and everything its lineage says about where to look."""

from __future__ import annotations

from dataclasses import dataclass

from tasks import registry
from tasks.pretrain.lineage import GeneratorLineage


@dataclass(frozen=True)
class EvalTarget:
    """A registered generator version pinned by number, with the lineage pretraining recorded."""

    reference: str  # as asked for, e.g. models:/arvid-generator@candidate
    pinned: str  # models:/<name>/<version>
    model_name: str
    version: str
    run_id: str | None
    lineage: GeneratorLineage


def resolve_target(reference: str) -> EvalTarget:
    """Pin a registry reference to a version and read its lineage tags (clear errors otherwise)."""
    from mlflow import MlflowClient

    if not reference.startswith("models:/"):
        raise ValueError(
            f"evaluate.model={reference!r}: evaluation scores a registered generator — give "
            "models:/<name>/<version> or models:/<name>@<alias> (metrics become version tags)"
        )
    pinned = registry.pin_reference(reference)
    version = MlflowClient().get_model_version(pinned.name, pinned.version)
    where = f"{pinned.pinned} (from {reference})"
    return EvalTarget(
        reference=reference,
        pinned=pinned.pinned,
        model_name=pinned.name,
        version=pinned.version,
        run_id=pinned.run_id,
        lineage=GeneratorLineage.from_tags(dict(version.tags), where),
    )
