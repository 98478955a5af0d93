"""Fixed-shape decoding steps (static, compiled, CUDA graphs) against the eager loop."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.generator.config import LongContextConfig
from models.generator.sampling import generate
from models.generator.schedules import par
from models.generator.static_decode import StaticDecoder, decoder_for
from models.generator.videoar import generate_videoar
from tests.models.generator.test_transformer import every_schedule, tiny_model
from tests.models.generator.test_videoar import make_model

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
# Attention over the whole cache with unwritten rows masked sums in another order than over the
# written rows alone: logits agree to float32 rounding, not bit for bit; tokens agree exactly.
LOGITS_ATOL = 5e-5


def sample(model, schedule, decode, cfg_scale=None, seed=0, **kwargs):
    return generate(
        model, schedule, torch.tensor([0, 3]), cfg_scale=cfg_scale, decode=decode,
        generator=torch.Generator(model.head.weight.device).manual_seed(seed),
        return_logits=True, **kwargs,
    )  # fmt: skip


def sample_videoar(model, decode, cfg_scale=None, frames=3, **kwargs):
    device = model.generator.head.weight.device
    return generate_videoar(
        model, frames, torch.tensor([0, 2], device=device), cfg_scale=cfg_scale, decode=decode,
        generator=torch.Generator(device).manual_seed(1), return_logits=True, **kwargs,
    )  # fmt: skip


def assert_same_sample(replayed, eager) -> None:
    if hasattr(eager, "tokens"):
        assert torch.equal(replayed.tokens, eager.tokens)
    else:
        assert all(torch.equal(a, b) for a, b in zip(replayed.indices, eager.indices, strict=True))
    assert replayed.steps == eager.steps
    torch.testing.assert_close(replayed.logits, eager.logits, atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("cfg_scale", [None, 2.5])
@pytest.mark.parametrize("schedule", every_schedule(), ids=lambda s: s.name)
def test_static_steps_give_the_eager_tokens_and_logits_for_every_schedule(schedule, cfg_scale):
    model = tiny_model(seed=1)
    eager = sample(model, schedule, "eager", cfg_scale)
    static = sample(model, schedule, "static", cfg_scale)
    assert_same_sample(static, eager)


def test_static_steps_keep_given_context_frames_and_match_eager():
    model = tiny_model(seed=4)
    schedule = par((3, 4, 4), 4)
    context = torch.randint(0, model.config.vocab_size, (2, 1, 4, 4))
    eager = sample(model, schedule, "eager", 2.0, context=context)
    static = sample(model, schedule, "static", 2.0, context=context)
    assert torch.equal(static.tokens[:, :1], context)
    assert_same_sample(static, eager)


@pytest.mark.parametrize("cfg_scale", [None, 2.0])
@pytest.mark.parametrize("frame_context", ["full", "pooled"])
def test_static_steps_give_the_eager_videoar_sample(frame_context, cfg_scale):
    model = make_model(frame_context=frame_context)
    assert_same_sample(
        sample_videoar(model, "static", cfg_scale), sample_videoar(model, "eager", cfg_scale)
    )


def test_static_steps_follow_long_context_eviction_and_given_frames():
    model = make_model(long_context=LongContextConfig(window=1, keep_scales=2))
    context = [torch.randint(0, 16, (2, 2, h, w)) for h, w in model.shapes]
    eager = sample_videoar(model, "eager", 2.0, frames=5, context=context)
    static = sample_videoar(model, "static", 2.0, frames=5, context=context)
    assert static.max_cache_len == eager.max_cache_len < model.layout(5).num_positions + 1
    assert_same_sample(static, eager)


def test_one_step_is_built_per_group_size_and_reused_across_runs():
    model = tiny_model(seed=2)
    schedule = par((2, 4, 4), 4)  # groups of 1 (the first tokens of the regions) and of 4
    sample(model, schedule, "static")
    decoder = decoder_for(model, 2, schedule.num_tokens, "static")
    assert decoder.group_sizes == [1, 4]
    sample(model, schedule, "static", seed=5)
    assert decoder_for(model, 2, schedule.num_tokens, "static") is decoder
    model.double()  # weights at new addresses: a captured step would read freed memory
    assert decoder_for(model, 2, schedule.num_tokens, "static") is not decoder


# Ops that read a tensor's values on the host (.item(), bool(), int()) or whose output shape
# depends on them (nonzero, unique): each one a device sync on a GPU. Boolean indexing runs its
# nonzero below the dispatcher on the CPU, so only the CUDA test below sees it.
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_consecutive.default,
}


class ScalarReads(TorchDispatchMode):
    """Counts the ops in HOST_READS run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_static_decoding_reads_no_tensor_value_on_the_host_per_step():
    model, videoar = tiny_model(seed=3), make_model()
    reads = {}
    for frames in (1, 3):
        schedule = par((frames, 4, 4), 4)
        sample(model, schedule, "static", 2.0)  # warm-up: layouts, decoders
        sample_videoar(videoar, "static", 2.0, frames=frames)
        with ScalarReads() as generate_reads:
            sample(model, schedule, "static", 2.0)
        with ScalarReads() as videoar_reads:
            sample_videoar(videoar, "static", 2.0, frames=frames)
        reads[frames] = (generate_reads.count, videoar_reads.count)
    assert reads[1] == reads[3]  # 7 vs 21 steps (generate), 3 vs 9 (VideoAR): none per step
    with ScalarReads() as eager_reads:
        sample(model, par((3, 4, 4), 4), "eager", 2.0)
    assert eager_reads.count > reads[3][0]  # the check sees the eager loop's per-step reads


def test_cuda_graph_decoding_is_refused_off_cuda_with_the_remedy():
    with pytest.raises(ValueError, match="decode='static' or 'compiled'"):
        StaticDecoder(tiny_model(), 1, 8, "graph")
    with pytest.raises(ValueError, match="choose one of"):
        sample(tiny_model(), par((1, 4, 4), 4), "replayed")


@pytest.mark.slow  # torch.compile of two step shapes: minutes on 2 shared cores
def test_compiled_steps_give_the_eager_sample():
    model = tiny_model(seed=5)
    schedule = par((2, 4, 4), 4)
    assert_same_sample(
        sample(model, schedule, "compiled", 2.0), sample(model, schedule, "eager", 2.0)
    )


def cuda_syncs(run) -> int:
    """Host syncs a CUDA run makes (torch's sync debug mode warns on each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("decode", ["graph", "compiled"])
@pytest.mark.parametrize("cfg_scale", [None, 2.0])
@pytest.mark.parametrize("name", ["ntp", "par4", "frame"])
def test_replayed_cuda_steps_give_the_eager_sample_without_syncs_per_step(name, cfg_scale, decode):
    model = tiny_model(seed=6).cuda()
    schedules = {s.name: s for s in every_schedule()}
    eager = sample(model, schedules[name], "eager", cfg_scale)
    assert_same_sample(sample(model, schedules[name], decode, cfg_scale), eager)
    short = {s.name: s for s in every_schedule((1, 4, 4))}[name]
    sample(model, short, decode, cfg_scale)  # captures this batch's steps
    syncs = [
        cuda_syncs(lambda s=s: sample(model, s, decode, cfg_scale))
        for s in (short, schedules[name])
    ]
    assert syncs[0] == syncs[1]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("decode", ["graph", "compiled"])
def test_replayed_cuda_steps_give_the_eager_videoar_sample(decode):
    model = make_model(long_context=LongContextConfig(window=1, keep_scales=2)).cuda()
    assert_same_sample(
        sample_videoar(model, decode, 2.0, frames=4), sample_videoar(model, "eager", 2.0, frames=4)
    )
