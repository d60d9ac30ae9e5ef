"""xent.metrics against scikit-learn (log_loss, brier_score_loss, calibration_curve) and, for
the temperature, against a brute-force grid of PyTorch's float64 cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

from xent.metrics import (
    brier_score,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    log_loss,
)


def _data(seed: int, n: int, C: int, scale: float = 3.0):
    """Random logits, their softmax, and labels drawn near the logits' argmax (so that the
    probabilities mean something) from a seeded generator."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, C)) * scale
    y = np.where(rng.random(n) < 0.7, z.argmax(axis=1), rng.integers(0, C, n))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return z, p / p.sum(axis=1, keepdims=True), y


@pytest.mark.parametrize("C", [3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_and_brier_match_sklearn_multiclass(C, seed):
    _, p, y = _data(seed, 500, C)
    labels = list(range(C))
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=labels), rel=1e-12)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p, labels=labels), rel=1e-12)


def test_binary_forms_match_sklearn():
    rng = np.random.default_rng(3)
    p1 = rng.random(400)
    y = (rng.random(400) < p1).astype(int)
    two = np.stack([1 - p1, p1], axis=1)
    assert brier_score(y, p1) == pytest.approx(brier_score_loss(y, p1), rel=1e-12)
    assert brier_score(y, two) == pytest.approx(brier_score_loss(y, p1), rel=1e-12)
    assert log_loss(y, p1) == pytest.approx(sk_log_loss(y, p1), rel=1e-12)
    assert log_loss(y, two) == pytest.approx(sk_log_loss(y, two), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_clips_as_sklearn_does(dtype):
    """Probabilities of exactly 0 and 1: clipped to [eps, 1 - eps] of the input's dtype."""
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, 0.25]], dtype=dtype)
    y = np.array([1, 1, 0])  # the first row's true class has probability 0
    expected = sk_log_loss(y, p, labels=[0, 1, 2])
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(log_loss(y, p))


def _ece_from_calibration_curve(correct: np.ndarray, confidence: np.ndarray, n_bins: int):
    """ECE from scikit-learn's calibration_curve (accuracy and confidence per non-empty bin);
    the bin counts are np.histogram's over the same edges, with values on an edge moved to
    the bin below (calibration_curve's bins are right-closed)."""
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins,
                                             strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.array([np.sum((confidence > a) & (confidence <= b)) + (
        np.sum(confidence == 0) if i == 0 else 0) for i, (a, b) in
        enumerate(zip(edges[:-1], edges[1:], strict=True))])
    counts = counts[counts > 0]
    assert len(counts) == len(prob_true)
    return float(np.sum(counts * np.abs(prob_true - prob_pred)) / len(confidence))


@pytest.mark.parametrize("n_bins", [15, 10, 4])
@pytest.mark.parametrize("C", [2, 4])
def test_ece_matches_calibration_curve(C, n_bins):
    _, p, y = _data(7 + C, 1000, C, scale=2.0)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(int)
    expected = _ece_from_calibration_curve(correct, confidence, n_bins)
    assert expected > 0.01  # a case where the answer is not trivially 0
    assert expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(expected, rel=1e-12)
    counts, accuracy, conf = calibration_bins(y, p, n_bins=n_bins)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins)
    np.testing.assert_allclose(accuracy[counts > 0], prob_true, rtol=1e-12)
    np.testing.assert_allclose(conf[counts > 0], prob_pred, rtol=1e-12)
    assert counts.sum() == len(y)
    if C == 2:  # the (N,) form is the same problem
        assert expected_calibration_error(y, p[:, 1], n_bins=n_bins) == pytest.approx(expected)


def test_ece_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # Confidence exactly 0.6 with 5 bins: bin (0.4, 0.6], as calibration_curve puts it.
    counts, _, _ = calibration_bins([0, 0], [[0.6, 0.4], [0.61, 0.39]], n_bins=5)
    assert counts.tolist() == [0, 0, 1, 1, 0]
    prob_true, _ = calibration_curve([1, 1], [0.6, 0.61], n_bins=5)
    assert len(prob_true) == 2


def _grid_minimum(z: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    zt = torch.tensor(z, dtype=torch.float64)
    if z.ndim == 1:
        yt = torch.tensor(y, dtype=torch.float64)
        losses = [F.binary_cross_entropy_with_logits(zt / t, yt).item() for t in grid]
    else:
        yt = torch.tensor(y)
        losses = [F.cross_entropy(zt / t, yt).item() for t in grid]
    i = int(np.argmin(losses))
    return float(grid[i]), float(losses[i])


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])  # underconfident, moderate, overconfident
def test_fit_temperature_finds_the_grid_minimum(scale):
    z, _, y = _data(11, 300, 4, scale=scale)
    grid = np.exp(np.linspace(np.log(0.02), np.log(50), 4001))  # steps of 0.2% in T
    t_grid, nll_grid = _grid_minimum(z, y, grid)
    t = fit_temperature(z, y)
    nll = F.cross_entropy(torch.tensor(z) / t, torch.tensor(y)).item()
    assert nll <= nll_grid + 1e-12
    assert t == pytest.approx(t_grid, rel=3e-3)


def test_fit_temperature_binary_logits():
    rng = np.random.default_rng(5)
    z = rng.normal(size=400) * 6
    y = (rng.random(400) < 1 / (1 + np.exp(-z / 3))).astype(int)  # true temperature 3
    grid = np.exp(np.linspace(np.log(0.1), np.log(30), 4001))
    t_grid, nll_grid = _grid_minimum(z, y.astype(float), grid)
    t = fit_temperature(z, y)
    nll = F.binary_cross_entropy_with_logits(torch.tensor(z) / t,
                                             torch.tensor(y, dtype=torch.float64)).item()
    assert nll <= nll_grid + 1e-12 and t == pytest.approx(t_grid, rel=3e-3)
    assert 2.0 < t < 4.5


def test_fit_temperature_separable_rows_hit_the_lower_bound():
    z = np.array([[5.0, 0.0], [0.0, 4.0]])  # all right: the NLL falls as T -> 0
    assert fit_temperature(z, [0, 1], bounds=(0.05, 20.0)) == 0.05
    assert fit_temperature(z, [1, 0], bounds=(0.05, 20.0)) == 20.0  # all wrong: T -> inf


@pytest.mark.parametrize("call, match", [
    (lambda: log_loss([0, 1], [[0.5, 0.5]]), r"shape \(1,\)"),
    (lambda: log_loss([0, 3], [[0.5, 0.5], [0.5, 0.5]]), "0..1 for 2 classes"),
    (lambda: brier_score([0, 1], [[0.5, np.nan], [0.5, 0.5]]), r"\[0, 1\]"),
    (lambda: expected_calibration_error([0], [[1.0, 0.0]], n_bins=0), "positive integer"),
    (lambda: fit_temperature([[np.inf, 0.0]], [0]), "finite"),
    (lambda: fit_temperature(np.zeros((0, 3)), []), "N >= 1"),
    (lambda: log_loss([0.5, 1], [0.2, 0.3]), "integer class indices"),
])
def test_bad_input_says_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
