"""`evaluate`: score a registered generator and attach the metrics to its version.

The evaluation's work is cut into units (tasks/evaluate/units.py) run by Ray actors that each
hold the generator, its tokenizer and I3D; every finished unit is published with the
sharded-output protocol under `<output_root>/<model>-v<version>/<digest>`, so an interrupted
evaluation resumes with the units it lacks, and a finished one is read back without starting
Ray. The aggregated metrics go to an MLflow run (with sample mp4s and a contact sheet) and onto
the model version as `arvid.metric.<name>` tags, where promotion's gates read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from models.eval.fvd import FeatureStats
from models.eval.i3d import NUM_CLASSES
from tasks import registry, storage, tracking
from tasks.data.datasets import resolve_dataset
from tasks.data.sharded_output import ShardedOutput
from tasks.evaluate.config import EvaluateConfig, FVDProtocol
from tasks.evaluate.fvd import compute_fvd, draw_real_indices
from tasks.evaluate.i3d_weights import WEIGHTS_SHA256, ensure_i3d_weights
from tasks.evaluate.media import contact_sheet, write_samples
from tasks.evaluate.sampling import SamplingOptions
from tasks.evaluate.target import EvalTarget, resolve_target
from tasks.evaluate.units import ClipRef, EvalUnit, UnitRecord, batches, read_unit_shard
from tasks.pretrain.tokens import TokenClips, class_names, load_token_clips, read_token_dataset
from tasks.promote.metrics import set_version_metrics
from tasks.ray_runtime import ensure_ray
from tasks.settings import ArvidConfig
from tasks.tokenize.tokenizer_ref import read_model_files, resolve_tokenizer

log = logging.getLogger("arvid.evaluate")

DIGEST_TAG = "arvid.evaluation"  # the digest of the evaluation whose metrics the version carries
RUN_TAG = "arvid.evaluation_run"


class EvaluationSummary(BaseModel):
    """What an evaluation measured for one generator version, and where it is recorded."""

    model: str  # models:/<name>/<version>
    model_name: str
    version: str
    digest: str
    output: str
    metrics: dict[str, float]
    real_videos: int
    generated_videos: int
    units: int
    units_done_before: int
    recorded_before: bool  # the version already carried these metrics: nothing was logged again
    mlflow_run_id: str | None
    samples: list[str]  # sample mp4 artifact paths (in the MLflow run)
    contact_sheet: str | None

    def line(self) -> str:
        """The one-line human summary."""
        m = self.metrics
        parts = [f"FVD {m['fvd']:.1f} ({self.real_videos} real vs {self.generated_videos} sampled)"]
        if "fvd_frame_prediction" in m:
            parts.append(
                f"frame prediction PSNR {m['prediction_psnr']:.2f} dB (repeat-last-frame "
                f"{m['repeat_last_frame_psnr']:.2f} dB)"
            )
        if "val_bits_per_token" in m:
            parts.append(f"held-out {m['val_bits_per_token']:.3f} bits/token")
        parts += [
            f"tokenizer PSNR {m['tokenizer_psnr']:.2f} dB",
            f"{m['seconds_per_video']:.2f} s/video in {int(m['sampling_steps'])} steps",
        ]
        before = "; recorded before" if self.recorded_before else ""
        return f"evaluate {self.model}: " + ", ".join(parts) + before


def evaluate(config: ArvidConfig) -> EvaluationSummary:
    """Evaluate `config.evaluate.model` (default: the newest generator); resumable, idempotent."""
    ec = config.evaluate
    storage.configure_storage(config.storage)
    tracking.setup_tracking(config.tracking)
    target = resolve_target(ec.model or f"models:/{registry.GENERATOR_MODEL}/latest")
    lineage = target.lineage
    protocol = ec.fvd
    if lineage.frames < protocol.start_frame + protocol.frames:
        raise ValueError(
            f"{target.pinned}: makes {lineage.frames}-frame clips; the FVD protocol needs frames "
            f"{protocol.start_frame}..{protocol.start_frame + protocol.frames - 1} — evaluate a "
            "model whose last stage has more frames, or change evaluate.fvd.start_frame"
        )
    plan = plan_units(target, ec)
    digest = evaluation_digest(target, ec)
    root = storage.join(
        storage.absolute(ec.output_root), f"{target.model_name}-v{target.version}", digest[:12]
    )
    output = ShardedOutput(root, digest, UnitRecord)
    done = {unit.name: output.complete(output.unit_id([unit.name], "")) for unit in plan.units}
    pending = [unit for unit in plan.units if done[unit.name] is None]
    log.info(
        "evaluate %s: %d of %d units done before, %d to do (%s)",
        target.pinned, len(plan.units) - len(pending), len(plan.units), len(pending), root,
    )  # fmt: skip
    records = dict(done)
    if pending:
        records.update(_run_units(config, target, plan, pending, output))
    metrics, kept = aggregate(plan, records, output, protocol)
    manifest = "".join(
        json.dumps({"unit": name, "kind": r.kind, "count": r.count, "shard": r.shard}) + "\n"
        for name, r in records.items()
    )
    output.commit(manifest, {"metrics.json": {"model": target.pinned, "metrics": metrics}})
    return _record(
        config, target, plan, digest, root, metrics, kept, len(plan.units) - len(pending)
    )


# -- planning -------------------------------------------------------------------------------------


@dataclass
class EvalPlan:
    """The units of one evaluation and the facts aggregation needs."""

    units: list[EvalUnit]
    classes: list[str]
    fps: float
    val_clips: TokenClips
    held_out: int  # clips in the held-out token shards


def plan_units(target: EvalTarget, ec: EvaluateConfig) -> EvalPlan:
    """Draw the real clips, and name every unit of work (deterministic for a given config)."""
    lineage = target.lineage
    protocol = ec.fvd
    dataset = resolve_dataset(f"{lineage.dataset_uri}@{lineage.dataset_version}")
    classes = class_names(dataset.rows)
    tokens = read_token_dataset(lineage.tokens_uri)
    _, val_shards = tokens.split(lineage.val_shards)
    if not val_shards:
        raise ValueError(
            f"{target.pinned}: was trained with no held-out shards (pretrain.val_shards=0); "
            "evaluation needs held-out clips — retrain with val_shards >= 1"
        )
    val = load_token_clips(tokens, val_shards, classes, max(1, len(classes)))
    shard_of = {row["key"]: dataset.shard_uri(row["shard"]) for row in dataset.rows}
    drawn = draw_real_indices(len(val), protocol)
    t = val.scales[0].shape[1]
    if ec.frame_prediction and ec.context_frames >= t:
        raise ValueError(
            f"evaluate.context_frames={ec.context_frames}: the model's clips have {t} latent "
            "frames, so nothing would be left to predict — lower it"
        )
    continuous = lineage.schedule == "far"  # FAR predicts latents: no tokens, no bits/token
    if continuous and val.continuous is None:
        raise ValueError(
            f"{lineage.tokens_uri}: a FAR model predicts continuous latents, and these token "
            "shards carry none — they were not tokenized with tokenize.latents"
        )
    units: list[EvalUnit] = []
    for i, rows in enumerate(batches(list(range(len(val))), ec.batch_size)):
        if continuous:
            break
        units.append(
            EvalUnit(
                name=f"bits-{i:03d}", kind="bits", labels=[int(val.labels[r]) for r in rows],
                context=[a[rows] for a in val.scales],
            )
        )  # fmt: skip
    for i, rows in enumerate(batches(drawn, ec.batch_size)):
        clips = [ClipRef(shard_of[val.keys[r]], val.keys[r]) for r in rows]
        units.append(EvalUnit(name=f"real-{i:03d}", kind="real", clips=clips))
        if ec.frame_prediction:
            units.append(
                EvalUnit(
                    name=f"pred-{i:03d}", kind="pred", clips=clips,
                    labels=[int(val.labels[r]) for r in rows],
                    seed=protocol.generated_seed * 1_000_003 + 500_000 + i,
                    context=[val.continuous[rows, :, : ec.context_frames]] if continuous
                    else [a[rows, : ec.context_frames] for a in val.scales],
                )
            )  # fmt: skip
    # Samples follow the class mix of the drawn real clips, cycling when there are more.
    labels = [int(val.labels[drawn[i % len(drawn)]]) for i in range(protocol.generated_videos)]
    for i, chunk in enumerate(batches(labels, ec.batch_size)):
        first = i * ec.batch_size
        units.append(
            EvalUnit(
                name=f"gen-{i:03d}", kind="gen", labels=chunk,
                seed=protocol.generated_seed * 1_000_003 + i,
                keep_videos=max(0, min(len(chunk), ec.sample_videos - first)),
            )
        )  # fmt: skip
    fps = float(dataset.rows[0].get("fps", 8.0)) if dataset.rows else 8.0
    return EvalPlan(units=units, classes=classes, fps=fps, val_clips=val, held_out=len(val))


def evaluation_digest(target: EvalTarget, ec: EvaluateConfig) -> str:
    """Hash of everything that decides the evaluation's numbers (not how it is run)."""
    decides = ec.model_dump(
        mode="json",
        include={"fvd", "context_frames", "frame_prediction", "cfg_scale", "temperature", "top_k",
                 "ode_steps", "batch_size", "sample_videos"},
    )  # fmt: skip
    identity = [target.pinned, target.lineage.model_dump(mode="json"), decides, WEIGHTS_SHA256]
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- running --------------------------------------------------------------------------------------


def _run_units(
    config: ArvidConfig,
    target: EvalTarget,
    plan: EvalPlan,
    pending: list[EvalUnit],
    output: ShardedOutput[UnitRecord],
) -> dict[str, UnitRecord]:
    """Run the pending units on Ray actors, publishing each as it finishes; their records."""
    import ray

    from tasks.evaluate.units import UnitResult, unit_shard
    from tasks.evaluate.worker import EvalWorker

    ec = config.evaluate
    checkpoint = ensure_i3d_weights(ec.i3d)
    with tempfile.TemporaryDirectory(prefix="arvid-eval-") as tmp:
        model = registry.resolve_model(target.pinned, Path(tmp) / "generator", kind="generator")
        generator_files = read_model_files(model.directory)
        _, tokenizer_dir = resolve_tokenizer(target.lineage.tokenizer, Path(tmp) / "tokenizer")
        tokenizer_files = read_model_files(tokenizer_dir)
    started_ray = not ray.is_initialized()
    ensure_ray(config.ray)
    try:
        count = _actor_count(ec, len(pending))
        actor_class = ray.remote(
            num_cpus=ec.actor_num_cpus, num_gpus=1 if ec.use_gpu else 0, max_restarts=1
        )(EvalWorker)
        i3d_ref = ray.put(checkpoint.read_bytes())
        sampling = SamplingOptions(ec.cfg_scale, ec.temperature, ec.top_k, ec.ode_steps)
        actors = [
            actor_class.remote(
                generator_files,
                tokenizer_files,
                i3d_ref,
                target.lineage,
                ec.fvd,
                sampling,
                config.storage,
                "cuda" if ec.use_gpu else "cpu",
                ec.threads_per_actor,
            )  # fmt: skip
            for _ in range(count)
        ]
        log.info("evaluate: %d Ray actor(s) loading the generator, tokenizer and I3D", count)
        published: dict[str, UnitRecord] = {}
        queue = deque(pending)
        running: dict[ray.ObjectRef, tuple[object, EvalUnit, float]] = {}
        idle = list(actors)
        finished, total, started = 0, len(pending), time.perf_counter()
        while queue or running:
            while idle and queue:
                actor, unit = idle.pop(), queue.popleft()
                running[actor.run.remote(unit)] = (actor, unit, time.perf_counter())
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, unit, began = running.pop(ready[0])
            result: UnitResult = ray.get(ready[0])
            record = UnitRecord(
                format=1, kind=unit.kind, count=len(result.features), values=result.values,
                seconds=result.seconds, steps=result.steps,
            )  # fmt: skip
            published[unit.name] = output.publish(
                output.unit_id([unit.name], ""), unit_shard(result), record
            )
            finished += 1
            idle.append(actor)
            if ec.progress:
                log.info(
                    "evaluate: %d/%d units (%s, %d videos, %.1f s; %.0f s so far)",
                    finished, total, unit.name, record.count, time.perf_counter() - began,
                    time.perf_counter() - started,
                )  # fmt: skip
    finally:
        if started_ray:
            ray.shutdown()
    return published


def _actor_count(ec: EvaluateConfig, units: int) -> int:
    import ray

    if ec.num_actors is not None:
        return min(ec.num_actors, units)
    resources = ray.cluster_resources()
    if ec.use_gpu:
        slots = int(resources.get("GPU", 0))
        if slots == 0:
            raise ValueError("evaluate.use_gpu is set but the Ray cluster has no GPU")
    else:
        slots = int(resources.get("CPU", 1) // ec.actor_num_cpus)
    return max(1, min(slots, units))


# -- aggregating ----------------------------------------------------------------------------------


def aggregate(
    plan: EvalPlan,
    records: dict[str, UnitRecord | None],
    output: ShardedOutput[UnitRecord],
    protocol: FVDProtocol,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Every metric of the evaluation, and the kept sample videos (in order)."""
    stats = {kind: FeatureStats(NUM_CLASSES) for kind in ("bits", "real", "gen", "pred")}
    values: dict[str, list[float]] = {}
    kept: list[np.ndarray] = []
    gen_seconds, gen_videos, steps = 0.0, 0, 0
    for unit in plan.units:
        record = records[unit.name]
        if record is None:
            raise RuntimeError(f"evaluation unit {unit.name} did not complete — re-run to resume")
        features, videos = read_unit_shard(storage.join(output.root, record.shard))
        stats[unit.kind].update(features)
        for name, per_video in record.values.items():
            values.setdefault(name, []).extend(per_video)
        if unit.kind == "gen":
            gen_seconds += record.seconds
            gen_videos += record.count
            steps = record.steps
            if videos is not None:
                kept.append(videos)
    metrics = {name: float(np.mean(v)) for name, v in values.items()}
    metrics["fvd"] = compute_fvd(stats["real"], stats["gen"], protocol).fvd
    if stats["pred"].count:
        as_predicted = protocol.model_copy(update={"generated_videos": protocol.real_videos})
        metrics["fvd_frame_prediction"] = compute_fvd(
            stats["real"], stats["pred"], as_predicted
        ).fvd
    frames = plan.val_clips.scales[0].shape[1]  # latent frames; pixel frames below
    metrics["sampling_steps"] = float(steps)
    metrics["seconds_per_video"] = gen_seconds / gen_videos
    metrics["latent_frames_per_video"] = float(frames)
    samples = np.concatenate(kept) if kept else None
    if samples is not None:
        metrics["frames_per_second"] = samples.shape[1] / metrics["seconds_per_video"]
    return metrics, samples


# -- recording ------------------------------------------------------------------------------------


def _record(
    config: ArvidConfig,
    target: EvalTarget,
    plan: EvalPlan,
    digest: str,
    root: str,
    metrics: dict[str, float],
    samples: np.ndarray | None,
    done_before: int,
) -> EvaluationSummary:
    """Log the evaluation to MLflow and attach its metrics to the version (once per digest)."""
    from mlflow import MlflowClient

    ec = config.evaluate
    client = MlflowClient()
    version = client.get_model_version(target.model_name, target.version)
    summary = EvaluationSummary(
        model=target.pinned, model_name=target.model_name, version=target.version,
        digest=digest, output=root, metrics=metrics, real_videos=ec.fvd.real_videos,
        generated_videos=ec.fvd.generated_videos, units=len(plan.units),
        units_done_before=done_before, recorded_before=False, mlflow_run_id=None, samples=[],
        contact_sheet=None,
    )  # fmt: skip
    if version.tags.get(DIGEST_TAG) == digest:
        log.info("evaluate %s: the version carries this evaluation already", target.pinned)
        run_id = version.tags.get(RUN_TAG)
        samples = [a.path for a in client.list_artifacts(run_id, "samples")] if run_id else []
        return summary.model_copy(
            update={
                "recorded_before": True,
                "mlflow_run_id": run_id,
                "samples": samples,
                "contact_sheet": "contact_sheet.png" if samples else None,
            }
        )
    tags = {
        "arvid.step": "evaluate",
        "arvid.model": target.pinned,
        "arvid.dataset_version": target.lineage.dataset_version,
        "arvid.tokens_version": target.lineage.tokens_version,
        DIGEST_TAG: digest,
        "arvid.output": root,
    }
    params = {**ec.fvd.as_params(), "evaluate": ec.model_dump(mode="json", exclude={"fvd"})}
    name = f"evaluate-{target.model_name}-v{target.version}"
    with tracking.tracked_run(config.tracking, name, params, tags) as run:
        tracking.log_metrics(metrics)
        sample_paths, sheet = [], None
        if samples is not None:
            with tempfile.TemporaryDirectory(prefix="arvid-samples-") as tmp:
                names = [
                    f"sample-{i:02d}-{_class_name(plan.classes, label)}"
                    for i, label in enumerate(_gen_labels(plan)[: len(samples)])
                ]
                written = write_samples(samples, names, Path(tmp) / "samples", plan.fps)
                for path in written:
                    tracking.log_artifact(path, "samples")
                sheet_path = contact_sheet(samples, Path(tmp) / "contact_sheet.png")
                tracking.log_artifact(sheet_path)
            sample_paths = [f"samples/{p.name}" for p in written]
            sheet = "contact_sheet.png"
        run_id = run.info.run_id
    set_version_metrics(target.model_name, target.version, metrics)
    client.set_model_version_tag(target.model_name, target.version, DIGEST_TAG, digest)
    client.set_model_version_tag(target.model_name, target.version, RUN_TAG, run_id)
    return summary.model_copy(
        update={"mlflow_run_id": run_id, "samples": sample_paths, "contact_sheet": sheet}
    )


def _gen_labels(plan: EvalPlan) -> list[int]:
    return [label for unit in plan.units if unit.kind == "gen" for label in unit.labels]


def _class_name(classes: list[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else "unconditional"
