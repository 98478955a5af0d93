"""One resolver for every model reference, against a real MLflow sqlite store and a real S3 server."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from models.tokenizer import VideoTokenizer, save_tokenizer
from tasks import registry, storage
from tasks.registry import ModelKindError, fetch_model, pin_reference, resolve_model
from tasks.tokenize.tokenizer_ref import resolve_tokenizer
from tasks.tracking import TrackingConfig, setup_tracking, tracked_run
from tasks.train.tokenizer_registry import load_tokenizer
from tests.support.mlflow_store import fresh_store_uri
from tests.tasks.tokenize.support import tiny_tokenizer

NAME = registry.TOKENIZER_MODEL


@dataclass(frozen=True)
class Registered:
    """A tracking store holding arvid-tokenizer v1 (alias champion) and v2, and a generator."""

    tracking: TrackingConfig
    root: Path
    runs: dict[str, str]  # version -> run id
    weights: dict[str, str]  # version -> sha256 of model.safetensors
    folder: Path  # v1 saved as a plain folder (no MLmodel)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log(tracking: TrackingConfig, directory: Path, name: str, kind: str) -> tuple[str, str]:
    """Log `directory` as a model of `kind` and register it under `name`; (version, run id)."""
    with tracked_run(tracking, f"log-{kind}") as run:
        uri = registry.log_model_dir(directory, "model", kind)
        version = registry.register(uri, name, run.info.run_id, {}, alias=None)
    return version, run.info.run_id


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Registered:
    root = tmp_path_factory.mktemp("registry")
    tracking = TrackingConfig(
        uri=fresh_store_uri(root / "mlflow.db"),
        experiment="arvid-test",
        artifact_location=str(root / "mlartifacts"),
    )
    first = tiny_tokenizer()
    second = tiny_tokenizer()
    with torch.no_grad():
        for parameter in second.parameters():
            parameter.add_(0.01)
    runs, weights = {}, {}
    for tokenizer in (first, second):
        directory = root / f"saved-{len(runs) + 1}"
        save_tokenizer(tokenizer, directory)
        version, runs[str(len(runs) + 1)] = _log(tracking, directory, NAME, "tokenizer")
        weights[version] = _sha(directory / "model.safetensors")
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    generator_dir = root / "generator"
    save_tokenizer(first, generator_dir)  # the files of a model; the descriptor says generator
    _log(tracking, generator_dir, registry.GENERATOR_MODEL, "generator")
    folder = root / "folder"
    save_tokenizer(first, folder)
    return Registered(tracking, root, runs, weights, folder)


@pytest.fixture
def store(registered: Registered) -> Registered:
    setup_tracking(registered.tracking)
    return registered


@pytest.fixture
def s3_model(s3_env: str, store: Registered, tmp_path: Path) -> str:
    """arvid-tokenizer v2 as logged (MLmodel included) copied into a bucket."""
    logged = resolve_model(f"models:/{NAME}/2", tmp_path / "logged").directory
    uri = f"s3://{s3_env}/models/tokenizer"
    for name in ("config.json", "model.safetensors", "MLmodel"):
        storage.upload_file(logged / name, storage.join(uri, name))
    return uri


@dataclass(frozen=True)
class Expected:
    version: str | None
    source: str
    registered: bool  # name and version known
    kind: str | None


_FORMS = {
    "alias": (f"models:/{NAME}@champion", Expected("1", "registry", True, "tokenizer")),
    "version": (f"models:/{NAME}/1", Expected("1", "registry", True, "tokenizer")),
    "name": (f"models:/{NAME}", Expected("2", "registry", True, "tokenizer")),
    "latest": (f"models:/{NAME}/latest", Expected("2", "registry", True, "tokenizer")),
    "run": ("runs:/{run2}/model", Expected("2", "run", False, "tokenizer")),
    "folder": ("{folder}", Expected("1", "folder", False, None)),
    "s3": ("{s3}", Expected("2", "storage", False, "tokenizer")),
}


def _reference(form: str, store: Registered, request: pytest.FixtureRequest) -> str:
    template = _FORMS[form][0]
    s3 = request.getfixturevalue("s3_model") if form == "s3" else ""
    return template.format(run2=store.runs["2"], folder=store.folder, s3=s3)


@pytest.mark.parametrize("form", list(_FORMS))
def test_every_reference_form_resolves_to_its_weights_and_pins_them(
    form: str, store: Registered, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    reference = _reference(form, store, request)
    expected = _FORMS[form][1]
    model = resolve_model(reference, tmp_path / "model", kind="tokenizer")
    assert model.reference == reference and model.source == expected.source
    assert model.kind == expected.kind
    assert _sha(model.directory / "model.safetensors") == store.weights[expected.version]
    if expected.registered:
        assert (model.name, model.version) == (NAME, expected.version)
        assert model.pinned == f"models:/{NAME}/{expected.version}"
        assert model.run_id == store.runs[expected.version]
    else:
        assert model.name is None and model.version is None
    if form == "run":
        assert model.run_id == store.runs["2"] and model.pinned == reference
    if form == "folder":
        assert model.pinned == str(store.folder.resolve()) and model.directory == store.folder
    if form == "s3":
        assert model.pinned == reference and model.directory == tmp_path / "model"


@pytest.mark.parametrize("form", list(_FORMS))
def test_load_tokenizer_and_resolve_tokenizer_take_every_form(
    form: str, store: Registered, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    reference = _reference(form, store, request)
    version = _FORMS[form][1].version
    record, directory = resolve_tokenizer(reference, tmp_path / "model")
    assert record.reference == reference and record.weights_sha256 == store.weights[version]
    assert (directory / "config.json").is_file()
    if form in ("alias", "version", "name", "latest"):
        assert record.label == f"{NAME}-v{version}" and record.pinned == f"models:/{NAME}/{version}"
    elif form == "run":
        assert record.label == f"run-{store.runs['2']}-model" and record.run_id == store.runs["2"]
    else:
        assert record.label == f"local-{store.weights[version][:12]}"

    tokenizer = load_tokenizer(reference, tracking_config=store.tracking)
    assert isinstance(tokenizer, VideoTokenizer) and not tokenizer.training
    saved = load_file(store.root / f"saved-{version}" / "model.safetensors")
    loaded = tokenizer.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_an_alias_moved_after_pinning_does_not_change_what_is_downloaded(
    store: Registered, tmp_path: Path
) -> None:
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "moving", "1")
    pinned = pin_reference(f"models:/{NAME}@moving")
    client.set_registered_model_alias(NAME, "moving", "2")  # promoted mid-run
    model = fetch_model(pinned, tmp_path / "a")
    assert model.version == "1" and model.pinned == f"models:/{NAME}/1"
    assert _sha(model.directory / "model.safetensors") == store.weights["1"]
    # A fresh resolution follows the alias.
    assert resolve_model(f"models:/{NAME}@moving", tmp_path / "b").version == "2"


@pytest.mark.parametrize(
    ("reference", "remedy"),
    [
        (f"models:/{NAME}@nonexistent", "check the model name, version or alias"),
        (f"models:/{NAME}/99", "check the model name, version or alias"),
        ("models:/no-such-model@champion", "tracking URI"),
        ("models:/no-such-model", "register one first"),
        ("models:/no-such-model/latest", "register one first"),
        ("runs:/0123456789abcdef/model", "check the run id"),
        ("runs:/{run1}/no-such-artifact", "check the artifact path"),
        ("no/such/folder", "give a model folder"),
        ("{root}", "the model folder holds no config.json, model.safetensors"),
        ("{s3}/missing", "the model folder holds no config.json, model.safetensors"),
    ],
)
def test_a_reference_naming_nothing_is_an_error_naming_it_and_the_remedy(
    store: Registered, request: pytest.FixtureRequest, reference: str, remedy: str, tmp_path: Path
) -> None:
    s3 = f"s3://{request.getfixturevalue('s3_env')}" if "{s3}" in reference else ""
    reference = reference.format(run1=store.runs["1"], root=store.root, s3=s3)
    with pytest.raises(FileNotFoundError, match=re.escape(reference)) as error:
        resolve_model(reference, tmp_path / "model")
    assert remedy in str(error.value)
    with pytest.raises(FileNotFoundError, match=re.escape(f"tokenizer {reference!r} not found")):
        load_tokenizer(reference)
    with pytest.raises(FileNotFoundError, match=re.escape(reference)):
        resolve_tokenizer(reference, tmp_path / "again")


@pytest.mark.parametrize("reference", ["models:/x/abc", "models:/@champion", "runs:/"])
def test_a_malformed_reference_is_a_value_error(reference: str, store: Registered) -> None:
    with pytest.raises(ValueError, match=re.escape(reference)):
        pin_reference(reference)


def test_a_generator_is_refused_by_the_tokenizer_loaders_and_vice_versa(
    store: Registered, tmp_path: Path
) -> None:
    generator = f"models:/{registry.GENERATOR_MODEL}/1"
    assert resolve_model(generator, tmp_path / "g", kind="generator").kind == "generator"
    with pytest.raises(ModelKindError, match="is an arvid 'generator' model, not a tokenizer"):
        load_tokenizer(generator)
    with pytest.raises(ModelKindError, match="is an arvid 'generator' model, not a tokenizer"):
        resolve_tokenizer(generator, tmp_path / "t")
    with pytest.raises(ModelKindError, match="is an arvid 'tokenizer' model, not a generator"):
        resolve_model(f"models:/{NAME}/1", tmp_path / "x", kind="generator")
    # A plain folder names no kind: its config.json decides, whichever loader reads it.
    assert resolve_model(str(store.folder), tmp_path / "f", kind="generator").kind is None
