"""`pretrain`: staged AR pretraining as one plain function (the Prefect flow wraps it).

For each stage, in order: make sure its token shards exist (tokenization is idempotent: done
shards are skipped), train it on Ray Train starting from the previous stage's last checkpoint,
and record it as a nested MLflow run of the pretraining run. The last stage's weights are logged
as a model folder and registered as `arvid-generator`.

Every check that needs no training runs first (tokenizer fit, schedules, data split), so a bad
config fails in seconds, naming the stage and the field. Re-running the same config resumes: a
finished stage is skipped through its completion record, an unfinished one resumes from its latest
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel

from models.generator.config import GeneratorConfig
from models.tokenizer import TokenizerConfig
from tasks import registry, storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import DatasetRef, resolve_dataset
from tasks.pretrain.config import PretrainConfig, StageConfig
from tasks.pretrain.driver import fit_stage
from tasks.pretrain.lineage import GeneratorLineage
from tasks.pretrain.loop import (
    StageResult,
    StageSpec,
    TrainOptions,
)
from tasks.pretrain.tokens import class_names, load_token_clips, read_token_dataset
from tasks.promote.metrics import set_version_metrics
from tasks.settings import ArvidConfig
from tasks.tokenize.report import TokenizeSummary
from tasks.tokenize.run import tokenize_dataset
from tasks.tokenize.tokenizer_ref import TokenizerRecord, resolve_tokenizer
from tasks.train.event_logger import EventLogger
from tasks.train.ray_driver import WorkerGroup

log = logging.getLogger("arvid.pretrain")

RESULT_FILE = "result.json"  # a stage's completion record, written after its last checkpoint
MODEL_ARTIFACT = "generator"
H200_BF16_PEAK_FLOPS = 989e12  # dense bf16 peak of an H100/H200 SXM, the usual MFU yardstick


class StageSummary(BaseModel):
    """One finished stage: shape, schedule, budget, where its tokens and checkpoints are, results."""

    name: str
    resolution: int
    frames: int
    schedule: str
    steps: int
    resumed_from_step: int
    skipped: bool
    train_bits: float
    val_bits: float | None
    tokens_per_s: float
    seconds: float
    tokens_uri: str
    tokens_version: str
    checkpoint: str
    mlflow_run_id: str


class PretrainSummary(BaseModel):
    """What a pretraining run did, and the registered generator."""

    dataset: str
    dataset_version: str
    tokenizer: str
    tokenizer_version: str | None
    run_key: str
    run_id: str
    stages: list[StageSummary]
    model_uri: str
    registered_model: str
    model_version: str
    alias: str | None
    registered_before: bool = False  # a re-run of the same training reuses its version

    def reference(self) -> str:
        """The registry reference to load the result with (the version, unless an alias was set)."""
        if self.alias:
            return f"models:/{self.registered_model}@{self.alias}"
        return f"models:/{self.registered_model}/{self.model_version}"

    def line(self) -> str:
        """The one-line human summary."""
        last = self.stages[-1]
        stages = ", ".join(
            f"{s.name} ({s.resolution}px x {s.frames}f {s.schedule}, {s.steps} steps"
            f"{', done before' if s.skipped else ''})"
            for s in self.stages
        )
        unit = "flow MSE" if last.schedule == "far" else "bits/token"
        val = f", held-out {last.val_bits:.3f} {unit}" if last.val_bits is not None else ""
        before = " (registered before)" if self.registered_before else ""
        return (
            f"pretrain {self.dataset}@{self.dataset_version}: {stages}{val} -> {self.reference()}"
            f"{before}"
            f" (MLflow run {self.run_id})"
        )


def dataset_reference(config: ArvidConfig) -> str:
    """The dataset pretraining reads: its own setting, else what the ingest section writes."""
    return config.pretrain.dataset or storage.join(config.ingest.output_root, config.ingest.name)


def check_stages(pretrain: PretrainConfig, tokenizer: TokenizerConfig) -> None:
    """Refuse, before any work, stages the tokenizer cannot serve; errors name stage and field."""
    from models.generator.schedules import build_schedule

    far_stages = [stage.name for stage in pretrain.stages if stage.schedule == "far"]
    if far_stages and len(far_stages) != len(pretrain.stages):
        raise ValueError(
            f"pretrain.stages: {far_stages} are far stages and the others are not; a FAR model "
            "(continuous latents, a flow head) cannot start from a token model: make every "
            "stage far, or run FAR as its own pretraining"
        )
    for index, stage in enumerate(pretrain.stages):
        where = f"pretrain.stages[{index}] ({stage.name})"
        if pretrain.model.copy_previous and stage.schedule != "next_scale":
            raise ValueError(
                f"{where}: schedule {stage.schedule}: pretrain.model.copy_previous (the copy "
                "head) copies from the previous frame's pyramid and serves next_scale stages only"
            )
        try:
            tokenizer.check_clip_shape(stage.frames, stage.resolution, stage.resolution)
        except ValueError as exc:
            raise ValueError(f"{where}: resolution/frames: {exc}") from exc
        if stage.schedule == "far":  # continuous latents: any tokenizer has them
            try:
                far_config(tokenizer, stage)
            except ValueError as exc:
                raise ValueError(f"{where}: far: {exc}") from exc
            continue
        if stage.schedule == "next_scale" and tokenizer.scales is None:
            raise ValueError(
                f"{where}: schedule next_scale needs a multi-scale tokenizer; this one is "
                "single-scale (tokenizer_training.model.scales is unset)"
            )
        if stage.schedule != "next_scale" and tokenizer.scales is not None:
            raise ValueError(
                f"{where}: schedule {stage.schedule} needs single-scale tokens; this tokenizer is "
                f"multi-scale ({tokenizer.scales}): use schedule next_scale"
            )
        if stage.schedule != "next_scale":
            t, h, w = tokenizer.latent_shape(stage.frames, stage.resolution, stage.resolution)
            try:
                build_schedule(stage.schedule_config(), (t, h, w))
            except ValueError as exc:
                raise ValueError(f"{where}: block/regions: {exc}") from exc


def stages_far(pretrain: PretrainConfig) -> bool:
    """True when the run trains FAR (check_stages allows no mix of far and token stages)."""
    return any(stage.schedule == "far" for stage in pretrain.stages)


def run_key(
    pretrain: PretrainConfig, dataset_version: str, tokenizer: TokenizerRecord, classes: list[str]
) -> str:
    """Names the run's checkpoint folder: what is learned, not how often it is logged or saved."""
    learned = pretrain.model_dump(
        mode="json",
        include={"model", "stages", "seed", "val_shards"},
    )
    identity = json.dumps(
        [learned, dataset_version, tokenizer.digest, classes], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def stage_tokenize_config(
    config: ArvidConfig, stage: StageConfig, dataset: str, tokenizer: str
) -> ArvidConfig:
    """`config` with its tokenize section set to what `stage` trains on."""
    tokenize = config.tokenize.model_copy(
        update={
            "dataset": dataset,
            "tokenizer": tokenizer,
            "resolution": stage.resolution,
            "frames": stage.frames,
            "latents": stage.needs_latents,
        }
    )
    return config.model_copy(update={"tokenize": tokenize})


def _tokens_for(
    config: ArvidConfig, stage: StageConfig, dataset: str, tokenizer: str
) -> TokenizeSummary:
    return tokenize_dataset(stage_tokenize_config(config, stage, dataset, tokenizer))


def videoar_config(tokenizer: TokenizerConfig, stage: StageConfig):
    """The VideoAR layout of a next-scale stage: the tokenizer's pyramid at the stage's grid."""
    from models.generator.config import VideoARConfig

    _, side, _ = tokenizer.latent_shape(stage.frames, stage.resolution, stage.resolution)
    return VideoARConfig(
        levels=tokenizer.levels,
        scales=tokenizer.scales,
        scale_gains=tokenizer.scale_gains,
        upsample_mode=tokenizer.upsample_mode,
        latent_hw=(side, side),
    )


def far_config(tokenizer: TokenizerConfig, stage: StageConfig):
    """The FAR config of a far stage: its switches on the tokenizer's latent at the stage's grid."""
    from models.generator.config import FARConfig

    _, h, w = tokenizer.latent_shape(stage.frames, stage.resolution, stage.resolution)
    return FARConfig.model_validate(
        {**stage.far.model_dump(), "latent_dim": len(tokenizer.levels), "latent_hw": (h, w)}
    )


def loss_metric(schedule: str) -> str:
    """The name of a stage's loss metric: FAR's flow-matching error is no cross-entropy."""
    return "flow_mse" if schedule == "far" else "bits_per_token"


def flops_per_token(spec: StageSpec, tokens_per_clip: int) -> float:
    """Training FLOPs per token: 6·N for the weights plus 6·L·T·d for attention."""
    from models.generator.persist import build_generator

    n = sum(p.numel() for p in build_generator(spec.model, spec.videoar, spec.far).parameters())
    return 6 * n + 6 * spec.model.n_layer * tokens_per_clip * spec.model.n_embd


def generator_lineage(
    pretrain_config: PretrainConfig,
    dataset: DatasetRef,
    tokenizer: TokenizerRecord,
    key: str,
    last: StageSummary,
) -> GeneratorLineage:
    """What the registered generator was trained on, for evaluation to find again."""
    stage = pretrain_config.stages[-1]
    return GeneratorLineage(
        dataset_uri=dataset.root,
        dataset_version=dataset.version,
        tokenizer=tokenizer.pinned,
        tokens_uri=last.tokens_uri,
        tokens_version=last.tokens_version,
        val_shards=pretrain_config.val_shards,
        resolution=stage.resolution,
        frames=stage.frames,
        schedule=stage.schedule,
        schedule_config=None
        if stage.schedule in ("next_scale", "far")
        else stage.schedule_config(),
        run_key=key,
    )


def _finished(run_dir: str, total: int) -> StageResult | None:
    uri = storage.join(run_dir, RESULT_FILE)
    if not storage.exists(uri):
        return None
    result = StageResult(**json.loads(storage.read_text(uri)))
    return result if result.steps == total else None


def _resolve_inputs(config: ArvidConfig) -> tuple[DatasetRef, TokenizerRecord, TokenizerConfig]:
    """The dataset version and the pinned tokenizer (with its config) pretraining reads."""
    storage.configure_storage(config.storage)
    tracking.setup_tracking(config.tracking)  # models:/ references resolve against this store
    dataset = resolve_dataset(storage.absolute(dataset_reference(config)))
    with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
        record, model_dir = resolve_tokenizer(config.pretrain.tokenizer, Path(tmp) / "model")
        tokenizer = TokenizerConfig.model_validate_json((model_dir / "config.json").read_text())
    return dataset, record, tokenizer


def trained_version(config: ArvidConfig) -> str | None:
    """The generator version this exact training (data, tokenizer, model, stages) registered
    before, or None — what lets a pipeline skip pretraining without starting anything."""
    dataset, record, _ = _resolve_inputs(config)
    key = run_key(config.pretrain, dataset.version, record, class_names(dataset.rows))
    return registry.find_version(registry.GENERATOR_MODEL, {"arvid.run_key": key})


def generator_config(
    pretrain_config: PretrainConfig, levels: Sequence[int], num_classes: int
) -> GeneratorConfig:
    """The run's generator: the configured shape, with the vocabulary (and a digit head's FSQ
    levels) from the tokenizer and the classes from the dataset."""
    far = stages_far(pretrain_config)
    digits = pretrain_config.model.output_head == "digits" and not far
    return GeneratorConfig.model_validate(
        {
            **pretrain_config.model.model_dump(),
            # FAR reads latents, not ids: a one-row vocabulary keeps the unused head out.
            "vocab_size": 1 if far else math.prod(levels),
            "num_classes": max(1, num_classes),
            "output_head": "digits" if digits else "vocab",
            "output_levels": list(levels) if digits else None,
        }
    )


def pretrain(config: ArvidConfig) -> PretrainSummary:
    """Run every stage of `config.pretrain` (resuming what exists) and register the generator."""

    pretrain_config = config.pretrain
    dataset, record, tokenizer = _resolve_inputs(config)
    check_stages(pretrain_config, tokenizer)
    shards = len(dataset.rows_by_shard())  # token shards follow the dataset's shards one to one
    if pretrain_config.val_shards >= shards:
        raise ValueError(
            f"{dataset.root}@{dataset.version}: {shards} shard(s), so pretrain.val_shards="
            f"{pretrain_config.val_shards} would leave nothing to train on — lower val_shards, or "
            "ingest more inputs (or fewer per shard: ingest.inputs_per_shard)"
        )
    dataset_uri = f"{dataset.root}@{dataset.version}"
    classes = class_names(dataset.rows)
    model_config = generator_config(pretrain_config, tokenizer.levels, len(classes))
    key = run_key(pretrain_config, dataset.version, record, classes)
    run_root = storage.join(
        storage.absolute(pretrain_config.checkpoint_dir), f"{dataset.name}-{key}"
    )
    tags = {
        "arvid.step": "pretrain",
        "arvid.dataset": dataset.name,
        "arvid.dataset_version": dataset.version,
        "arvid.tokenizer": record.pinned,
        "arvid.tokenizer_version": record.version or record.label,
        "arvid.config_hash": config_hash(pretrain_config),
        "arvid.run_dir": run_root,
    }
    params = {"pretrain": pretrain_config.model_dump(mode="json"), "classes": classes}
    # Tokens first, each tokenization its own MLflow run (and a no-op when already published).
    tokens = [
        _tokens_for(config, stage, dataset_uri, record.pinned) for stage in pretrain_config.stages
    ]
    summaries: list[StageSummary] = []
    with tracking.tracked_run(config.tracking, f"pretrain-{dataset.name}", params, tags) as parent:
        init_from: str | None = None
        for index, stage in enumerate(pretrain_config.stages):
            summary = _run_stage(
                config, index, stage, tokens[index], model_config, tokenizer, classes, run_root,
                init_from,
            )  # fmt: skip
            summaries.append(summary)
            init_from = summary.checkpoint
        last = summaries[-1]
        tracking.log_metrics(
            {
                f"final/val_{loss_metric(last.schedule)}": last.val_bits or float("nan"),
                "stages": len(summaries),
            }
        )
        model_uri = _log_model(last.checkpoint)
        run_id = parent.info.run_id
    lineage = {
        **{k: v for k, v in tags.items() if k != "arvid.step"},
        "arvid.git_commit": tracking.git_commit(),
        **generator_lineage(pretrain_config, dataset, record, key, last).as_tags(),
    }
    # The same training (run key) over the same checkpoint registers once: a re-run reuses it.
    version = registry.find_version(
        registry.GENERATOR_MODEL,
        {"arvid.run_key": key, "arvid.checkpoint": last.checkpoint},
    )
    registered_before = version is not None
    if version is None:
        version = registry.register(
            model_uri,
            registry.GENERATOR_MODEL,
            run_id,
            {**lineage, "arvid.checkpoint": last.checkpoint},
            pretrain_config.register_alias,
        )
    else:
        log.info(
            "generator %s v%s holds this training already: not registered again",
            registry.GENERATOR_MODEL,
            version,
        )
        registry.set_alias(registry.GENERATOR_MODEL, pretrain_config.register_alias, version)
    if last.val_bits is not None and last.schedule != "far":  # promotion's gates read it here
        set_version_metrics(
            registry.GENERATOR_MODEL, version, {"val_bits_per_token": last.val_bits}
        )
    return PretrainSummary(
        dataset=dataset.name,
        dataset_version=dataset.version,
        tokenizer=record.pinned,
        tokenizer_version=record.version,
        run_key=key,
        run_id=run_id,
        stages=summaries,
        model_uri=model_uri,
        registered_model=registry.GENERATOR_MODEL,
        model_version=version,
        alias=pretrain_config.register_alias,
        registered_before=registered_before,
    )


def stage_spec(
    config: ArvidConfig,
    index: int,
    stage: StageConfig,
    tokens_uri: str,
    model_config: GeneratorConfig,
    tokenizer: TokenizerConfig,
    classes: list[str],
    run_root: str,
    init_from: str | None,
) -> StageSpec:
    """What a worker needs to train stage `index` of the run on the token dataset `tokens_uri`:
    its clips (held-out shards split off), token layout and training options."""
    pretrain_config = config.pretrain
    token_data = read_token_dataset(tokens_uri)
    train_shards, val_shards = token_data.split(pretrain_config.val_shards)
    null_class = model_config.num_classes
    train = load_token_clips(token_data, train_shards, classes, null_class)
    val = load_token_clips(token_data, val_shards, classes, null_class) if val_shards else None
    videoar = videoar_config(tokenizer, stage) if stage.schedule == "next_scale" else None
    far = far_config(tokenizer, stage) if stage.schedule == "far" else None
    run_dir = storage.join(run_root, f"{index:02d}-{stage.name}")
    spec = StageSpec(
        stage=stage,
        model=model_config,
        videoar=videoar,
        train=train,
        val=val,
        run_dir=run_dir,
        init_from=init_from,
        seed=pretrain_config.seed,
        options=TrainOptions(
            device="cuda" if pretrain_config.use_gpu else "cpu",
            bf16=pretrain_config.bf16,
            threads=pretrain_config.threads_per_worker,
            checkpoint_every=pretrain_config.checkpoint_every,
            keep_checkpoints=pretrain_config.keep_checkpoints,
            log_every=pretrain_config.log_every,
            val_every=pretrain_config.val_every,
            compile_blocks=pretrain_config.compile_blocks,
            activation_checkpointing=pretrain_config.activation_checkpointing,
            loss_chunk_rows=pretrain_config.loss_chunk_rows,
            fsdp=pretrain_config.fsdp,
            # MFU only means something against a GPU's peak; the CPU reports tokens/s alone.
            peak_flops=H200_BF16_PEAK_FLOPS if pretrain_config.use_gpu else None,
        ),
        storage=config.storage,
        far=far,
    )
    if pretrain_config.use_gpu:  # MFU needs it; counting builds the whole model once more
        spec.options.flops_per_token = flops_per_token(spec, train.tokens_per_clip)
    return spec


def _run_stage(
    config: ArvidConfig,
    index: int,
    stage: StageConfig,
    tokens: TokenizeSummary,
    model_config: GeneratorConfig,
    tokenizer: TokenizerConfig,
    classes: list[str],
    run_root: str,
    init_from: str | None,
) -> StageSummary:
    spec = stage_spec(
        config, index, stage, tokens.tokens_uri, model_config, tokenizer, classes, run_root,
        init_from,
    )  # fmt: skip
    pretrain_config, run_dir = config.pretrain, spec.run_dir
    total = stage.total_steps(spec.train.tokens_per_clip)
    tags = {
        "arvid.step": "pretrain-stage",
        "arvid.stage": stage.name,
        "arvid.tokens_uri": tokens.tokens_uri,
        "arvid.tokens_version": tokens.tokens_version,
        "arvid.run_dir": run_dir,
    }
    params = {"stage": stage.model_dump(mode="json"), "steps_total": total}
    with tracking.tracked_run(
        config.tracking, f"stage-{index:02d}-{stage.name}", params, tags, nested=True
    ) as run:
        result = _finished(run_dir, total)
        skipped = result is not None
        if result is None:
            workers = WorkerGroup(
                pretrain_config.num_workers, pretrain_config.use_gpu, pretrain_config.max_failures
            )
            result = fit_stage(spec, workers, config.ray, EventLogger())
            # The completion record: a re-run skips this stage instead of starting Ray for it.
            storage.write_text(storage.join(run_dir, RESULT_FILE), json.dumps(asdict(result)))
        else:
            log.info("stage %s: already trained to step %d, skipped", stage.name, total)
        metric = loss_metric(stage.schedule)
        tracking.log_metrics(
            {
                f"final/train_{metric}": result.train_bits,
                f"final/val_{metric}": result.val_bits
                if result.val_bits is not None
                else float("nan"),
                "mean_tokens_per_s": result.tokens_per_s,
                "train_seconds": result.seconds,
            },
            step=result.steps,
        )
    return StageSummary(
        name=stage.name,
        resolution=stage.resolution,
        frames=stage.frames,
        schedule=stage.schedule,
        steps=result.steps,
        resumed_from_step=result.resumed_from_step,
        skipped=skipped,
        train_bits=result.train_bits,
        val_bits=result.val_bits,
        tokens_per_s=result.tokens_per_s,
        seconds=result.seconds,
        tokens_uri=tokens.tokens_uri,
        tokens_version=tokens.tokens_version,
        checkpoint=result.final_checkpoint,
        mlflow_run_id=run.info.run_id,
    )


def _log_model(checkpoint: str) -> str:
    """Attach the final checkpoint's weights and config as the run's model folder (runs:/ URI)."""
    from models.generator.persist import CONFIG_FILE, WEIGHTS_FILE

    with tempfile.TemporaryDirectory(prefix="arvid-generator-") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        folder.mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            storage.download_file(storage.join(checkpoint, name), folder / name)
        return registry.log_model_dir(folder, MODEL_ARTIFACT, kind="generator")
