"""The group-causal transformer: KV-cache decoding, leakage, RoPE and attention backends."""

import pytest
import torch

from models.generator import Generator, GeneratorConfig
from models.generator.schedules import frame, nbp, ntp, par

VOCAB = 64
GRID = (2, 4, 4)


def tiny_model(seed: int = 0, **overrides) -> Generator:
    """A 2-layer, 32-wide generator in eval mode, with weights large enough that bugs show."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB, num_classes=5, n_layer=2, n_head=2, n_embd=32, max_learned_inputs=16
    )
    config = GeneratorConfig(**(settings | overrides))
    model = Generator(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def every_schedule(grid=GRID):
    """One instance of each schedule kind over ``grid``."""
    T, H, W = grid
    return [
        ntp(grid),
        nbp(grid, (1, 1, W)),
        nbp(grid, (1, H, W)),
        nbp(grid, (2, 2, 2)),
        par(grid, 4),
        frame(grid),
        nbp(grid, (1, 1, W), hybrid_prefix=W),
        par(grid, 4, prefix="clip"),
    ]


def full_forward(model, schedule, sequence, labels, **kwargs):
    """Teacher-forced logits (B, N, V) for targets ``sequence`` in schedule order."""
    inputs = schedule.input_ids(sequence, model.config.vocab_size)
    return model(inputs, schedule.coords, schedule.group, labels, **kwargs)


def cached_forward(model, schedule, sequence, labels, first_chunk_groups=1):
    """The same logits, one group per forward over a KV cache (the first chunk may hold more)."""
    cache = model.new_cache(sequence.shape[0], schedule.num_tokens)
    bounds = [schedule.group_bounds(g) for g in range(schedule.num_steps)]
    chunks = [(0, bounds[first_chunk_groups - 1][1])] + bounds[first_chunk_groups:]
    outs = []
    for start, end in chunks:
        ids = schedule.input_ids(sequence, model.config.vocab_size, start, end)
        outs.append(
            model(
                ids,
                schedule.coords[start:end],
                schedule.group[start:end],
                labels if start == 0 else None,
                cache=cache,
                start=start,
            )
        )
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("schedule", every_schedule(), ids=lambda s: s.name)
def test_kv_cache_logits_match_full_forward_for_every_schedule(schedule):
    model = tiny_model()
    sequence = torch.randint(0, VOCAB, (3, schedule.num_tokens))
    labels = torch.tensor([0, 4, model.null_class])
    with torch.no_grad():
        full = full_forward(model, schedule, sequence, labels)
        stepwise = cached_forward(model, schedule, sequence, labels)
    assert full.shape == (3, schedule.num_tokens, VOCAB)
    torch.testing.assert_close(stepwise, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "schedule", every_schedule()[:2] + every_schedule()[-2:], ids=lambda s: s.name
)
def test_kv_cache_prefill_of_several_groups_matches_full_forward(schedule):
    model = tiny_model(seed=1)
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        full = full_forward(model, schedule, sequence, labels)
        prefilled = cached_forward(model, schedule, sequence, labels, first_chunk_groups=3)
    torch.testing.assert_close(prefilled, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule", every_schedule(), ids=lambda s: s.name)
def test_changing_group_g_changes_no_logits_of_groups_up_to_g(schedule):
    model = tiny_model(seed=2)
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        base = full_forward(model, schedule, sequence, labels)
        for g in range(schedule.num_steps):
            start, end = schedule.group_bounds(g)
            changed = sequence.clone()
            changed[:, start:end] = (changed[:, start:end] + 1) % VOCAB
            logits = full_forward(model, schedule, changed, labels)
            torch.testing.assert_close(logits[:, :end], base[:, :end], atol=1e-6, rtol=0)
            if (
                end < schedule.num_tokens
            ):  # the change must reach the next group, or we tested nothing
                assert (logits[:, end:] - base[:, end:]).abs().max() > 1e-3


def test_logits_follow_target_coordinates_not_sequence_index():
    # Inside a group attention is full, so shuffling the positions of one group together with
    # their inputs and coordinates must only shuffle its logits; a model that rotated by the
    # sequence index would change them.
    model = tiny_model(seed=3)
    schedule = nbp(GRID, (1, 4, 4))
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([0, 1])
    inputs = schedule.input_ids(sequence, VOCAB)
    start, end = schedule.group_bounds(1)
    perm = torch.arange(schedule.num_tokens)
    perm[start:end] = start + torch.randperm(
        end - start, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        base = model(inputs, schedule.coords, schedule.group, labels)
        shuffled = model(inputs[:, perm], schedule.coords[perm], schedule.group[perm], labels)
        moved = model(
            inputs, schedule.coords + torch.tensor([0.0, 1.0, 0.0]), schedule.group, labels
        )
    torch.testing.assert_close(shuffled, base[:, perm], atol=1e-5, rtol=0)
    assert (moved - base).abs().max() > 1e-3  # coordinates do reach the logits


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    "schedule", [nbp((3, 6, 10), (1, 1, 10)), par((3, 6, 10), 4)], ids=lambda s: s.name
)
def test_flex_attention_block_mask_matches_dense_mask_sdpa(schedule):
    # 1 + 180 positions: groups straddle FlexAttention's 128-token blocks and the tail is partial.
    model = tiny_model(seed=4)
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([2, model.null_class])
    with torch.no_grad():
        dense = full_forward(model, schedule, sequence, labels, backend="sdpa")
        flex = full_forward(model, schedule, sequence, labels, backend="flex")
    torch.testing.assert_close(flex, dense, atol=1e-4, rtol=0)


def test_precomputed_input_embeddings_give_the_same_logits_as_ids():
    model = tiny_model(seed=5)
    schedule = par(GRID, 4)
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([0, 1])
    ids = schedule.input_ids(sequence, VOCAB)
    with torch.no_grad():
        from_ids = model(ids, schedule.coords, schedule.group, labels)
        from_embeddings = model(model.input_embedding(ids), schedule.coords, schedule.group, labels)
    torch.testing.assert_close(from_embeddings, from_ids, atol=0, rtol=0)


def test_label_dropout_applies_only_in_training():
    model = tiny_model(seed=6, label_dropout=1.0)
    schedule = ntp(GRID)
    sequence = torch.randint(0, VOCAB, (2, schedule.num_tokens))
    labels = torch.tensor([1, 2])
    null = torch.full_like(labels, model.null_class)
    with torch.no_grad():
        labelled = full_forward(model, schedule, sequence, labels)
        unconditional = full_forward(model, schedule, sequence, null)
        model.train()
        dropped = full_forward(model, schedule, sequence, labels)
    torch.testing.assert_close(dropped, unconditional)
    assert (labelled - unconditional).abs().max() > 1e-3


def test_config_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="multiple of n_head"):
        GeneratorConfig(n_embd=100, n_head=3)


def test_paper_size_model_builds_without_allocating():
    with torch.device("meta"):
        model = Generator(GeneratorConfig(n_layer=24, n_embd=1536, n_head=16))
    assert 0.8e9 < model.num_params() < 0.95e9  # ~680M in blocks + two 64k-row embeddings


def test_kv_cache_refuses_to_leave_a_gap_or_overflow():
    model = tiny_model()
    cache = model.new_cache(1, 4)  # class token + 4 positions
    k = torch.zeros(1, 2, 2, 16)
    with pytest.raises(ValueError, match="gap"):
        cache.write(0, 1, k, k)
    cache.write(0, 0, k, k)
    cache.commit(2)
    with pytest.raises(ValueError, match="cannot take"):
        cache.write(0, 2, torch.zeros(1, 2, 4, 16), torch.zeros(1, 2, 4, 16))


def random_visibility(n: int, batch: int, seed: int) -> torch.Tensor:
    """(batch, n, n) bool: random hidden keys, a query always sees itself."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, n, n, generator=g) < 0.7) | torch.eye(n, dtype=torch.bool)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_visibility_hides_keys_alike_in_full_cached_and_flex_forward():
    model = tiny_model(seed=7)
    schedule = nbp(GRID, (1, 1, 4))
    n = schedule.num_tokens
    sequence = torch.randint(0, VOCAB, (2, n))
    labels = torch.tensor([0, 1])
    visibility = random_visibility(n, 2, seed=0)
    with torch.no_grad():
        plain = full_forward(model, schedule, sequence, labels)
        full = full_forward(model, schedule, sequence, labels, visibility=visibility)
        flex = full_forward(
            model, schedule, sequence, labels, visibility=visibility, backend="flex"
        )
        cache = model.new_cache(2, n)
        chunks = []
        for g in range(schedule.num_steps):
            start, end = schedule.group_bounds(g)
            ids = schedule.input_ids(sequence, VOCAB, start, end)
            chunks.append(
                model(
                    ids,
                    schedule.coords[start:end],
                    schedule.group[start:end],
                    labels if start == 0 else None,
                    cache=cache,
                    start=start,
                    visibility=visibility[:, start:end, :end],
                )
            )
    assert (full - plain).abs().max() > 1e-3  # the hidden keys mattered
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-4, rtol=0)
    torch.testing.assert_close(flex, full, atol=1e-4, rtol=0)


def test_evicting_cache_rows_equals_hiding_those_keys():
    # Decode NTP; after position 5 evict positions 1 and 2 (cache rows 2 and 3): every later
    # logit must equal the full forward in which those keys are hidden from later queries.
    model = tiny_model(seed=8)
    schedule = ntp((1, 3, 4))
    n = schedule.num_tokens
    sequence = torch.randint(0, VOCAB, (1, n))
    labels = torch.tensor([2])
    visibility = torch.ones(1, n, n, dtype=torch.bool)
    visibility[:, 6:, 1:3] = False
    with torch.no_grad():
        full = full_forward(model, schedule, sequence, labels, visibility=visibility)
        cache = model.new_cache(1, n)
        stepwise = []
        for i in range(n):
            if i == 6:
                cache.keep(
                    torch.tensor([0, 1] + list(range(4, 7)))
                )  # class token, position 0, 3..5
            ids = schedule.input_ids(sequence, VOCAB, i, i + 1)
            stepwise.append(
                model(
                    ids,
                    schedule.coords[i : i + 1],
                    schedule.group[i : i + 1],
                    labels if i == 0 else None,
                    cache=cache,
                    start=i,
                )
            )
    assert cache.length == 1 + n - 2
    torch.testing.assert_close(torch.cat(stepwise, dim=1), full, atol=1e-4, rtol=0)
