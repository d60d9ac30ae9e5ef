"""Run a row kernel over blocks of rows on several threads, the calling thread included.

Why not Numba's ``parallel=True``/``prange``: its OpenMP regions end in a barrier that waits for
every worker thread. When the cores are shared with other processes, a worker that is not
scheduled in time stalls the whole call (a ``prange`` softmax ran several times slower than the
serial one under load; benchmarks/README.md). Here instead:

* the kernels are compiled with ``nogil=True`` and take a row range ``[lo, hi)``;
* the rows are cut into a few blocks per thread; the calling thread and ``n - 1`` helper threads
  take blocks from a shared counter until none are left;
* the caller waits only for blocks that a helper has *claimed*. A helper that has not been
  scheduled yet when the caller runs out of blocks finds nothing to do later, so it costs nothing:
  in the worst case the call runs serially, never slower.

Threads: ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``), read by
`thread_count` without starting Numba's threading layer (see there: starting it changes the
OpenMP runtime PyTorch shares). The helpers block on a queue while idle (they never spin). Calls
from several Python threads at once are safe: every call has its own counter and completion
count.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
from numba.np.ufunc import parallel as _numba_parallel

from .._thresholds import BLOCKS_PER_THREAD, SINGLE_THREAD_ELEMENTS

# (below SINGLE_THREAD_ELEMENTS, or with one row, a kernel runs on the calling thread alone)
PARALLEL_MIN_ELEMENTS = SINGLE_THREAD_ELEMENTS

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None


def _helpers(n: int) -> ThreadPoolExecutor:
    """The pool of ``n`` helper threads (rebuilt after a fork or a change of thread count)."""
    global _pool, _pool_key
    key = (os.getpid(), n)
    with _lock:
        if _pool is None or _pool_key != key:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="xent-kernel")
            _pool_key = key
        return _pool


def thread_count() -> int:
    """Numba's thread count for this thread, without starting Numba's threading layer.

    ``numba.get_num_threads()`` first launches the threading layer, and its OpenMP layer (the
    one chosen where PyTorch is loaded: both then use the process's one ``libgomp.so.1``) calls
    ``omp_set_num_threads(NUMBA_NUM_THREADS)`` on the calling thread. PyTorch's intra-op thread
    count is that OpenMP setting, so a ``torch.set_num_threads(1)`` made before was silently
    undone and every later PyTorch op ran on all cores. xent's kernels never use that layer (the
    helpers here are plain Python threads), so until someone else has started it (which
    ``numba.set_num_threads`` does) the count is ``NUMBA_NUM_THREADS`` and nothing is launched.

    Example:
        >>> thread_count() >= 1
        True
    """
    if getattr(_numba_parallel, "_is_initialized", True):  # started: reading it changes nothing
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]


def run_rows(fn, rows: int, cols: int, args: tuple) -> None:
    """Call ``fn(*args, lo, hi)`` over ``[0, rows)`` in blocks, on up to the Numba thread count."""
    threads = thread_count()
    if threads <= 1 or rows < 2 or rows * cols < PARALLEL_MIN_ELEMENTS:
        fn(*args, 0, rows)
        return
    blocks = min(rows, BLOCKS_PER_THREAD * threads)
    bounds = [rows * k // blocks for k in range(blocks + 1)]
    claim = itertools.count()  # next() on a count is atomic under the GIL
    done = threading.Condition()
    finished = [0]
    errors: list[BaseException] = []
    job = [args]  # emptied when the call is done: a helper scheduled late keeps no array alive

    def work() -> None:
        while True:
            k = next(claim)
            if k >= blocks:
                return
            try:
                fn(*job[0], bounds[k], bounds[k + 1])
            except BaseException as exc:  # re-raised on the calling thread
                errors.append(exc)
            with done:
                finished[0] += 1
                if finished[0] == blocks:
                    done.notify_all()

    pool = _helpers(threads - 1)
    for _ in range(threads - 1):
        pool.submit(work)
    work()
    with done:
        while finished[0] < blocks:
            done.wait()
    job[0] = None
    if errors:
        raise errors[0]
