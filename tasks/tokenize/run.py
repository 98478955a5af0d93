"""`tokenize_dataset`: a dataset version x a tokenizer version x a clip shape -> token shards on Ray.

Output, under <tokens_root>/<dataset-version>/<tokenizer-version>/<resolution>x<frames>/:

    shards/<shard>.tar     one token shard per dataset shard, same name (format: format.py)
    records/<shard>.json   completion record of a shard: its rows, size and hash; written after it
    tokenizer.json         the exact tokenizer: reference, name, version, run id, config/weights hash
    tokens.json            counts, shapes and the token dataset version
    manifest.jsonl         one row per clip, sorted by key; written last (the commit point). The
                           token dataset version is the content hash of this file.

Exactly once: only the driver writes. It gathers each shard's batches by batch index, publishes
the shard tar atomically, then its record; a batch that Ray retries or the driver resubmits after
an actor died just fills the same slot again. A re-run skips every shard whose record exists and
whose tar has the recorded size, so a run cut short resumes with the same names and content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from tasks import storage, tracking
from tasks.config import config_hash
from tasks.data.datasets import DatasetRef, resolve_dataset
from tasks.ingest.shards import jsonl, manifest_version
from tasks.ray_runtime import ensure_ray, worker_env
from tasks.settings import ArvidConfig
from tasks.tokenize.config import TokenizeConfig
from tasks.tokenize.format import FORMAT_VERSION, TokenizedClip, token_shard_bytes
from tasks.tokenize.tokenizer_ref import TokenizerRecord, read_model_files, resolve_tokenizer
from tasks.tokenize.workers import (
    EncodedBatch,
    TokenizerWorker,
    decode_batch,
    read_shard,
    warm_up,
)

log = logging.getLogger("arvid.tokenize")

# Encode calls queued per actor: one running, one waiting, so an actor never idles between batches.
CALLS_PER_ACTOR = 2


class TokenShardRecord(BaseModel):
    """Completion record of one token shard."""

    format: int = FORMAT_VERSION
    digest: str  # what shaped the tokens (tokenizer, resolution, frames, format)
    source_shard: str
    shard: str
    bytes: int
    sha256: str
    rows: list[dict[str, Any]]


class TokenizeSummary(BaseModel):
    """What a tokenization did: versions, where the tokens are, counts and throughput."""

    dataset: str
    dataset_version: str
    tokenizer: str
    tokenizer_version: str | None
    tokenizer_run_id: str | None
    tokenizer_label: str
    resolution: int
    frames: int
    tokens_uri: str
    manifest: str
    tokens_version: str
    token_shapes: list[list[int]]
    clips_total: int
    clips_new: int
    shards_total: int
    shards_new: int
    shards_skipped: int
    published_new: bool
    actors: int
    device: str
    process_seconds: float
    clips_per_s: float
    actor_busy_ratio: float
    batch_retries: int
    mlflow_run_id: str | None = None

    def line(self) -> str:
        """The one-line human summary."""
        status = (
            "new token version published"
            if self.published_new
            else "nothing new: tokens already published"
        )
        return (
            f"tokenize {self.dataset}@{self.dataset_version} with {self.tokenizer_label}"
            f" at {self.resolution}x{self.frames}: {self.clips_total} clips in {self.shards_total} shards "
            f"({self.shards_new} new, {self.shards_skipped} already done), "
            f"{self.clips_per_s:.1f} clips/s on {self.actors} {self.device} actor(s); "
            f"tokens {self.tokens_version}; {status} -> {self.manifest}"
        )


@dataclass
class ShardPlan:
    """One dataset shard to tokenize, cut into batches of clip keys."""

    source_shard: str  # e.g. shards/shard-<id>.tar, relative to the dataset root
    uri: str
    batches: list[list[str]]

    @property
    def clips(self) -> int:
        """Clips in the shard."""
        return sum(len(b) for b in self.batches)


def tokens_uri(
    tokens_root: str, dataset_version: str, tokenizer_label: str, resolution: int, frames: int
) -> str:
    """<tokens_root>/<dataset-version>/<tokenizer-version>/<resolution>x<frames>."""
    return storage.join(tokens_root, dataset_version, tokenizer_label, f"{resolution}x{frames}")


def output_digest(tokenizer: TokenizerRecord, resolution: int, frames: int) -> str:
    """Hash of everything that shapes the tokens; records made otherwise are not reused."""
    identity = f"{FORMAT_VERSION}:{tokenizer.digest}:{resolution}:{frames}:center-crop"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _stem(source_shard: str) -> str:
    return source_shard.rsplit("/", 1)[-1].removesuffix(".tar")


def _record_uri(out: str, source_shard: str) -> str:
    return storage.join(out, "records", f"{_stem(source_shard)}.json")


def load_complete_records(
    out: str, dataset: DatasetRef, digest: str
) -> dict[str, TokenShardRecord]:
    """Records of shards already tokenized here with the same digest and verified on storage.

    Raises ValueError when the folder holds tokens made by another tokenizer or format.
    """
    expected = {
        shard: [row["key"] for row in rows] for shard, rows in dataset.rows_by_shard().items()
    }
    done: dict[str, TokenShardRecord] = {}
    for shard, keys in expected.items():
        uri = _record_uri(out, shard)
        if not storage.exists(uri):
            continue
        record = TokenShardRecord.model_validate_json(storage.read_text(uri))
        if record.digest != digest:
            raise ValueError(
                f"{out}: holds tokens made by another tokenizer or format (digest {record.digest}, "
                f"this run {digest}) — choose another tokenize.tokens_root or remove that folder"
            )
        shard_uri = storage.join(out, record.shard)
        # A record is written only after its shard; the size check catches a shard lost since.
        if [row["key"] for row in record.rows] == keys and (
            storage.exists(shard_uri) and storage.size(shard_uri) == record.bytes
        ):
            done[shard] = record
    return done


def plan_shards(
    dataset: DatasetRef, done: dict[str, TokenShardRecord], batch_size: int
) -> list[ShardPlan]:
    """The dataset's shards not yet done, each cut into batches of its clip keys (sorted)."""
    plans = []
    for shard, rows in dataset.rows_by_shard().items():
        if shard in done:
            continue
        keys = [row["key"] for row in rows]
        batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
        plans.append(ShardPlan(source_shard=shard, uri=dataset.shard_uri(shard), batches=batches))
    return plans


def publish_shard(
    out: str, plan: ShardPlan, batches: list[EncodedBatch], digest: str
) -> TokenShardRecord:
    """Write one token shard (atomically), then its completion record."""
    clips = [
        TokenizedClip(key=key, metadata=metadata, indices=indices, multiscale=batch.multiscale)
        for batch in batches
        for key, metadata, indices in zip(batch.keys, batch.metadata, batch.indices, strict=True)
    ]
    data = token_shard_bytes(clips)
    shard_name = f"shards/{_stem(plan.source_shard)}.tar"
    storage.write_bytes(storage.join(out, shard_name), data)
    rows = [
        {
            "key": clip.key,
            "input": clip.metadata.get("input"),
            "label": clip.metadata.get("label"),
            "caption": clip.metadata.get("caption"),
            "shard": shard_name,
            "source_shard": plan.source_shard,
            "token_shapes": clip.token_shapes,
        }
        for clip in sorted(clips, key=lambda c: c.key)
    ]
    record = TokenShardRecord(
        digest=digest,
        source_shard=plan.source_shard,
        shard=shard_name,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        rows=rows,
    )
    storage.write_text(_record_uri(out, plan.source_shard), record.model_dump_json())
    return record


@dataclass
class _ActorPool:
    """Tokenizer actors, their queue depths, and which are still alive."""

    actors: list[Any]
    device: str
    files_ref: Any  # held for the run: a restarting actor reads its weights from it again
    load: list[int]
    alive: set[int]

    def pick(self, avoid: frozenset[int] = frozenset()) -> int | None:
        """The live actor with the shortest queue, if it has room for another call.

        Actors in `avoid` (those a batch already failed on) are chosen only if no other lives.
        """
        candidates = (self.alive - avoid) or self.alive
        if not candidates:
            return None
        best = min(candidates, key=lambda i: self.load[i])
        return best if self.load[best] < CALLS_PER_ACTOR else None

    def retire(self, actor: int) -> None:
        """Stop sending work to an actor that Ray could not bring back."""
        self.alive.discard(actor)


def _actor_layout(tc: TokenizeConfig) -> tuple[int, float, str]:
    """(actors, GPUs per actor, device) for this cluster; refuses sizes that could never progress."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    use_gpu = tc.device == "cuda" or (tc.device == "auto" and gpus >= 1)
    if use_gpu:
        if gpus < 1:
            raise ValueError("tokenize.device=cuda: the Ray cluster has no GPU")
        count = tc.num_actors or int(gpus)
        if count > gpus:
            raise ValueError(
                f"tokenize.num_actors={count}: the Ray cluster has {gpus:g} GPUs (one per actor)"
            )
    else:
        room = int((cpus - tc.decode_num_cpus) / tc.actor_num_cpus + 1e-9)
        count = tc.num_actors or max(1, min(int(cpus), room))
    needed = count * tc.actor_num_cpus + tc.decode_num_cpus
    if needed > cpus + 1e-9:
        raise ValueError(
            f"{count} tokenizer actors x {tc.actor_num_cpus:g} CPUs + {tc.decode_num_cpus:g} CPUs "
            f"for one decode task need {needed:g} CPUs; the Ray cluster has {cpus:g}: decoding "
            "would wait forever — lower tokenize.num_actors or tokenize.actor_num_cpus"
        )
    return count, (1.0 if use_gpu else 0.0), ("cuda" if use_gpu else "cpu")


def _start_actors(
    tc: TokenizeConfig,
    layout: tuple[int, float, str],
    files: dict[str, bytes],
    runtime_env: dict[str, Any],
) -> _ActorPool:
    import ray

    count, gpus, device = layout
    files_ref = ray.put(files)  # shipped once, however many actors and restarts
    remote = ray.remote(TokenizerWorker).options(
        num_cpus=tc.actor_num_cpus,
        num_gpus=gpus,
        max_restarts=tc.max_retries,
        # Ray retries a lost call once the actor is back (a call sent to a restarting actor
        # fails at once otherwise); the driver resubmits elsewhere only when Ray gives up.
        max_task_retries=tc.max_retries,
        runtime_env=runtime_env,
    )
    threads = max(1, int(tc.actor_num_cpus))
    actors = [remote.remote(files_ref, device, threads) for _ in range(count)]
    # Decode workers start (Python, torch, PyAV imports) while the actors load the tokenizer,
    # so the pipeline starts warm on both sides and throughput excludes both start-ups.
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    slots = int((cpus - count * tc.actor_num_cpus) / tc.decode_num_cpus + 1e-9)
    warm = ray.remote(warm_up).options(num_cpus=tc.decode_num_cpus, runtime_env=runtime_env)
    pending = [warm.remote() for _ in range(max(1, min(slots, CALLS_PER_ACTOR * count + 2)))]
    ray.get([actor.ready.remote() for actor in actors] + pending)
    return _ActorPool(actors, device, files_ref, [0] * count, set(range(count)))


def run_pipeline(
    plans: list[ShardPlan],
    pool: _ActorPool,
    tc: TokenizeConfig,
    storage_settings: storage.StorageSettings,
    runtime_env: dict[str, Any],
    on_batch: Callable[[EncodedBatch], None],
    on_shard: Callable[[ShardPlan, list[EncodedBatch]], None],
) -> dict[str, float]:
    """Read -> decode (CPU tasks) -> encode (actors) every planned batch; hand each whole shard to on_shard."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    options = {
        "num_cpus": tc.decode_num_cpus,
        "max_retries": tc.max_retries,
        "runtime_env": runtime_env,
    }
    reader, decoder = ray.remote(read_shard), ray.remote(decode_batch).options(**options)
    todo = deque((plan, index) for plan in plans for index in range(len(plan.batches)))
    read_refs: dict[str, list[Any]] = {}
    decoding: dict[Any, tuple[ShardPlan, int]] = {}
    # (plan, batch index, decoded ref, lost attempts, actors the batch was lost on)
    ready: deque[tuple[ShardPlan, int, Any, int, frozenset[int]]] = deque()
    encoding: dict[Any, tuple[ShardPlan, int, Any, int, frozenset[int], int]] = {}
    results: dict[str, dict[int, EncodedBatch]] = {plan.source_shard: {} for plan in plans}
    # Decoded batches kept ahead of the actors: enough that none waits, few enough to bound memory.
    ahead = CALLS_PER_ACTOR * len(pool.actors) + 2
    busy_seconds = 0.0
    retries = 0
    while todo or decoding or ready or encoding:
        while todo and len(decoding) + len(ready) < ahead:
            plan, index = todo.popleft()
            if plan.source_shard not in read_refs:
                count = len(plan.batches)
                refs = reader.options(**options, num_returns=count).remote(
                    plan.uri, plan.batches, storage_settings
                )
                read_refs[plan.source_shard] = [refs] if count == 1 else list(refs)
            ref = decoder.remote(read_refs[plan.source_shard][index], tc.resolution, tc.frames)
            decoding[ref] = (plan, index)
        while ready:
            choice = pool.pick(ready[0][4])
            if choice is None:
                break
            plan, index, decoded, lost, lost_on = ready.popleft()
            call = pool.actors[choice].encode.remote(decoded)
            encoding[call] = (plan, index, decoded, lost, lost_on, choice)
            pool.load[choice] += 1
        if not pool.alive:
            raise RuntimeError(
                f"all {len(pool.actors)} tokenizer actors died; completed shards are kept — re-run to resume"
            )
        # fetch_local=False: decoded frames go from decode task to actor, never to the driver.
        done, _ = ray.wait([*decoding, *encoding], num_returns=1, fetch_local=False)
        for ref in done:
            if ref in decoding:
                plan, index = decoding.pop(ref)
                ready.append((plan, index, ref, 0, frozenset()))
                continue
            plan, index, decoded, lost, lost_on, actor = encoding.pop(ref)
            pool.load[actor] -= 1
            try:
                batch: EncodedBatch = ray.get(ref)
            except RayTaskError as exc:
                # Decoding or encoding raised (a bad clip, a tokenizer bug): retrying won't help.
                raise RuntimeError(
                    f"{plan.uri}: batch {index} ({', '.join(plan.batches[index])}) failed: "
                    f"{exc.cause!r}; completed shards are kept — re-run after fixing it"
                ) from exc
            except RayActorError as exc:
                # Ray's restarts and retries on this actor ran out: retire it and resubmit to
                # another live actor. The batch's slot is filled once, whoever encodes it.
                pool.retire(actor)
                if lost + 1 > tc.max_retries:
                    raise RuntimeError(
                        f"{plan.uri}: batch {index} lost its actor {lost + 1} times ({exc}); "
                        "completed shards are kept — re-run to resume"
                    ) from exc
                log.warning("%s batch %d: actor died, resubmitting (%s)", plan.uri, index, exc)
                retries += 1
                ready.appendleft((plan, index, decoded, lost + 1, lost_on | {actor}))
                continue
            results[plan.source_shard][index] = batch
            busy_seconds += batch.encode_seconds
            on_batch(batch)
            if len(results[plan.source_shard]) == len(plan.batches):
                shard_results = results.pop(plan.source_shard)
                read_refs.pop(plan.source_shard, None)
                on_shard(plan, [shard_results[i] for i in range(len(plan.batches))])
    return {"busy_seconds": busy_seconds, "retries": retries}


def _write_if_changed(uri: str, text: str) -> bool:
    if storage.exists(uri) and storage.read_text(uri) == text:
        return False
    storage.write_text(uri, text)
    return True


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


def _token_shapes(record: TokenizerRecord, tc: TokenizeConfig) -> list[list[int]]:
    from models.tokenizer import scale_shapes

    t = 1 + (tc.frames - 1) // record.temporal_factor
    side = tc.resolution // record.spatial_factor
    shapes = scale_shapes(record.scales, side, side) if record.scales else [(side, side)]
    return [[t, h, w] for h, w in shapes]


def tokenize_dataset(config: ArvidConfig) -> TokenizeSummary:
    """Tokenize `config.tokenize.dataset` with `config.tokenize.tokenizer` on Ray; resumable and idempotent."""
    tc = config.tokenize
    tracking.setup_tracking(config.tracking)  # models:/ references resolve against this store
    dataset = resolve_dataset(storage.absolute(tc.dataset))  # Ray workers: own working dir
    with tempfile.TemporaryDirectory(prefix="arvid-tokenizer-") as tmp:
        record, model_dir = resolve_tokenizer(tc.tokenizer, Path(tmp) / "model")
        _check_tokenizer_fits(record, model_dir, tc)
        _check_clip_lengths(dataset, tc.frames)
        files = read_model_files(model_dir)
    out = tokens_uri(
        storage.absolute(tc.tokens_root), dataset.version, record.label, tc.resolution, tc.frames
    )
    digest = output_digest(record, tc.resolution, tc.frames)
    done = load_complete_records(out, dataset, digest)
    plans = plan_shards(dataset, done, tc.batch_size)
    log.info(
        "%s: %d of %d shards already tokenized, %d to do",
        out,
        len(done),
        len(done) + len(plans),
        len(plans),
    )
    tags = {
        "arvid.step": "tokenize",
        "arvid.dataset": dataset.name,
        "arvid.dataset_version": dataset.version,
        "arvid.tokenizer": record.name or record.reference,
        "arvid.tokenizer_version": record.version or record.label,
        "arvid.tokenizer_run_id": record.run_id or "",
        "arvid.config_hash": config_hash(tc),
        "arvid.tokens_uri": out,
    }
    params = {"tokenize": tc.model_dump(mode="json"), "tokenizer": record.model_dump(mode="json")}
    started_ray = False
    if plans:
        import ray

        started_ray = not ray.is_initialized()
        ensure_ray(config.ray)
    try:
        # Sized before the MLflow run opens: a layout that cannot progress is a config error.
        layout = _actor_layout(tc) if plans else None
        with tracking.tracked_run(config.tracking, f"tokenize-{dataset.name}", params, tags) as run:
            stats = _tokenize_shards(config, plans, files, out, digest, layout)
            summary = _finish(config, dataset, record, out, digest, plans, done, stats)
            summary.mlflow_run_id = run.info.run_id
            _record_run(summary, out)
    finally:
        if started_ray:
            ray.shutdown()
    return summary


def _tokenize_shards(
    config: ArvidConfig,
    plans: list[ShardPlan],
    files: dict[str, bytes],
    out: str,
    digest: str,
    layout: tuple[int, float, str] | None,
) -> dict[str, Any]:
    """Run the Ray pipeline over the planned shards (nothing to do: no actors at all)."""
    tc = config.tokenize
    stats: dict[str, Any] = {
        "seconds": 0.0,
        "clips": 0,
        "busy_seconds": 0.0,
        "retries": 0,
        "actors": 0,
        "device": "none",
    }
    if not plans or layout is None:
        return stats
    import ray

    runtime_env = {"env_vars": worker_env(config.ray)}
    pool: _ActorPool | None = None
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
        pool = _start_actors(tc, layout, files, runtime_env)
        started = time.perf_counter()  # throughput excludes actor start-up
        log.info(
            "%d tokenizer actor(s) on %s ready in %.1f s",
            len(pool.actors),
            pool.device,
            started - launched,
        )
        shards_done = 0

        def on_batch(batch: EncodedBatch) -> None:
            stats["clips"] += len(batch.keys)
            progress.update(len(batch.keys))

        def on_shard(plan: ShardPlan, batches: list[EncodedBatch]) -> None:
            nonlocal shards_done
            publish_shard(out, plan, batches, digest)
            shards_done += 1
            progress.set_postfix(shards=f"{shards_done}/{len(plans)}", refresh=False)

        result = run_pipeline(plans, pool, tc, config.storage, runtime_env, on_batch, on_shard)
        stats.update(result)
        stats["seconds"] = time.perf_counter() - started
        stats["actors"] = len(pool.actors)
        stats["device"] = pool.device
    finally:
        progress.close()
        if pool is not None:
            for actor in pool.actors:
                ray.kill(actor)
    return stats


def _finish(
    config: ArvidConfig,
    dataset: DatasetRef,
    record: TokenizerRecord,
    out: str,
    digest: str,
    plans: list[ShardPlan],
    skipped: dict[str, TokenShardRecord],
    stats: dict[str, Any],
) -> TokenizeSummary:
    """Check exactly-once from the records, then publish tokenizer.json, tokens.json and the manifest."""
    tc = config.tokenize
    records = load_complete_records(out, dataset, digest)
    missing = sorted(set(dataset.rows_by_shard()) - set(records))
    if missing:
        raise RuntimeError(f"{out}: shards {missing[:3]} have no completion record — re-run")
    rows = sorted((row for r in records.values() for row in r.rows), key=lambda row: row["key"])
    keys = [row["key"] for row in rows]
    expected = sorted(row["key"] for row in dataset.rows)
    if keys != expected:
        raise RuntimeError(
            f"{out}: token records hold {len(keys)} clips ({len(set(keys))} distinct), "
            f"the dataset {len(expected)} — remove {out} and re-run"
        )
    manifest_text = jsonl(rows)
    version = manifest_version(manifest_text)
    manifest_uri = storage.join(out, "manifest.jsonl")
    token_shapes = _token_shapes(record, tc)
    info = {
        "format": FORMAT_VERSION,
        "tokens_version": version,
        "dataset": dataset.root,
        "dataset_version": dataset.version,
        "tokenizer": record.model_dump(mode="json", exclude={"reference"}),
        "resolution": tc.resolution,
        "frames": tc.frames,
        "token_shapes": token_shapes,
        "clips": len(rows),
        "shards": sorted(r.shard for r in records.values()),
        "digest": digest,
    }
    # Without the reference as typed: @champion and /1 name the same tokens.
    persisted = record.model_dump(mode="json", exclude={"reference"})
    tokenizer_text = json.dumps(persisted, indent=2, sort_keys=True) + "\n"
    _write_if_changed(storage.join(out, "tokenizer.json"), tokenizer_text)
    info_uri = storage.join(out, "tokens.json")
    existing = json.loads(storage.read_text(info_uri)) if storage.exists(info_uri) else {}
    if {k: v for k, v in existing.items() if k != "created"} != info:
        created = datetime.now(UTC).isoformat(timespec="seconds")
        storage.write_text(info_uri, json.dumps({**info, "created": created}, indent=2) + "\n")
    # The manifest is the commit point: everything it points at is already in place.
    published = _write_if_changed(manifest_uri, manifest_text)
    seconds = float(stats["seconds"])
    actors = int(stats["actors"])
    return TokenizeSummary(
        dataset=dataset.name,
        dataset_version=dataset.version,
        tokenizer=record.reference,
        tokenizer_version=record.version,
        tokenizer_run_id=record.run_id,
        tokenizer_label=record.label,
        resolution=tc.resolution,
        frames=tc.frames,
        tokens_uri=out,
        manifest=manifest_uri,
        tokens_version=version,
        token_shapes=token_shapes,
        clips_total=len(rows),
        clips_new=int(stats["clips"]),
        shards_total=len(records),
        shards_new=len(plans),
        shards_skipped=len(skipped),
        published_new=published,
        actors=actors,
        device=str(stats["device"]),
        process_seconds=round(seconds, 3),
        clips_per_s=round(stats["clips"] / seconds, 3) if seconds > 0 else 0.0,
        actor_busy_ratio=round(stats["busy_seconds"] / (seconds * actors), 4)
        if seconds > 0 and actors
        else 0.0,
        batch_retries=int(stats["retries"]),
    )


def _record_run(summary: TokenizeSummary, out: str) -> None:
    """Counts, throughput and the token version on the active MLflow run; manifest as artifact."""
    tracking.set_tags({"arvid.tokens_version": summary.tokens_version})
    tracking.log_metrics(
        {
            "clips_total": summary.clips_total,
            "clips_new": summary.clips_new,
            "shards_total": summary.shards_total,
            "shards_new": summary.shards_new,
            "shards_skipped": summary.shards_skipped,
            "process_seconds": summary.process_seconds,
            "clips_per_s": summary.clips_per_s,
            "actor_busy_ratio": summary.actor_busy_ratio,
            "batch_retries": summary.batch_retries,
            "actors": summary.actors,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("manifest.jsonl", "tokenizer.json", "tokens.json"):
            local = Path(tmp) / name
            local.write_text(storage.read_text(storage.join(out, name)))
            tracking.log_artifact(local, "tokens")
        summary_file = Path(tmp) / "summary.json"
        summary_file.write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
        tracking.log_artifact(summary_file, "tokens")
