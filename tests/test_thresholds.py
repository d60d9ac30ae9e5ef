"""The size and layout thresholds, pinned by value (a change is a decision, made here too).

Each number was chosen from a measurement named beside it in `xent._thresholds`
(benchmarks/README.md holds the runs); these tests fail when one moves without that.
"""

from __future__ import annotations

from xent import _thresholds


def test_dispatch_thresholds():
    assert _thresholds.AUTO_MIN_ELEMENTS == 65536
    assert _thresholds.AUTO_MIN_ELEMENTS_BY_OP == {"bce_logits": 65536}
    assert _thresholds.AUTO_MIN_COLS_BY_OP == {"ce_index": (16, 12), "softmax": (16, 8),
                                               "log_softmax": (16, 8), "ce_prob": (8, 4)}
    assert _thresholds.SINGLE_THREAD_ELEMENTS == 1048576
    assert _thresholds.BLOCKS_PER_THREAD == 4


def test_kernel_blocking():
    assert (_thresholds.ROW_BLOCK, _thresholds.ROW_BLOCK16) == (2048, 16384)
    assert (_thresholds.TILE_BYTES, _thresholds.CHUNK_BYTES) == (262144, 16384)
    assert (_thresholds.MAX_TILE, _thresholds.GROUP_LANES) == (2048, 128)


def test_torch_route_thresholds():
    assert _thresholds.MIN_ELEMENTS == 524288
    assert _thresholds.MIN_CLASSES == 1024


def test_linear_chunks():
    assert _thresholds.DEFAULT_CHUNK_BYTES == 134217728
    assert _thresholds.MIN_CHUNK_ROWS == 64
    assert _thresholds.GW_BLOCK_BYTES == 8388608


def test_the_thresholds_module_is_a_leaf():
    """It imports nothing of xent (every other module may import it)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_thresholds))
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [getattr(n, "module", None) for n in imported] == ["__future__"]
