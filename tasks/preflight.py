"""Checks of what a user asked for, run before any Prefect server, Ray or flow run starts.

A typo in a path should cost a second and one line, not a temporary Prefect server and a page of
tracebacks. Every check here is cheap: file-system look-ups, the dataset resolver on a local
dataset, and a read-only query of a local sqlite model registry. What cannot be checked cheaply
(objects under s3://, a tracking server) is left to the flow, which reports it too, only later.
Each failure raises PreflightError, whose message names the input, the config key and the remedy.

Nothing heavy is imported here (no Prefect, Ray, MLflow or torch): `arvid` runs these checks
before it imports a flow.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from tasks import registry, storage
from tasks.data.datasets import resolve_dataset
from tasks.data.manifest import MANIFEST_FILE
from tasks.ingest.sources import VIDEO_EXTENSIONS, source_kind
from tasks.settings import ArvidConfig

SHARD_EXTENSION = ".tar"  # webdataset shards a folder scan opens (tasks.ingest.sources)
_SQLITE_PREFIX = "sqlite:///"
# MLflow marks a deleted model version with this stage rather than dropping its row.
_DELETED_STAGE = "Deleted_Internal"


class PreflightError(ValueError):
    """A user input that cannot work; the message names the input, the config key and the remedy."""


# --- sources ---------------------------------------------------------------------------------


def _holds_inputs(folder: Path) -> bool:
    """True as soon as one video or webdataset shard lies in `folder` or below."""
    for _, _, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.lower().endswith((*VIDEO_EXTENSIONS, SHARD_EXTENSION)):
                return True
    return False


def check_source(source: str, key: str = "ingest.source") -> None:
    """An ingestion source exists, can be read and is of a kind ingestion reads."""
    remedy = (
        "give a folder of videos (class folders <label>/<video>.mp4), a folder of webdataset "
        ".tar shards, an s3://<bucket>/<prefix>, or a .jsonl/.csv manifest"
    )
    if storage.is_s3(source):
        # Listing a bucket costs a request and credentials; the flow reports what it finds.
        if not source[len("s3://") :].split("/", 1)[0]:
            raise PreflightError(f"{source}: no bucket in this s3:// URI ({key}) — {remedy}")
        return
    path = Path(source).expanduser()
    if source_kind(source) == "manifest":
        if not path.is_file():
            raise PreflightError(f"{source}: manifest not found ({key}) — {remedy}")
        if not os.access(path, os.R_OK):
            raise PreflightError(f"{source}: manifest not readable ({key}) — check its permissions")
        return
    if not path.exists():
        raise PreflightError(f"{source}: source folder not found ({key}) — {remedy}")
    if not path.is_dir():
        raise PreflightError(
            f"{source}: a file, not a folder or a .jsonl/.csv manifest ({key}) — give the folder "
            "it lies in, or list it in a manifest"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise PreflightError(f"{source}: folder not readable ({key}) — check its permissions")
    if not _holds_inputs(path):
        raise PreflightError(
            f"{source}: no videos ({' '.join(VIDEO_EXTENSIONS[:4])} …) or webdataset .tar shards "
            f"in this folder or below ({key}) — {remedy}"
        )


def check_output_root(root: str, key: str) -> None:
    """An output folder can be created where it is asked for (s3:// prefixes are not checked)."""
    if storage.is_s3(root) or root.startswith("file://"):
        return
    path = Path(root).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"{root}: {existing} is a file, not a folder ({key}) — give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(
            f"{root}: cannot write in {existing} ({key}) — give a folder you can write to"
        )


# --- datasets --------------------------------------------------------------------------------


def _versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file())


def check_dataset(reference: str, key: str) -> None:
    """A dataset reference `<output_root>/<name>[@version]` names a published local version."""
    root, _, version = reference.partition("@")
    if storage.is_s3(root):
        return  # reading s3:// costs requests and credentials: the flow resolves it
    folder = Path(root.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise PreflightError(
            f"{root}: no such dataset folder ({key}) — give <output_root>/<name>[@version] of an "
            "ingested dataset, or run `arvid ingest` first"
        )
    try:
        resolve_dataset(storage.absolute(reference))
    except FileNotFoundError as exc:
        known = _versions(folder)
        hint = ""
        if version:
            hint = f" — versions here: {', '.join(known)}" if known else " — none published yet"
        raise PreflightError(f"{exc} ({key}){hint}") from exc


def default_dataset(config: ArvidConfig, configured: str | None) -> str:
    """A step's dataset: the one configured, else what the ingest section writes (latest version)."""
    # The same default as tasks.train.tokenizer_trainer and tasks.pretrain.run (torch-importing).
    return configured or storage.join(config.ingest.output_root, config.ingest.name)


# --- model references ------------------------------------------------------------------------


def sqlite_database(tracking_uri: str) -> Path | None:
    """The file of a sqlite tracking URI (relative paths against the working directory), else None."""
    if not tracking_uri.startswith(_SQLITE_PREFIX):
        return None
    return Path(tracking_uri[len(_SQLITE_PREFIX) :]).expanduser().absolute()


@contextmanager
def _read_only(database: Path) -> Iterator[sqlite3.Connection]:
    # Read-only, so a check never creates or migrates the store that MLflow owns.
    with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        yield conn


def _registered_versions(database: Path, name: str) -> tuple[list[int], dict[str, int]] | None:
    """(live versions, alias -> version) of a registered model; None if the model is unknown."""
    with _read_only(database) as conn:
        if not conn.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone():
            return None
        versions = conn.execute(
            "SELECT version FROM model_versions WHERE name = ? AND "
            "(current_stage IS NULL OR current_stage != ?) ORDER BY version",
            (name, _DELETED_STAGE),
        ).fetchall()
        aliases = conn.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (name,)
        ).fetchall()
    return [int(v) for (v,) in versions], {alias: int(v) for alias, v in aliases}


def _run_exists(database: Path, run_id: str) -> bool:
    with _read_only(database) as conn:
        return (
            conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is not None
        )


def _check_registered(reference: str, key: str, database: Path) -> None:
    parsed = registry.parse_registry_reference(reference)
    found = _registered_versions(database, parsed.name)
    store = f"the tracking store {database}"
    if found is None:
        raise PreflightError(
            f"{reference}: no such registered model {parsed.name!r} in {store} ({key}) — register "
            "it first (arvid train-tokenizer, arvid pretrain), or point tracking.uri at the store "
            "it was registered in"
        )
    versions, aliases = found
    listed = ", ".join(str(v) for v in versions) or "none"
    if parsed.alias is not None and parsed.alias not in aliases:
        named = ", ".join(f"@{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
        raise PreflightError(
            f"{reference}: no such registered model alias of {parsed.name!r} ({key}) — its "
            f"aliases: {named}; versions: {listed}"
        )
    if parsed.alias is None and parsed.version is None and not versions:
        raise PreflightError(
            f"{reference}: registered model {parsed.name!r} has no versions ({key}) — register "
            "one first"
        )
    if parsed.version is not None and int(parsed.version) not in versions:
        raise PreflightError(
            f"{reference}: no such registered model version ({key}) — versions of "
            f"{parsed.name!r}: {listed}"
        )


def check_model_reference(reference: str, key: str, tracking_uri: str) -> None:
    """A model reference is well formed, and names something that exists where that is cheap to see.

    Syntax always; a registry name, alias or version and a run id when the tracking store is a
    local sqlite file (a missing file holds nothing); a local folder's files. s3:// folders and
    tracking servers are left to the flow.
    """
    database = sqlite_database(tracking_uri)
    registered = reference.startswith("models:/")
    try:
        if registered:
            registry.parse_registry_reference(reference)
        elif reference.startswith("runs:/"):
            run_id, _ = registry.parse_run_reference(reference)
    except ValueError as exc:
        raise PreflightError(f"{exc} ({key})") from exc
    if registered or reference.startswith("runs:/"):
        if database is None:
            return
        if not database.is_file():
            raise PreflightError(
                f"{reference}: the tracking store {database} does not exist yet, so it holds no "
                f"models or runs ({key}) — register the model first, or point tracking.uri at "
                "the store it was registered in"
            )
        try:
            if registered:
                _check_registered(reference, key, database)
            elif not _run_exists(database, run_id):
                raise PreflightError(
                    f"{reference}: no MLflow run {run_id!r} in the tracking store {database} "
                    f"({key}) — check the run id and tracking.uri"
                )
        except sqlite3.Error:
            return  # not a store this check can read (an older schema, a lock): the flow decides
        return
    if storage.is_s3(reference):
        if not reference[len("s3://") :].split("/", 1)[0]:
            raise PreflightError(f"{reference}: no bucket in this s3:// URI ({key})")
        return
    folder = Path(reference).expanduser()
    if not folder.is_dir():
        raise PreflightError(
            f"{reference}: no such folder, and not a models:/, runs:/ or s3:// reference ({key}) "
            "— give models:/<name>@<alias>, models:/<name>/<N>, runs:/<run id>/<path> or a model "
            f"folder ({' + '.join(registry.MODEL_FILES)})"
        )
    missing = [name for name in registry.MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise PreflightError(
            f"{reference}: the model folder holds no {', '.join(missing)} ({key}) — give a folder "
            f"with {' and '.join(registry.MODEL_FILES)} (a saved model or a checkpoint)"
        )


# --- per command -----------------------------------------------------------------------------


def check_ingest(config: ArvidConfig) -> None:
    """`arvid ingest`: the source can be read and the datasets root can be written."""
    check_source(config.ingest.source)
    check_output_root(config.ingest.output_root, "ingest.output_root")


def check_train_tokenizer(config: ArvidConfig) -> None:
    """`arvid train-tokenizer`: the dataset is published."""
    dataset = default_dataset(config, config.tokenizer_training.dataset)
    check_dataset(dataset, "tokenizer_training.dataset")


def check_tokenize(config: ArvidConfig) -> None:
    """`arvid tokenize`: the dataset is published and the tokenizer exists."""
    check_dataset(config.tokenize.dataset, "tokenize.dataset")
    check_model_reference(config.tokenize.tokenizer, "tokenize.tokenizer", config.tracking.uri)


def check_pretrain(config: ArvidConfig) -> None:
    """`arvid pretrain`: the dataset is published and the tokenizer exists."""
    check_dataset(default_dataset(config, config.pretrain.dataset), "pretrain.dataset")
    check_model_reference(config.pretrain.tokenizer, "pretrain.tokenizer", config.tracking.uri)


def check_promote(config: ArvidConfig, rollback: bool = False) -> None:
    """`arvid promote`: the candidate is a version of promote.model_name that exists."""
    name = config.promote.model_name
    candidate = None if rollback else config.promote.candidate
    reference = candidate or f"models:/{name}"
    key = "promote.candidate" if candidate else "promote.model_name"
    if candidate is not None:
        wrong = f"promote.candidate {candidate!r}: give a registered version of {name}, "
        wrong += f"models:/{name}/<N> or models:/{name}@<alias> (or set promote.model_name)"
        if not candidate.startswith("models:/"):
            raise PreflightError(wrong)
        try:
            named = registry.parse_registry_reference(candidate).name
        except ValueError as exc:
            raise PreflightError(f"{exc} ({key})") from exc
        if named != name:
            raise PreflightError(wrong)
    check_model_reference(reference, key, config.tracking.uri)


def check_evaluate(config: ArvidConfig) -> None:
    """`arvid evaluate`: the generator to score is a registered version that exists."""
    reference = config.evaluate.model or f"models:/{registry.GENERATOR_MODEL}"
    key = "evaluate.model"
    if not reference.startswith("models:/"):
        raise PreflightError(
            f"{key} {reference!r}: evaluation scores a registered generator — give "
            f"models:/{registry.GENERATOR_MODEL}/<N> or models:/{registry.GENERATOR_MODEL}@<alias>"
        )
    check_model_reference(reference, key, config.tracking.uri)


def check_pipeline(config: ArvidConfig) -> None:
    """`arvid pipeline`: what ingest needs, and a tokenizer to reuse when one is named."""
    check_ingest(config)
    if config.pipeline.tokenizer:
        check_model_reference(config.pipeline.tokenizer, "pipeline.tokenizer", config.tracking.uri)
