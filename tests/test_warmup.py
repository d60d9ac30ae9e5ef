"""`xent warmup`: every backend function the kernels define is reached, on the kernels."""

from __future__ import annotations

import pytest

from xent import _dispatch, _warmup

pytestmark = pytest.mark.slow  # (compiles every variant the disk cache lacks)


def test_warmup_reaches_every_kernel_function(monkeypatch):
    kernels = pytest.importorskip("xent._kernels")
    reached = set()
    real = _dispatch.backend_for

    def spy(op, rows, cols, dtype):
        module = real(op, rows, cols, dtype)
        if module is kernels:
            reached.add(op)
        return module

    monkeypatch.setattr(_dispatch, "backend_for", spy)
    n = _warmup.warmup(progress=False)
    assert n == len(list(_warmup.calls())) > 0
    assert reached == {"ce_index", "ce_prob", "ce_index_kdim", "ce_prob_kdim", "softmax",
                       "log_softmax", "softmax_kdim", "log_softmax_kdim", "softmax_backward",
                       "log_softmax_backward", "softmax_backward_kdim",
                       "log_softmax_backward_kdim", "bce_logits", "jsd", "focal_index",
                       "focal_prob", "sigmoid_focal",
                       "sparsemax", "entmax15", "entmax_bisect", "sparsemax_backward",
                       "entmax15_backward", "entmax_bisect_backward", "sparsemax_loss",
                       "entmax15_loss", "entmax_bisect_loss"}


def test_the_command_line_warmup_runs_and_says_how_many(capsys):
    from xent.cli import main

    assert main(["warmup"]) == 0
    out = capsys.readouterr()
    assert out.out == f"compiled or loaded {len(list(_warmup.calls()))} kernel variants\n"
    assert "compiling xent's kernels" in out.err  # the progress bar
