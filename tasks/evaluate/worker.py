"""The evaluation worker: holds the generator, its tokenizer and I3D (loaded once per actor) and
turns one unit of work into feature rows and per-video scores."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.eval.fvd import i3d_logits, to_i3d_input
from models.eval.i3d import NUM_CLASSES
from models.tokenizer.metrics import psnr, ssim
from tasks import storage
from tasks.data.clips import clip_tensor, iter_shard
from tasks.data.video import decode_clip
from tasks.evaluate.config import FVDProtocol
from tasks.evaluate.sampling import SamplingOptions, sample_tokens
from tasks.evaluate.units import ClipRef, EvalUnit, UnitResult
from tasks.pretrain.lineage import GeneratorLineage

I3D_BATCH = 4  # 1.5x the clips/s of batch 1 on the CPU (bench/results/evaluate.json)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, as a decoder would write pixels."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).cpu().numpy()


def context_pixel_frames(context_latent_frames: int, temporal_factor: int) -> int:
    """Pixel frames covered by the first latent frames (the first latent frame stands alone)."""
    return 1 + (context_latent_frames - 1) * temporal_factor


class EvalWorker:
    """One Ray actor's models; `run(unit)` does a unit of any kind."""

    def __init__(
        self,
        generator_files: dict[str, bytes],
        tokenizer_files: dict[str, bytes],
        i3d_checkpoint: bytes,
        lineage: GeneratorLineage,
        protocol: FVDProtocol,
        sampling: SamplingOptions,
        settings: storage.StorageSettings,
        device: str = "cpu",
        threads: int = 1,
    ) -> None:
        from models.eval.checkpoint import load_numpy_pickle
        from models.eval.i3d import InceptionI3d, load_flax_variables
        from models.generator.persist import load_generator_from_dir
        from tasks.tokenize.tokenizer_ref import load_from_files

        torch.set_num_threads(threads)
        storage.configure_storage(settings)
        self.device = torch.device(device)
        self.lineage = lineage
        self.protocol = protocol
        self.sampling = sampling
        self._dir = tempfile.TemporaryDirectory(prefix="arvid-eval-")
        folder = Path(self._dir.name)
        (folder / "generator").mkdir()
        for name, data in generator_files.items():
            (folder / "generator" / name).write_bytes(data)
        self.generator = load_generator_from_dir(folder / "generator", device=self.device).eval()
        self.tokenizer = load_from_files(tokenizer_files, folder / "tokenizer", device).eval()
        i3d = load_flax_variables(InceptionI3d(), load_numpy_pickle(i3d_checkpoint))
        self.i3d = i3d.to(self.device, memory_format=torch.channels_last_3d).eval()
        self.latent_shape = self.tokenizer.latent_shape(
            lineage.frames, lineage.resolution, lineage.resolution
        )

    def ready(self) -> int:
        """The actor's pid, once its models are loaded."""
        return os.getpid()

    @torch.inference_mode()
    def run(self, unit: EvalUnit) -> UnitResult:
        """Score one unit."""
        if unit.kind == "bits":
            return self._bits(unit)
        if unit.kind == "real":
            return self._real(unit)
        if unit.kind == "gen":
            return self._generated(unit)
        return self._predicted(unit)

    # -- the four kinds -----------------------------------------------------------------------
    def _bits(self, unit: EvalUnit) -> UnitResult:
        """Held-out bits/token of whole clips, teacher-forced, as pretraining's validation."""
        from models.generator.schedules import build_schedule
        from models.generator.videoar import VideoAR

        scales = [torch.from_numpy(np.array(a)).to(self.device) for a in unit.context or []]
        labels = torch.tensor(unit.labels, device=self.device)
        started = time.perf_counter()
        if isinstance(self.generator, VideoAR):
            logits, targets = self.generator(scales, labels, perturb=False)
        else:
            schedule = build_schedule(self.lineage.schedule_config, self.latent_shape).to(
                self.device
            )
            targets = schedule.tokens_to_sequence(scales[0])
            inputs = schedule.input_ids(targets, self.generator.config.vocab_size)
            logits = self.generator(inputs, schedule.coords, schedule.group, labels)
        nats = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), targets, reduction="none"
        ).mean(dim=1)
        return UnitResult(
            name=unit.name,
            features=np.zeros((0, NUM_CLASSES), np.float32),
            values={"val_bits_per_token": (nats / math.log(2.0)).tolist()},
            seconds=time.perf_counter() - started,
        )

    def _real(self, unit: EvalUnit) -> UnitResult:
        video = self._clips(unit.clips)
        started = time.perf_counter()
        encoding = self.tokenizer.encode(video)
        reconstruction = self.tokenizer.decode(encoding.quantized).clamp(-1, 1)
        seconds = time.perf_counter() - started
        return UnitResult(
            name=unit.name,
            features=self._features(to_uint8_frames(video), unit.name),
            values={
                "tokenizer_psnr": psnr(reconstruction, video).tolist(),
                "tokenizer_ssim": ssim(reconstruction, video).tolist(),
            },
            seconds=seconds,
        )

    def _generated(self, unit: EvalUnit) -> UnitResult:
        labels = torch.tensor(unit.labels, device=self.device)
        started = time.perf_counter()
        sample = sample_tokens(
            self.generator, self.latent_shape, labels, self.sampling,
            self.lineage.schedule_config, unit.seed,
        )  # fmt: skip
        frames = to_uint8_frames(self.tokenizer.decode_indices(sample.indices))
        seconds = time.perf_counter() - started
        return UnitResult(
            name=unit.name,
            features=self._features(frames, unit.name),
            values={},
            seconds=seconds,
            steps=sample.steps,
            videos=frames[: unit.keep_videos] if unit.keep_videos else None,
        )

    def _predicted(self, unit: EvalUnit) -> UnitResult:
        real = self._clips(unit.clips)
        labels = torch.tensor(unit.labels, device=self.device)
        context = [torch.from_numpy(np.array(c)).to(self.device) for c in unit.context or []]
        started = time.perf_counter()
        sample = sample_tokens(
            self.generator, self.latent_shape, labels, self.sampling,
            self.lineage.schedule_config, unit.seed, context=context,
        )  # fmt: skip
        predicted = self.tokenizer.decode_indices(sample.indices).clamp(-1, 1)
        seconds = time.perf_counter() - started
        given = context_pixel_frames(context[0].shape[1], self.tokenizer.temporal_factor)
        future, target = predicted[:, :, given:], real[:, :, given:]
        repeated = real[:, :, given - 1 : given].expand_as(target)
        return UnitResult(
            name=unit.name,
            features=self._features(to_uint8_frames(predicted), unit.name),
            values={
                "prediction_psnr": psnr(future, target).tolist(),
                "prediction_ssim": ssim(future, target).tolist(),
                "repeat_last_frame_psnr": psnr(repeated, target).tolist(),
                "repeat_last_frame_ssim": ssim(repeated, target).tolist(),
            },
            seconds=seconds,
            steps=sample.steps,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _clips(self, clips: list[ClipRef]) -> torch.Tensor:
        """The held-out clips at the model's shape, (n, 3, T, H, W) in [-1, 1] (center crop)."""
        wanted: dict[str, list[str]] = {}
        for clip in clips:
            wanted.setdefault(clip.shard_uri, []).append(clip.key)
        found: dict[str, torch.Tensor] = {}
        for shard, keys in wanted.items():
            for metadata, mp4 in iter_shard(shard):
                if metadata["key"] in keys:
                    frames = decode_clip(mp4)
                    found[metadata["key"]] = clip_tensor(
                        frames, self.lineage.resolution, self.lineage.frames
                    )
        missing = [c.key for c in clips if c.key not in found]
        if missing:
            raise ValueError(
                f"held-out clips {missing[:3]} are not in their dataset shards any more — "
                "the dataset version the generator was trained on changed; re-ingest or retrain"
            )
        return torch.stack([found[c.key] for c in clips]).to(self.device)

    def _features(self, frames: np.ndarray, name: str) -> np.ndarray:
        """I3D logits of uint8 videos under the protocol (range checked in i3d_logits)."""
        protocol = self.protocol
        rows = []
        for start in range(0, len(frames), I3D_BATCH):  # activations at 224² grow fast with batch
            video = to_i3d_input(
                frames[start : start + I3D_BATCH], protocol.frames, protocol.resolution,
                protocol.resize, protocol.start_frame,
            )  # fmt: skip
            rows.append(i3d_logits(self.i3d, video, f"{name} videos {start}..").cpu().numpy())
        return np.concatenate(rows)
