"""Compile the Numba kernels ahead of their first use (``xent warmup``).

A kernel is compiled on its first call in a machine for each kind of input it meets (storage
dtype, index or probability targets, the options that select a compiled variant): 9 to 16 s on
the development VM for a first cross-entropy, 0.8 s to load it from Numba's disk cache in every
later process. `warmup` makes those first calls on small inputs, one per compiled variant the
public functions reach, so that a training run, a benchmark or a notebook does not pay them
inside its first step. The machine code lands in Numba's cache (``__pycache__`` beside the
kernels' files, or ``NUMBA_CACHE_DIR``), which later processes load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import (
    _activations,
    _binary,
    _cross_entropy,
    _dispatch,
    _divergence,
    _focal,
    _sparse,
    _validation,
)

__all__ = ["calls", "warmup"]


def _dtypes() -> list[Any]:
    out: list[Any] = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    bf16 = _validation.bfloat16()
    return out + ([bf16] if bf16 is not None else [])


Call = Callable[[], object]


def calls() -> Iterator[tuple[str, Call]]:
    """``(label, call)`` for each compiled variant a training or evaluation call meets: every
    public function on the kernels, in every storage dtype, rows and K-dimensional layouts,
    index and probability targets, with and without the gradient, with and without
    soft-capping (the compile-time switches of the row kernels). ``inplace=True`` compiles its
    own variants on first use."""
    rng = np.random.default_rng(0)
    rows, kdim = (6, 40), (2, 40, 3)
    for dt in _dtypes():
        x = rng.standard_normal(rows).astype(dt)
        xk = rng.standard_normal(kdim).astype(dt)
        t = rng.integers(0, rows[1], rows[0])
        tk = rng.integers(0, kdim[1], (kdim[0], kdim[2]))
        y = _activations.softmax(rng.standard_normal(rows)).astype(dt)
        yk = _activations.softmax(rng.standard_normal(kdim), axis=1).astype(dt)
        name = np.dtype(dt).name
        options: list[tuple[str, dict[str, Any]]] = [
            ("", {}), (" smoothing, weight", {"label_smoothing": 0.1,
                                              "weight": np.linspace(0.5, 2, rows[1])}),
            (" z-loss, softcap, lse", {"lse_square_scale": 1e-4, "softcap": 30.0,
                                       "return_lse": True}),
            # the statistics drivers (issue 18: temperature, entropy, argmax), capped or not
            (" temperature, entropy, argmax", {"temperature": 0.7, "return_entropy": True,
                                               "return_argmax": True}),
            (" softcap, temperature, entropy", {"softcap": 30.0, "temperature": 0.7,
                                                "return_entropy": True}),
        ]
        for label, kw in options:
            for kind, target in (("", t), (" probabilities", y)):
                yield (f"cross_entropy {name}{kind}{label}",
                       _call(_cross_entropy.cross_entropy, x, target, return_grad=True, **kw))
                if label != " smoothing, weight":  # forward only: its own compiled loop
                    yield (f"cross_entropy {name}{kind}{label}, forward only",
                           _call(_cross_entropy.cross_entropy, x, target, **kw))
        yield (f"cross_entropy {name} (N, C, d)",
               _call(_cross_entropy.cross_entropy, xk, tk, return_grad=True))
        yield (f"cross_entropy {name} (N, C, d) probabilities",
               _call(_cross_entropy.cross_entropy, xk, yk, return_grad=True))
        for fn, vjp in ((_activations.softmax, _activations.softmax_backward),
                        (_activations.log_softmax, _activations.log_softmax_backward)):
            for axis, arr in ((-1, x), (1, xk)):
                def act(fn=fn, vjp=vjp, arr=arr, axis=axis):
                    out = fn(arr, axis=axis)
                    return vjp(np.ones_like(out), out, axis=axis)

                yield f"{fn.__name__} {name} axis {axis}", act
        yield (f"binary_cross_entropy_with_logits {name}",
               _call(_binary.binary_cross_entropy_with_logits, x, (x > 0).astype(np.float32),
                     pos_weight=np.full(rows[1], 2.0), return_grad=True))
        yield (f"generalized_jsd {name}",  # (beta 0, 1 and in between: one compiled kernel)
               _call(_divergence.generalized_jsd, x, x[::-1], return_grad=True))
        yield (f"focal_loss {name}", _call(_focal.focal_loss, x, t, return_grad=True))
        yield (f"focal_loss {name}, forward only", _call(_focal.focal_loss, x, t))
        yield (f"poly1_cross_entropy {name} probabilities, smoothing",  # (one dense driver)
               _call(_focal.poly1_cross_entropy, x, y, label_smoothing=0.1, return_grad=True))
        for gamma in (2.0, 0.0, 0.5):  # (a compiled loop per exponent kind, alpha on and off)
            for alpha in (0.25, -1.0):
                yield (f"sigmoid_focal_loss {name} gamma {gamma} alpha {alpha}",
                       _call(_focal.sigmoid_focal_loss, x, (x > 0).astype(np.float32), alpha,
                             gamma, return_grad=True))
        # sparsemax / entmax (issue 19): each map with its VJP, each loss with and without grad
        for kind in ("sparsemax", "entmax15", "entmax_bisect"):
            fwd = getattr(_sparse, kind)
            bwd = getattr(_sparse, kind + "_backward")

            def sparse_map(fwd=fwd, bwd=bwd, x=x):
                out = fwd(x)
                return bwd(np.ones_like(out), out)

            yield f"{kind} {name}", sparse_map
            loss = getattr(_sparse, kind + "_loss")
            yield f"{kind}_loss {name}", _call(loss, x, t, return_grad=True)
            yield f"{kind}_loss {name}, forward only", _call(loss, x, t)


def _call(fn: Callable[..., object], *args: Any, **kwargs: Any) -> Call:
    return lambda: fn(*args, **kwargs)


def warmup(progress: bool = True) -> int:
    """Run every call of `calls` on the kernels (``use_backend("numba")``), compiling what the
    disk cache does not hold; returns the number of calls. ``progress``: a tqdm bar on stderr.

    Raises ImportError when the kernels cannot be imported (Numba missing: the ``fast`` extra).
    """
    if _dispatch._load_kernels() is None:
        raise ImportError(f"the kernels cannot be imported ({_dispatch._kernels_error}); "
                          "install the 'fast' extra: pip install 'xent[fast]'")
    todo = list(calls())
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="compiling xent's kernels", unit="variant")
    with _dispatch.use_backend("numba"):
        for label, call in todo:
            if bar is not None:
                bar.set_postfix_str(label, refresh=False)
            call()
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return len(todo)
