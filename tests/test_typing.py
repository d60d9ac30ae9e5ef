"""The losses are typed with overloads: return_grad=True gives a tuple, otherwise an array."""

import typing

import numpy as np
import pytest

import xent

LOSSES = [
    xent.cross_entropy,
    xent.nll_loss,
    xent.binary_cross_entropy,
    xent.binary_cross_entropy_with_logits,
]


@pytest.mark.parametrize("fn", LOSSES, ids=lambda f: f.__name__)
def test_overloads_pin_the_return_type_to_return_grad(fn):
    by_flag = {}
    for ov in typing.get_overloads(fn):
        hints = typing.get_type_hints(ov)
        if typing.get_args(hints.get("return_lse", typing.Literal[False])) == (True,):
            assert hints["return"] == tuple[np.ndarray, ...]  # loss, lse (, grad)
            continue
        flag = typing.get_args(hints["return_grad"])
        if not flag:  # the catch-all (flags typed `bool`: extra outputs chosen at run time)
            assert hints["return"] == np.ndarray | tuple[np.ndarray, ...]
            continue
        by_flag[flag] = hints["return"]
    assert by_flag == {(False,): np.ndarray, (True,): tuple[np.ndarray, np.ndarray]}
