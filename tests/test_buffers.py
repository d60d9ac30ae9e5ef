"""The output-buffer cache (xent._buffers): reuse only what nothing can reach, within the limit.

Expected values come from float64 NumPy math written here (softmax, the gradient of mean
cross-entropy / NLL), never from xent itself; every test runs on both backends where a backend
computes the result.
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

try:
    import numba
except ImportError:  # the NumPy backend alone
    numba = None

import xent
from xent import _buffers

SHAPE = (512, 4096)  # 8 MiB of float32: above MIN_BYTES
NBYTES = SHAPE[0] * SHAPE[1] * 4


@pytest.fixture(autouse=True)
def fresh_cache():
    """An empty cache, and no garbage collection inside the test but the ones it asks for.

    Earlier tests (of this file or others in the same process: autograd graphs are reference
    cycles) leave cyclic garbage that may hold cached buffers; a collection started by some
    allocation in the middle of a test would release those into the idle list there, and a test
    counting idle buffers or expecting a dropped buffer back would see one too many or another
    one. So: collect and empty first, keep the collector off (tests that need a collection call
    gc.collect() themselves), collect and empty after.
    """
    limit = xent.get_cache_limit()
    xent.set_cache_limit("2G")
    gc.collect()
    xent.empty_cache()
    enabled = gc.isenabled()
    gc.disable()
    threads = _one_kernel_thread()
    try:
        yield
    finally:
        if threads is not None:
            numba.set_num_threads(threads)
        if enabled:
            gc.enable()
        gc.collect()
        xent.set_cache_limit(limit)
        xent.empty_cache()


def _one_kernel_thread() -> int | None:
    """Run the kernels on the calling thread alone; return the previous thread count (None
    without Numba).

    With helper threads, a helper that the OS schedules only after the call has returned still
    holds the call's arrays, the output buffer included, in its queued work item: a dropped
    output is then not idle yet, and whether it is depends on scheduling (the failure seen once
    in four runs on a loaded machine). That is a defect of ``_threads.run_rows``, locked in by
    :func:`test_a_dropped_output_is_idle_even_while_a_kernel_helper_is_busy`; every other test
    here checks the cache, not the threads.
    """
    if numba is None:
        return None
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    return old


def softmax64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def inputs(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32) * 3


def test_a_dropped_output_is_reused(backend):
    x = inputs(0)
    p = xent.softmax(x)
    first = addr(p)
    del p
    info = xent.cache_info()
    assert info.idle_buffers == 1 and info.idle_bytes == NBYTES
    q = xent.softmax(x[::-1].copy())
    assert addr(q) == first
    assert xent.cache_info().hits == info.hits + 1
    np.testing.assert_allclose(q, softmax64(x[::-1]), rtol=2e-6, atol=1e-7)


HOLDERS = {
    "view of a view": lambda p: p[3:].T[::2],
    "dtype view": lambda p: p.view(np.int32).reshape(SHAPE[::-1]),
    "memoryview": lambda p: memoryview(p),
    "frombuffer": lambda p: np.frombuffer(memoryview(p), np.uint8),
    "torch.from_numpy": lambda p: torch.from_numpy(p)[5:],
    "ctypes": lambda p: p.ctypes,
}


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_memory_still_reachable_is_never_reused(backend, holder):
    x1, x2 = inputs(1), inputs(2)
    p1 = xent.softmax(x1)
    keep = HOLDERS[holder](p1)
    first = addr(p1)
    del p1
    gc.collect()
    assert xent.cache_info().idle_buffers == 0  # `keep` still reaches the storage
    p2 = xent.softmax(x2)
    assert addr(p2) != first
    # The held memory still holds softmax(x1), untouched by the second call.
    held = np.ctypeslib.as_array((ctypes.c_float * (NBYTES // 4)).from_address(first))
    np.testing.assert_allclose(held.reshape(SHAPE), softmax64(x1), rtol=2e-6, atol=1e-7)
    del keep
    gc.collect()
    assert xent.cache_info().idle_buffers == 1


def test_cross_entropy_gradient_in_reused_memory_is_correct(backend):
    # Dirty a buffer with softmax values, then let cross_entropy's gradient and nll_loss's
    # zero-initialised gradient land in it.
    x = inputs(3)
    t = np.random.default_rng(3).integers(0, SHAPE[1], SHAPE[0])
    xent.softmax(x + 100)  # dropped at once: its memory is idle
    _, g = xent.cross_entropy(x, t, return_grad=True)
    expected = softmax64(x)
    expected[np.arange(SHAPE[0]), t] -= 1
    np.testing.assert_allclose(g, expected / SHAPE[0], rtol=1e-5, atol=1e-9)
    assert xent.cache_info().hits >= 1
    del g
    _, g = xent.nll_loss(x, t, return_grad=True)
    expected = np.zeros(SHAPE)
    expected[np.arange(SHAPE[0]), t] = -1 / SHAPE[0]
    np.testing.assert_array_equal(g, expected.astype(np.float32))


class _CollectingStorage(np.ndarray):
    """An idle storage that runs a garbage collection when its size is read, as any allocation
    inside ``_take``'s search may start one (armed once)."""

    armed = False

    @property
    def nbytes(self) -> int:
        if type(self).armed:
            type(self).armed = False
            gc.collect()
        return super().nbytes


def _storage_of(a: np.ndarray) -> np.ndarray:
    while not isinstance(a, _buffers._Block):
        a = a.base
    return a.storage


def test_a_release_inside_take_never_hands_out_a_smaller_buffer():
    """A finalizer that runs inside ``_take`` (a collection started there) appends to the idle
    list and trims its oldest entry, shifting every index: the search must still hand out a
    storage of at least the requested size (it once handed out the entry that slid into the
    chosen position: here 16 bytes for an 8 MiB request)."""
    xent.set_cache_limit(4 * NBYTES)
    cyclic = [xent.softmax(inputs(9))]  # 8 MiB held by a reference cycle: freed only by gc
    cyclic.append(cyclic)
    del cyclic
    big = np.empty(2 * NBYTES, np.uint8)
    trap = np.empty(16, np.uint8).view(_CollectingStorage)
    fits = np.empty(NBYTES, np.uint8)
    for storage in (big, trap, fits):  # idle, oldest first: 3·8 MiB + 16 bytes
        _buffers._release(storage)
    _CollectingStorage.armed = True
    out = _buffers.empty(SHAPE, np.float32)  # the collection adds 8 MiB and trims `big`
    assert not _CollectingStorage.armed  # the collection did run inside the search
    assert _storage_of(out).nbytes >= NBYTES
    assert any(s is trap for s in _buffers._idle)
    del out


def test_a_dropped_output_is_idle_even_while_a_kernel_helper_is_busy():
    """Deterministic form of the scheduling race: the one helper thread is kept busy while a
    parallel softmax runs (the calling thread takes every block), so the helper's work item is
    still queued when the output is dropped."""
    if numba is None or numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs Numba with at least 2 threads")
    from xent._kernels import _threads

    numba.set_num_threads(2)
    x = inputs(20)
    gate = threading.Event()
    with xent.use_backend("numba"):
        xent.softmax(x)  # compiled, the helper pool started
        xent.empty_cache()
        blocker = _threads._helpers(1).submit(gate.wait)
        try:
            p = xent.softmax(x)  # (512, 4096): above PARALLEL_MIN_ELEMENTS
            del p
            idle = xent.cache_info().idle_buffers
        finally:
            gate.set()
            blocker.result()
    assert idle == 1


def test_small_arrays_bypass_the_cache():
    before = xent.cache_info()
    p = xent.softmax(np.ones((64, 64), np.float32))
    del p
    after = xent.cache_info()
    assert (after.hits, after.misses, after.idle_buffers) == (before.hits, before.misses, 0)


def test_limit_zero_turns_the_cache_off():
    xent.set_cache_limit(0)
    p = xent.softmax(inputs(4))
    assert p.base is None or not isinstance(p.base.base, _buffers._Block)
    del p
    assert xent.cache_info().idle_bytes == 0


def test_limit_bounds_the_idle_bytes_and_releases_oldest_first():
    xent.set_cache_limit(2 * NBYTES)
    outs = [xent.softmax(inputs(k)) for k in range(4)]
    addrs = [addr(p) for p in outs]
    for k in range(4):  # release in order 0, 1, 2, 3
        outs[k] = None
    info = xent.cache_info()
    assert info.idle_buffers == 2 and info.idle_bytes == 2 * NBYTES
    kept = {addr(np.asarray(s)) for s in _buffers._idle}
    assert kept == set(addrs[2:])  # the two released last (oldest released first)
    xent.set_cache_limit(NBYTES)  # lowering it trims now
    assert xent.cache_info().idle_buffers == 1
    xent.set_cache_limit(NBYTES - 1)  # a buffer larger than the limit is never kept
    assert xent.cache_info().idle_buffers == 0
    p = xent.softmax(inputs(5))
    del p
    assert xent.cache_info().idle_buffers == 0


def test_empty_cache_releases_idle_buffers_only():
    a, b = xent.softmax(inputs(6)), xent.softmax(inputs(7))
    del a
    assert xent.cache_info().idle_buffers == 1
    xent.empty_cache()
    assert xent.cache_info().idle_buffers == 0
    np.testing.assert_allclose(b, softmax64(inputs(7)), rtol=2e-6, atol=1e-7)


def test_a_much_larger_idle_buffer_is_not_used_for_a_small_request():
    big = xent.softmax(np.zeros((4 * SHAPE[0], SHAPE[1]), np.float32))
    big_addr = addr(big)
    del big
    small = xent.softmax(inputs(8))  # 8 MiB from a 32 MiB buffer would waste 24 MiB
    assert addr(small) != big_addr
    assert xent.cache_info().idle_buffers == 1


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0), (1234, 1234), ("512M", 512 << 20), (" 2g ", 2 << 30),
                            ("64k", 64 << 10), (np.int64(7), 7)]
)
def test_limit_parsing(value, expected):
    xent.set_cache_limit(value)
    assert xent.get_cache_limit() == expected


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [(-1, ValueError, "must be >= 0 bytes; got -1"),
     ("lots", ValueError, "such as 0, 536870912, 512M or 2G; got 'lots'"),
     (1.5, TypeError, "must be an int number of bytes; got float"),
     (True, TypeError, "got bool"),
     (None, TypeError, "got NoneType")],
)
def test_bad_limits_are_rejected(value, error, message):
    with pytest.raises(error, match=message):
        xent.set_cache_limit(value)


def test_default_limit_is_2gib_or_an_eighth_of_memory():
    code = "import xent; print(xent.get_cache_limit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": ""}, check=True)
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert int(out.stdout) == min(2 << 30, physical // 8)


def test_environment_variable_sets_the_limit_at_import():
    code = "import xent; print(xent.get_cache_limit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"XENT_CACHE_LIMIT": "256M", "PATH": ""}, check=True)
    assert out.stdout.strip() == str(256 << 20)
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"XENT_CACHE_LIMIT": "-5", "PATH": ""})
    assert bad.returncode != 0
    assert "XENT_CACHE_LIMIT must be >= 0 bytes; got '-5'" in bad.stderr


def test_threads_never_share_a_buffer(backend):
    xs = [inputs(10 + k) for k in range(4)]
    expected = [softmax64(x) for x in xs]
    failures: list[str] = []

    def work(k: int) -> None:
        for _ in range(6):
            p = xent.softmax(xs[k])
            held = p.copy()
            q = xent.log_softmax(xs[(k + 1) % 4])  # another cached buffer while p is alive
            if not np.array_equal(p, held):
                failures.append(f"thread {k}: its softmax changed while it held it")
            if not np.allclose(p, expected[k], rtol=2e-6, atol=1e-7):
                failures.append(f"thread {k}: wrong softmax")
            del p, q

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert xent.cache_info().idle_bytes <= xent.get_cache_limit()
