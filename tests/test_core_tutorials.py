"""Every worked number in the tutorials (the three notebooks the project was created from, its
specification), reproduced by xent to the digits the tutorials show.

The tutorials' PyTorch numbers were computed in float32 (``torch.tensor([2.0, 1.0, 0.1])``), and
their NumPy numbers in float64; each is checked in the dtype it was computed in, and printed
values to the digits printed. Runs on every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

import xent
from helpers import assert_close

# ---------------------------------------------------------------------------------------------
# Softmax and sigmoid of [2.0, 1.0, 0.1] (notebooks 000, 001, 002)


def test_softmax_numpy_print(backend):
    """`softmax numpy: [0.65900114 0.24243297 0.09856589]`: NumPy's own printout, in float64."""
    out = xent.softmax(np.array([2.0, 1.0, 0.1]))
    assert str(out) == "[0.65900114 0.24243297 0.09856589]"
    assert_close(out, np.exp([2.0, 1.0, 0.1]) / np.exp([2.0, 1.0, 0.1]).sum())


def test_softmax_torch_print(backend):
    """`softmax torch: tensor([0.6590, 0.2424, 0.0986])`: float32, four decimals."""
    out = xent.softmax(np.array([2.0, 1.0, 0.1], dtype=np.float32), axis=0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.round(4), np.array([0.6590, 0.2424, 0.0986], np.float32))
    assert np.isclose(out.sum(), 1.0, rtol=0, atol=1e-6)


def test_sigmoid_numpy_and_torch_prints(backend):
    """`sigmoid numpy: [0.88079708 0.73105858 0.52497919]`, `tensor([0.8808, 0.7311, 0.5250])`,
    and sigma(2.0) ~ 0.88."""
    out = xent.sigmoid(np.array([2.0, 1.0, 0.1]))
    assert str(out) == "[0.88079708 0.73105858 0.52497919]"
    out32 = xent.sigmoid(np.array([2.0, 1.0, 0.1], dtype=np.float32))
    np.testing.assert_array_equal(out32.round(4), np.array([0.8808, 0.7311, 0.5250], np.float32))
    assert round(float(xent.sigmoid(2.0)), 2) == 0.88
    # The derivative sigma(z)(1 - sigma(z)), via the VJP with grad_output 1.
    s = xent.sigmoid(np.array([2.0, 0.0]))
    assert_close(xent.sigmoid_backward(np.ones(2), s), s * (1 - s))
    assert xent.sigmoid_backward(np.ones(1), xent.sigmoid([0.0]))[0] == 0.25


def test_naive_formula_fails_on_large_logits_and_xent_does_not(backend):
    """The tutorials' `np.exp(x) / np.sum(np.exp(x))` gives nan for [1000, 1]."""
    x = np.array([1000.0, 1.0])
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x) / np.sum(np.exp(x), axis=0)
    assert np.isnan(naive[0]) and naive[1] == 0.0
    np.testing.assert_array_equal(xent.softmax(x), [1.0, 0.0])
    np.testing.assert_array_equal(xent.log_softmax(x), [0.0, -999.0])


# ---------------------------------------------------------------------------------------------
# The worked cross-entropy example (notebook 000): -log 0.4 ~ 0.916, -log 0.9 ~ 0.105


@pytest.mark.parametrize(
    ("probs", "shown"), [([0.4, 0.1, 0.3, 0.2], 0.916), ([0.9, 0.05, 0.03, 0.02], 0.105)]
)
def test_worked_example_minus_log_p(backend, probs, shown):
    logp = np.log(np.array([probs]))
    nll = xent.nll_loss(logp, [0])
    assert round(float(nll), 3) == shown
    assert nll == -np.log(probs[0])
    # cross_entropy of the log-probabilities (softmax(log p) = p) with the one-hot y_true.
    one_hot = np.array([[1.0, 0.0, 0.0, 0.0]])
    for target in ([0], one_hot):
        ce = xent.cross_entropy(logp, target)
        assert round(float(ce), 3) == shown
        assert_close(ce, np.array(-np.log(probs[0])))


# ---------------------------------------------------------------------------------------------
# BCE on sigmoid outputs (notebook 000): 0.3047555685043335


LOGITS_BCE = [2.0, -1.0, 0.5]
Y_BCE = [1.0, 0.0, 1.0]


def test_bce_of_sigmoid_outputs(backend):
    """`Sigmoid outputs: tensor([0.8808, 0.2689, 0.6225])` and
    `Binary Cross-Entropy Loss (Sigmoid): 0.3047555685043335` (a float32 result)."""
    x32 = np.array(LOGITS_BCE, dtype=np.float32)
    y32 = np.array(Y_BCE, dtype=np.float32)
    p32 = xent.sigmoid(x32)
    np.testing.assert_array_equal(p32.round(4), np.array([0.8808, 0.2689, 0.6225], np.float32))
    loss32 = xent.binary_cross_entropy(p32, y32)
    assert loss32.dtype == np.float32
    assert_close(loss32, np.array(0.3047555685043335, dtype=np.float32))
    # The same in float64, and fused on logits, to float32's precision of the shown value.
    loss64 = xent.binary_cross_entropy(xent.sigmoid(np.array(LOGITS_BCE)), np.array(Y_BCE))
    fused = xent.binary_cross_entropy_with_logits(np.array(LOGITS_BCE), np.array(Y_BCE))
    for loss in (loss64, fused):
        assert_close(loss, np.array(0.3047555685043335), rtol=1.3e-6, atol=1e-7)
    assert round(float(fused), 4) == 0.3048


# ---------------------------------------------------------------------------------------------
# 3 samples x 4 classes (notebook 000): 0.6589792370796204 and the softmax table


LOGITS_MULTI = [[2.0, 1.0, 0.1, 0.5], [0.3, 2.2, 0.5, 1.1], [1.2, 0.7, 1.5, 0.3]]
SOFTMAX_TABLE = [
    [0.5745, 0.2114, 0.0859, 0.1282],
    [0.0898, 0.6006, 0.1097, 0.1999],
    [0.2974, 0.1804, 0.4014, 0.1209],
]


def test_four_class_softmax_table_and_loss(backend):
    x32 = np.array(LOGITS_MULTI, dtype=np.float32)
    p = xent.softmax(x32, axis=1)
    np.testing.assert_array_equal(p.round(4), np.array(SOFTMAX_TABLE, dtype=np.float32))
    loss = xent.cross_entropy(x32, [0, 1, 2])
    assert loss.dtype == np.float32
    assert_close(loss, np.array(0.6589792370796204, dtype=np.float32))
    loss64 = xent.cross_entropy(np.array(LOGITS_MULTI), np.array([0, 1, 2]))
    assert_close(loss64, np.array(0.6589792370796204), rtol=1.3e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Fruit (notebook 000): 0.3018 / 1.6242, predictions [2, 0, 1] / [0, 2, 1]


FRUIT_TRUE = [2, 0, 1]
FRUIT_GOOD = [[0.1, 1.0, 2.1], [2.0, 1.0, 0.1], [0.1, 3.0, 0.1]]
FRUIT_BAD = [[2.1, 1.0, 0.1], [0.1, 1.0, 2.1], [0.1, 3.0, 0.1]]


@pytest.mark.parametrize(
    ("logits", "shown", "predictions"),
    [(FRUIT_GOOD, "0.3018", [2, 0, 1]), (FRUIT_BAD, "1.6242", [0, 2, 1])],
    ids=["good", "bad"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_fruit_example(backend, logits, shown, predictions, dtype):
    x = np.array(logits, dtype=dtype)
    loss = xent.cross_entropy(x, FRUIT_TRUE)
    assert f"{loss.item():.4f}" == shown
    np.testing.assert_array_equal(xent.softmax(x, axis=1).argmax(axis=1), predictions)


# ---------------------------------------------------------------------------------------------
# The shorter notebook (001)


def test_numpy_one_hot_losses(backend):
    """`Loss1 numpy: 0.35667494393873245`, `Loss2 numpy: 2.3025850929940455`: -log p of the true
    class, on one-hot y = [[1, 0, 0]]."""
    y = np.array([[1, 0, 0]])
    cases = (([0.7, 0.2, 0.1], 0.35667494393873245), ([0.1, 0.3, 0.6], 2.3025850929940455))
    for probs, shown in cases:
        logp = np.log(np.array([probs]))
        assert float(xent.nll_loss(logp, y.argmax(axis=1))) == shown  # to all 17 digits
        # Probability targets (the one-hot itself): the same to float64 rounding, since the
        # probabilities sum to 1 only up to an ulp.
        ce = xent.cross_entropy(logp, y.astype(np.float64))
        assert_close(ce, np.array(shown), rtol=1e-15, atol=0.0)


@pytest.mark.parametrize(
    ("logits", "shown", "prediction"),
    [([[2.0, 1.0, 0.1]], 0.4170299470424652, 0), ([[0.5, 2.0, 0.3]], 1.840616226196289, 1)],
    ids=["good", "bad"],
)
def test_one_sample_torch_losses(backend, logits, shown, prediction):
    """`Loss1 torch: 0.4170299470424652`, `Loss2 torch: 1.840616226196289` (float32), and
    `Prediction1 torch: 0`, `Prediction2 torch: 1`."""
    x32 = np.array(logits, dtype=np.float32)
    loss = xent.cross_entropy(x32, [0])
    assert_close(loss, np.array(shown, dtype=np.float32))
    assert_close(xent.cross_entropy(np.array(logits), [0]), np.array(shown), rtol=1.3e-6, atol=1e-7)
    assert int(xent.softmax(x32, axis=1).argmax(axis=1)[0]) == prediction


BATCH_TRUE = [2, 0, 1]
BATCH_GOOD = [[0.1, 0.2, 3.9], [1.2, 0.1, 0.3], [0.3, 2.2, 0.2]]
BATCH_BAD = [[0.9, 0.2, 0.1], [0.1, 0.3, 1.5], [1.2, 0.2, 0.5]]


@pytest.mark.parametrize(
    ("logits", "shown", "predictions"),
    [(BATCH_GOOD, "0.2834", [2, 0, 1]), (BATCH_BAD, "1.6418", [0, 2, 0])],
    ids=["good", "bad"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_batch_losses(backend, logits, shown, predictions, dtype):
    """`Batch Loss1:  0.2834`, `Batch Loss2: 1.6418`, `Y_pred1: tensor([2, 0, 1])`,
    `Y_pred2: tensor([0, 2, 0])`."""
    x = np.array(logits, dtype=dtype)
    loss = xent.cross_entropy(x, np.array(BATCH_TRUE))
    assert f"{loss.item():.4f}" == shown
    np.testing.assert_array_equal(x.argmax(axis=1), predictions)
    np.testing.assert_array_equal(xent.log_softmax(x, axis=1).argmax(axis=1), predictions)
