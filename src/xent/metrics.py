r"""Calibration and probability metrics: ECE, Brier score, log loss, and temperature scaling.

A classifier is *calibrated* when, of the rows it gives confidence 0.8, 80% are right (Guo et
al., "On Calibration of Modern Neural Networks", ICML 2017). These functions measure that and fix
the commonest miscalibration by one scalar, the temperature :math:`T` that divides the logits.

Conventions shared by every function here:

- ``y_true`` holds class *indices* ``0..C-1``, shape ``(N,)`` (not arbitrary labels).
- ``proba`` is ``(N, C)`` class probabilities, or for a binary problem ``(N,)``, the
  probability of class 1 (then ``C = 2`` and the probability of class 0 is ``1 - p``).
- Everything is computed in float64 and returned as a Python ``float``.

Needs only NumPy (and xent's own softmax / sigmoid / cross-entropy); ``import xent.metrics``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._activations import sigmoid, softmax
from ._cross_entropy import nll_loss

__all__ = [
    "brier_score",
    "calibration_bins",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
]


def _labels(y_true: Any, n: int, C: int) -> np.ndarray:
    """``y_true`` as int64 class indices ``(n,)`` in ``[0, C)``, or a ValueError saying why."""
    y = np.asarray(y_true)
    if y.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},) to match the predictions, "
                         f"found {y.shape}")
    if y.dtype.kind not in "iub":
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"y_true must hold integer class indices, found dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"y_true must hold class indices in 0..{C - 1} for {C} classes, "
                         f"found {y.min()}..{y.max()}")
    return y


def _proba(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """Check and widen ``proba`` to float64 ``(N, C)``; return it, the labels, its own dtype."""
    p = np.asarray(proba)
    if p.dtype.kind not in "fiub":
        raise ValueError(f"proba must hold numbers, found dtype {p.dtype}")
    dtype = p.dtype if p.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    p = p.astype(np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)  # binary: p is P(class 1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"proba must be (N,) for binary or (N, C) with C >= 2, found shape "
                         f"{np.shape(proba)}")
    if p.shape[0] == 0:
        raise ValueError("proba is empty; expected at least one row")
    if not np.all((p >= 0) & (p <= 1)):  # also false for nan
        raise ValueError("proba must hold probabilities in [0, 1] (no nan or inf)")
    return p, _labels(y_true, p.shape[0], p.shape[1]), dtype


def calibration_bins(y_true: Any, proba: Any, n_bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Rows per confidence bin, their accuracy and mean confidence: a reliability diagram.

    Each row's confidence is its largest probability :math:`\hat p_i = \max_c p_{ic}` and its
    prediction the class that has it (the first on ties). The bins are equal-width,
    :math:`B_m = \{i : \hat p_i \in (\tfrac{m-1}{M}, \tfrac{m}{M}]\}`, :math:`m = 1..M` (the
    first bin also holds 0), as Guo et al. (2017) and scikit-learn's ``calibration_curve``.

    Args:
        y_true: ``(N,)`` class indices.
        proba: ``(N, C)`` probabilities, or ``(N,)`` P(class 1) for a binary problem.
        n_bins: ``M``, the number of bins (>= 1).

    Returns:
        ``(counts, accuracy, confidence)``, each ``(M,)``: the rows in each bin, the fraction of
        them predicted right and their mean confidence (both 0 for an empty bin).

    Example:
        >>> import numpy as np
        >>> counts, acc, conf = calibration_bins([0, 1, 1, 0], [0.9, 0.8, 0.3, 0.4], n_bins=2)
        >>> counts.tolist(), acc.tolist(), conf.round(2).tolist()
        ([0, 4], [0.0, 0.5], [0.0, 0.75])
    """
    if not isinstance(n_bins, int | np.integer) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, found {n_bins!r}")
    p, y, _ = _proba(y_true, proba)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side='left') on the inner edges puts a value equal to an edge in the bin
    # below it: right-closed bins (a, b], the first also holding 0.
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(which, minlength=n_bins)
    hits = np.bincount(which, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    nonempty = np.maximum(counts, 1)
    return counts, hits / nonempty, conf_sum / nonempty


def expected_calibration_error(y_true: Any, proba: Any, n_bins: int = 15) -> float:
    r"""Expected calibration error (ECE) over ``n_bins`` equal-width confidence bins.

    .. math::
        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}
            \left|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\right|

    with the bins :math:`B_m` of :func:`calibration_bins` (confidence = the largest
    probability, right-closed bins :math:`(\tfrac{m-1}{M}, \tfrac{m}{M}]`), as Guo et al.
    (2017), eq. (3). 0 is perfectly calibrated; the largest value is 1.

    Args:
        y_true: ``(N,)`` class indices.
        proba: ``(N, C)`` probabilities, or ``(N,)`` P(class 1) for a binary problem (the
            confidence is then ``max(p, 1 - p)``).
        n_bins: ``M`` (default 15, as in the paper).

    Returns:
        The ECE, a float in ``[0, 1]``.

    Example:
        >>> round(expected_calibration_error([0, 1, 1, 0], [0.9, 0.8, 0.3, 0.4], n_bins=2), 4)
        0.25
        >>> expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]])  # sure and right
        0.0
    """
    counts, accuracy, confidence = calibration_bins(y_true, proba, n_bins)
    return float(np.sum(counts * np.abs(accuracy - confidence)) / np.sum(counts))


def brier_score(y_true: Any, proba: Any) -> float:
    r"""Brier score: the mean squared error of the probabilities against the one-hot truth.

    .. math::
        \mathrm{BS} = \frac{1}{N} \sum_{i=1}^{N} \sum_{c=1}^{C} (p_{ic} - [y_i = c])^2
        \quad (C \ge 3), \qquad
        \mathrm{BS} = \frac{1}{N} \sum_{i=1}^{N} (p_{i} - y_i)^2 \quad (C = 2)

    The binary form (for ``(N,)`` or ``(N, 2)`` input) is half the multi-class sum, as
    scikit-learn's ``brier_score_loss`` (``scale_by_half='auto'``): 0 is perfect, 1 the worst
    for two classes, 2 for more.

    Args:
        y_true: ``(N,)`` class indices.
        proba: ``(N, C)`` probabilities, or ``(N,)`` P(class 1) for a binary problem.

    Returns:
        The Brier score, a float.

    Example:
        >>> round(brier_score([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]), 4)  # sklearn's example
        0.0375
        >>> round(brier_score([0, 1, 2], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.2, 0.2, 0.6]]), 4)
        0.146
    """
    p, y, _ = _proba(y_true, proba)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    total = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return total / 2 if p.shape[1] == 2 else total


def log_loss(y_true: Any, proba: Any) -> float:
    r"""Log loss (cross-entropy) of probabilities: the mean of :math:`-\log p_{i, y_i}`.

    .. math::
        \mathrm{LL} = -\frac{1}{N} \sum_{i=1}^{N} \log \mathrm{clip}(p_{i, y_i},
            \epsilon, 1 - \epsilon)

    Clipping convention, scikit-learn's (``sklearn.metrics.log_loss``, 1.5 and later): every
    probability is clipped to :math:`[\epsilon, 1 - \epsilon]`, :math:`\epsilon` the machine
    epsilon of ``proba``'s dtype (float32's ``1.19e-7`` for float32 input, float64's
    ``2.22e-16`` otherwise), and the rows are not renormalised. A probability 0 for the true
    class so costs :math:`-\log\epsilon` (36.04 in float64), not infinity. From logits, prefer
    ``xent.cross_entropy``: it needs no clipping.

    Args:
        y_true: ``(N,)`` class indices.
        proba: ``(N, C)`` probabilities, or ``(N,)`` P(class 1) for a binary problem.

    Returns:
        The mean log loss, a float.

    Example:
        >>> round(log_loss([1, 0, 0, 1], [[.1, .9], [.9, .1], [.8, .2], [.35, .65]]), 5)
        0.21616
        >>> round(log_loss([0], [[0.0, 1.0]]), 2)  # -log(eps), not inf
        36.04
    """
    p, y, dtype = _proba(y_true, proba)
    eps = float(np.finfo(dtype).eps)
    with np.errstate(divide="ignore"):  # clipped first: log never sees 0
        logp = np.log(np.clip(p, eps, 1.0 - eps))
    return float(nll_loss(logp, y))


def _temperature_gradient(z: np.ndarray, y: np.ndarray, beta: float,
                          binary: bool) -> tuple[float, float]:
    """The first and second derivative of the mean NLL of ``beta * z`` in ``beta``."""
    if binary:
        s = sigmoid(beta * z)
        return float(np.mean((s - y) * z)), float(np.mean(s * (1.0 - s) * z * z))
    p = softmax(beta * z, axis=1)
    mean_z = np.sum(p * z, axis=1)  # E_p[z]
    g = np.mean(mean_z - z[np.arange(len(y)), y])
    h = np.mean(np.sum(p * z * z, axis=1) - mean_z ** 2)  # Var_p[z] >= 0
    return float(g), float(max(h, 0.0))


def fit_temperature(logits: Any, y_true: Any, *, bounds: tuple[float, float] = (0.01, 100.0)
                    ) -> float:
    r"""The temperature :math:`T > 0` that minimises the mean log loss of ``logits / T``.

    Temperature scaling (Guo et al., 2017, sec. 4.2) divides every logit by one scalar fitted on
    held-out rows: the predicted classes stay the same, the confidences move.

    .. math::
        T^\ast = \arg\min_{T} \; \frac{1}{N} \sum_i \mathrm{CE}(z_i / T,\ y_i), \qquad
        \mathrm{CE}(\beta z, y) = \mathrm{lse}(\beta z) - \beta z_y

    In :math:`\beta = 1/T` the objective :math:`f(\beta)` is convex (a log-sum-exp of terms
    linear in :math:`\beta`), with

    .. math::
        f'(\beta) = \frac{1}{N} \sum_i \left(\mathbb{E}_{p_i}[z_i] - z_{i,y_i}\right), \qquad
        f''(\beta) = \frac{1}{N} \sum_i \mathrm{Var}_{p_i}[z_i] \ge 0,
        \qquad p_i = \mathrm{softmax}(\beta z_i)

    so :math:`f'` is nondecreasing and its one root is found by Newton's method kept inside a
    bisection bracket (no SciPy). Binary logits use :math:`\mathrm{softplus}(\beta z) - y\beta
    z`, :math:`f' = \overline{(\sigma(\beta z) - y) z}`, :math:`f'' = \overline{\sigma(1 -
    \sigma) z^2}`.

    Args:
        logits: ``(N, C)`` logits, or ``(N,)`` binary logits (of class 1); finite.
        y_true: ``(N,)`` class indices (0 or 1 for binary logits).
        bounds: ``(T_min, T_max)``, ``0 < T_min < T_max``. When the minimum lies outside (held-out
            rows all right with growing margins want :math:`T \to 0`; rows no better than
            chance want :math:`T \to \infty`), the nearer bound is returned.

    Returns:
        :math:`T^\ast` as a float (to a relative ``1e-10``).

    Example:
        >>> import numpy as np
        >>> z = np.array([[4.0, 0.0], [3.0, 0.0], [0.0, 5.0], [2.0, 0.0]])
        >>> round(fit_temperature(z, [0, 1, 1, 0]), 4)  # overconfident: T > 1 softens
        2.884
        >>> round(fit_temperature(z[:, 1] - z[:, 0], [0, 1, 1, 0]), 4)  # the same, binary
        2.884
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[0] == 0 or z.ndim == 2 and z.shape[1] < 2:
        raise ValueError(f"logits must be (N,) binary or (N, C) with N >= 1 and C >= 2, found "
                         f"shape {np.shape(logits)}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite (found nan or inf)")
    binary = z.ndim == 1
    y = _labels(y_true, z.shape[0], 2 if binary else z.shape[1])
    t_min, t_max = (float(b) for b in bounds)
    if not (0 < t_min < t_max < math.inf):
        raise ValueError(f"bounds must be 0 < T_min < T_max < inf, found {bounds!r}")
    yf = y.astype(np.float64)
    target = yf if binary else y
    lo, hi = 1.0 / t_max, 1.0 / t_min  # the bracket in beta = 1/T
    if _temperature_gradient(z, target, lo, binary)[0] >= 0:
        return t_max  # f increases from the smallest beta on: the largest T
    if _temperature_gradient(z, target, hi, binary)[0] <= 0:
        return t_min
    beta = min(max(1.0, lo), hi)
    for _ in range(200):
        g, h = _temperature_gradient(z, target, beta, binary)
        if g > 0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0 else math.nan
        if g == 0 or abs(step - beta) <= 1e-12 * beta or hi - lo <= 1e-12 * hi:
            break  # converged at this beta
        # Newton where it stays strictly inside the bracket, else bisection.
        beta = step if lo < step < hi else 0.5 * (lo + hi)
    return 1.0 / beta
