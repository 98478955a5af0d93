import math

import numpy as np

from tasks.pretrain.baselines import baseline_report, bits_per_token, fit_copy_weight, unigram
from tasks.pretrain.tokens import TokenClips


def _clips(ids: np.ndarray) -> TokenClips:
    return TokenClips(
        keys=[str(i) for i in range(len(ids))], scales=[ids], labels=np.zeros(len(ids), np.int64)
    )


def test_unigram_bits_match_a_hand_computed_entropy():
    train = _clips(np.array([[[[0, 0], [1, 1]]]]))  # one clip, one frame: tokens 0,0,1,1
    probs = unigram(train, vocab_size=4)  # add-one: (3, 3, 1, 1) / 8
    assert np.allclose(probs, [3 / 8, 3 / 8, 1 / 8, 1 / 8])
    assert math.isclose(bits_per_token(train, probs), -math.log2(3 / 8))


def test_frames_that_repeat_are_cheap_under_the_copy_mixture_and_its_weight_is_fitted():
    rng = np.random.default_rng(0)
    first = rng.integers(0, 64, size=(20, 1, 4, 4))
    static = _clips(np.repeat(first, 5, axis=1))  # every frame repeats the first
    probs = unigram(static, 64)
    weight = fit_copy_weight(static, probs)
    assert weight > 0.99
    assert bits_per_token(static, probs, weight) < 0.3 * bits_per_token(static, probs)

    noise = _clips(rng.integers(0, 64, size=(20, 5, 4, 4)))  # no frame repeats its predecessor
    assert fit_copy_weight(noise, unigram(noise, 64)) < 0.05


def test_report_names_the_better_baseline():
    rng = np.random.default_rng(1)
    first = rng.integers(0, 16, size=(10, 1, 2, 2))
    data = _clips(np.repeat(first, 3, axis=1))
    report = baseline_report(data, data, 16)
    assert report["best_baseline_bits_per_token"] == report["copy_previous_bits_per_token"]
    assert report["uniform_bits_per_token"] == 4.0
