"""Weightless yardsticks for held-out bits per token, fitted on training tokens only.

On tiny data a trained model can look good while a counting baseline is better; pretraining's
"learning, not just running" goal is stated against the better of these two:
- unigram: the training tokens' frequencies (add-one smoothed);
- copy-previous + unigram: a token repeats the one at the same position (same scale) in the
  previous latent frame with probability λ, else follows the unigram; λ is fitted on the training
  tokens; first frames fall back to the unigram.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.pretrain.tokens import TokenClips


def unigram(train: TokenClips, vocab_size: int) -> np.ndarray:
    """(V,) add-one smoothed token probabilities of the training clips."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for ids in train.scales:
        counts += np.bincount(ids.ravel(), minlength=vocab_size)[:vocab_size]
    return (counts + 1.0) / (counts.sum() + vocab_size)


def _copy_stats(clips: TokenClips, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(unigram prob, copy indicator) of every token that has a previous frame; count of the rest."""
    p, hit, first_frame = [], [], 0
    for ids in clips.scales:  # (N, T, h, w)
        current, previous = ids[:, 1:], ids[:, :-1]
        p.append(probs[current].ravel())
        hit.append((current == previous).ravel())
        first_frame += ids[:, :1].size
    return np.concatenate(p), np.concatenate(hit), first_frame


def _first_frame_log2(clips: TokenClips, probs: np.ndarray) -> float:
    return float(sum(np.log2(probs[ids[:, 0]]).sum() for ids in clips.scales))


def fit_copy_weight(train: TokenClips, probs: np.ndarray) -> float:
    """λ that maximises the training likelihood of the copy-previous + unigram mixture."""
    p, hit, _ = _copy_stats(train, probs)
    weights = np.linspace(0.0, 0.999, 1000)
    # log-likelihood per λ: Σ log(λ·hit + (1-λ)·p), evaluated on the distinct (hit, p) pairs
    values, counts = np.unique(np.stack([hit.astype(np.float64), p]), axis=1, return_counts=True)
    ll = [(counts * np.log(w * values[0] + (1 - w) * values[1])).sum() for w in weights]
    return float(weights[int(np.argmax(ll))])


def bits_per_token(clips: TokenClips, probs: np.ndarray, copy_weight: float = 0.0) -> float:
    """Mean bits per token of `clips` under the unigram (copy_weight 0) or the mixture."""
    p, hit, first = _copy_stats(clips, probs)
    total = -np.log2(copy_weight * hit + (1 - copy_weight) * p).sum()
    total -= _first_frame_log2(clips, probs)
    return float(total / (p.size + first))


def baseline_report(train: TokenClips, val: TokenClips, vocab_size: int) -> dict[str, float]:
    """Held-out bits/token of both baselines, the fitted λ, and the better of the two."""
    probs = unigram(train, vocab_size)
    weight = fit_copy_weight(train, probs)
    report = {
        "unigram_bits_per_token": bits_per_token(val, probs),
        "copy_previous_bits_per_token": bits_per_token(val, probs, weight),
        "copy_weight": weight,
    }
    report["best_baseline_bits_per_token"] = min(
        report["unigram_bits_per_token"], report["copy_previous_bits_per_token"]
    )
    report["uniform_bits_per_token"] = math.log2(vocab_size)
    return report
