"""`tokenize_dataset`: a dataset version x a tokenizer version x a clip shape -> token shards on Ray.

The orchestration only: resolve and check the inputs (before any work or MLflow run), plan what
is not yet done (output.py, through the sharded-output protocol), run the Ray pipeline
(scheduler.py), commit the manifest, report to MLflow (report.py).

Exactly once: only the driver writes. It gathers each shard's batches by batch index, publishes
the shard tar atomically, then its record; a batch that Ray retries or the driver resubmits after
an actor died just fills the same slot again. A re-run skips every complete shard, so a run cut
short resumes with the same names and content.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tasks import storage, tracking
from tasks.data.datasets import DatasetRef, resolve_dataset
from tasks.ray_runtime import ensure_ray, worker_env
from tasks.settings import ArvidConfig
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.format import TokenizedClip
from tasks.tokenize.output import (
    ShardPlan,
    TokenOutput,
    TokensCommit,
    commit_tokens,
    load_complete_records,
    output_digest,
    plan_shards,
    publish_shard,
    token_output,
    tokens_uri,
)
from tasks.tokenize.report import TokenizeSummary, record_results, run_params, run_tags
from tasks.tokenize.scheduler import (
    ActorLayout,
    ActorPool,
    actor_layout,
    run_pipeline,
    start_actors,
)
from tasks.tokenize.tokenizer_ref import TokenizerRecord, read_model_files, resolve_tokenizer
from tasks.tokenize.workers import EncodedBatch, TokenizerWorker

log = logging.getLogger("arvid.tokenize")


@dataclass
class RunStats:
    """What the Ray part of a run did (all zero when every shard was already done)."""

    seconds: float = 0.0
    clips: int = 0
    busy_seconds: float = 0.0
    retries: int = 0
    actors: int = 0
    device: str = "none"


def tokenize_dataset(
    config: ArvidConfig, worker: type[TokenizerWorker] = TokenizerWorker
) -> TokenizeSummary:
    """Tokenize `config.tokenize.dataset` with `config.tokenize.tokenizer` on Ray; resumable and idempotent.

    `worker` is the actor class that encodes batches (a subclass of TokenizerWorker).
    """
    tc = config.tokenize
    tracking.setup_tracking(config.tracking)  # models:/ references resolve against this store
    dataset = resolve_dataset(storage.absolute(tc.dataset))  # Ray workers: own working dir
    with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
        record, model_dir = resolve_tokenizer(tc.tokenizer, Path(tmp) / "model")
        _check_tokenizer_fits(record, model_dir, tc)
        _check_clip_lengths(dataset, tc.frames)
        files = read_model_files(model_dir)
    out = tokens_uri(
        storage.absolute(tc.tokens_root),
        dataset.version,
        record.label,
        tc.resolution,
        tc.frames,
        tc.latents,
    )
    output = token_output(out, output_digest(record, tc.resolution, tc.frames, tc.latents))
    done = load_complete_records(output, dataset)
    plans = plan_shards(dataset, done, tc.batch_size)
    log.info(
        "%s: %d of %d shards already tokenized, %d to do",
        out,
        len(done),
        len(done) + len(plans),
        len(plans),
    )
    started_ray = False
    if plans:
        import ray

        started_ray = not ray.is_initialized()
        ensure_ray(config.ray)
    try:
        # Sized before the MLflow run opens: a layout that cannot progress is a config error.
        layout = actor_layout(tc) if plans else None
        name = f"tokenize-{dataset.name}"
        tags, params = run_tags(dataset, record, tc, out), run_params(record, tc)
        with tracking.tracked_run(config.tracking, name, params, tags) as run:
            stats = _tokenize_shards(config, plans, files, output, layout, worker)
            committed = commit_tokens(output, dataset, record, tc)
            summary = _summary(tc, dataset, record, committed, plans, stats)
            summary.mlflow_run_id = run.info.run_id
            record_results(summary)
    finally:
        if started_ray:
            ray.shutdown()
    return summary


def _tokenize_shards(
    config: ArvidConfig,
    plans: list[ShardPlan],
    files: dict[str, bytes],
    output: TokenOutput,
    layout: ActorLayout | None,
    worker: type[TokenizerWorker],
) -> RunStats:
    """Run the Ray pipeline over the planned shards (nothing to do: no actors at all)."""
    tc = config.tokenize
    stats = RunStats()
    if not plans or layout is None:
        return stats
    runtime_env = {"env_vars": worker_env(config.ray)}
    pool: ActorPool | None = None
    # Shown from the start (0/total while the actors load), closed whatever happens.
    progress = tqdm(
        total=sum(plan.clips for plan in plans),
        unit="clip",
        desc="tokenize",
        disable=not tc.progress,
        dynamic_ncols=True,
    )
    try:
        launched = time.perf_counter()
        pool = start_actors(tc, layout, files, runtime_env, worker)
        started = time.perf_counter()  # throughput excludes actor start-up
        log.info(
            "%d tokenizer actor(s) on %s ready in %.1f s",
            len(pool.actors),
            pool.device,
            started - launched,
        )
        shards_done = 0

        def on_batch(batch: EncodedBatch) -> None:
            stats.clips += len(batch.keys)
            progress.update(len(batch.keys))

        def on_shard(plan: ShardPlan, batches: list[EncodedBatch]) -> None:
            nonlocal shards_done
            publish_shard(output, plan, _clips(batches, tc.latents))
            shards_done += 1
            progress.set_postfix(shards=f"{shards_done}/{len(plans)}", refresh=False)

        result = run_pipeline(plans, pool, tc, config.storage, runtime_env, on_batch, on_shard)
        stats.busy_seconds, stats.retries = result.busy_seconds, result.retries
        stats.seconds = time.perf_counter() - started
        stats.actors, stats.device = len(pool.actors), pool.device
    finally:
        progress.close()
        if pool is not None:
            pool.kill()
    return stats


def _clips(batches: list[EncodedBatch], latents: bool) -> list[TokenizedClip]:
    return [
        TokenizedClip(
            key=key,
            metadata=metadata,
            indices=indices,
            multiscale=batch.multiscale,
            continuous=continuous if latents else None,
        )
        for batch in batches
        for key, metadata, indices, continuous in zip(
            batch.keys, batch.metadata, batch.indices, batch.continuous, strict=True
        )
    ]


def _check_clip_lengths(dataset: DatasetRef, frames: int) -> None:
    known = [row for row in dataset.rows if "frames" in row]
    if not known:
        return
    shortest = min(known, key=lambda row: row["frames"])
    if shortest["frames"] < frames:
        raise ValueError(
            f"{dataset.root}@{dataset.version}: clip {shortest['key']} has {shortest['frames']} "
            f"frames, tokenize.frames={frames} needs at least {frames} — lower --frames or "
            "re-ingest with longer clips (ingest.clip_frames)"
        )


def _check_tokenizer_fits(record: TokenizerRecord, model_dir: Path, tc: TokenizeConfig) -> None:
    from models.tokenizer import load_tokenizer_from_dir

    # Loading the weights here too means a broken model folder fails now, not in every actor.
    tokenizer = load_tokenizer_from_dir(model_dir)
    try:
        tokenizer.check_input_shape(tc.frames, tc.resolution, tc.resolution)
    except ValueError as exc:
        raise ValueError(
            f"{record.reference} ({record.label}: {record.temporal_factor}x in time, "
            f"{record.spatial_factor}x in space) cannot encode {tc.frames}-frame "
            f"{tc.resolution}x{tc.resolution} clips: {exc} — set --frames/--resolution "
            "(tokenize.frames, tokenize.resolution)"
        ) from exc


def _summary(
    tc: TokenizeConfig,
    dataset: DatasetRef,
    record: TokenizerRecord,
    committed: TokensCommit,
    plans: list[ShardPlan],
    stats: RunStats,
) -> TokenizeSummary:
    seconds, actors = stats.seconds, stats.actors
    return TokenizeSummary(
        dataset=dataset.name,
        dataset_version=dataset.version,
        tokenizer=record.reference,
        tokenizer_version=record.version,
        tokenizer_run_id=record.run_id,
        tokenizer_label=record.label,
        resolution=tc.resolution,
        frames=tc.frames,
        tokens_uri=committed.commit.folder,
        manifest=committed.commit.manifest,
        tokens_version=committed.commit.version,
        token_shapes=committed.token_shapes,
        clips_total=committed.clips,
        clips_new=stats.clips,
        shards_total=committed.shards,
        shards_new=len(plans),
        shards_skipped=committed.shards - len(plans),
        published_new=committed.commit.published,
        actors=actors,
        device=stats.device,
        process_seconds=round(seconds, 3),
        clips_per_s=round(stats.clips / seconds, 3) if seconds > 0 else 0.0,
        actor_busy_ratio=round(stats.busy_seconds / (seconds * actors), 4)
        if seconds > 0 and actors
        else 0.0,
        batch_retries=stats.retries,
    )
