"""The evaluation worker on a plain (schedule-driven) generator, in process: samples through the
recorded schedule, and held-out bits/token equal a full teacher-forced forward's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.generator.config import GeneratorConfig, ScheduleConfig
from models.generator.persist import save_generator
from models.generator.schedules import build_schedule
from models.generator.transformer import Generator
from models.tokenizer import save_tokenizer
from tasks.evaluate.config import FVDProtocol
from tasks.evaluate.i3d_weights import ensure_i3d_weights
from tasks.evaluate.sampling import SamplingOptions
from tasks.evaluate.units import EvalUnit
from tasks.evaluate.worker import EvalWorker
from tasks.pretrain.lineage import GeneratorLineage
from tasks.storage import StorageSettings
from tasks.tokenize.tokenizer_ref import read_model_files
from tests.tasks.tokenize.support import tiny_tokenizer

SCHEDULE = ScheduleConfig(name="frame")


@pytest.fixture(scope="module")
def worker(tmp_path_factory, i3d_model) -> EvalWorker:
    root = tmp_path_factory.mktemp("eval-worker")
    tokenizer = tiny_tokenizer()  # single-scale FSQ
    save_tokenizer(tokenizer, root / "tokenizer")
    torch.manual_seed(0)
    vocab = math.prod(tokenizer.config.levels)
    generator = Generator(GeneratorConfig(vocab_size=vocab, num_classes=2, n_layer=1, n_head=2,
                                          n_embd=32))  # fmt: skip
    save_generator(generator, root / "generator")
    lineage = GeneratorLineage(
        dataset_uri="unused", dataset_version="v", tokenizer="unused", tokens_uri="unused",
        tokens_version="t", val_shards=1, resolution=16, frames=17, schedule="frame",
        schedule_config=SCHEDULE, run_key="k",
    )  # fmt: skip
    return EvalWorker(
        read_model_files(root / "generator"), read_model_files(root / "tokenizer"),
        ensure_i3d_weights().read_bytes(), lineage, FVDProtocol(real_videos=2, generated_videos=2),
        SamplingOptions(), StorageSettings(),
    )  # fmt: skip


@pytest.mark.slow
def test_a_frame_schedule_generator_samples_one_step_per_latent_frame(worker: EvalWorker):
    result = worker.run(EvalUnit(name="gen-000", kind="gen", labels=[0, 1], seed=3, keep_videos=1))
    assert result.steps == 5  # 17 frames -> 5 latent frames, one group each
    assert result.features.shape == (2, 400) and np.isfinite(result.features).all()
    assert result.videos.shape == (1, 17, 16, 16, 3) and result.videos.dtype == np.uint8
    again = worker.run(EvalUnit(name="gen-000", kind="gen", labels=[0, 1], seed=3, keep_videos=1))
    assert np.array_equal(again.videos, result.videos)  # seeded: the same samples


def test_held_out_bits_equal_a_full_teacher_forced_forward(worker: EvalWorker):
    grid = worker.latent_shape
    ids = torch.randint(0, worker.generator.config.vocab_size, (3, *grid))
    labels = [0, 1, 0]
    unit = EvalUnit(name="bits-000", kind="bits", labels=labels, context=[ids.numpy()])
    bits = worker.run(unit).values["val_bits_per_token"]
    schedule = build_schedule(SCHEDULE, grid)
    targets = schedule.tokens_to_sequence(ids)
    with torch.no_grad():
        logits = worker.generator(
            schedule.input_ids(targets, worker.generator.config.vocab_size), schedule.coords,
            schedule.group, torch.tensor(labels),
        )  # fmt: skip
    nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert float(np.mean(bits)) == pytest.approx(float(nats) / math.log(2.0), rel=1e-5)
