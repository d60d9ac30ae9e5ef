"""A cache of large output buffers: calls of one shape reuse memory the OS has already given.

Why: a fresh N×C gradient or softmax output is new memory, and the operating system hands out
new memory one page at a time, zero-filled, on first touch; on a VM that first write into a
fresh 512 MiB gradient can cost more than the fused cross-entropy forward + backward itself
(measurements: benchmarks/README.md). PyTorch's CUDA allocator caches
freed blocks for the same reason; this is the CPU counterpart, for xent's own large outputs.

How it stays safe: every cached array is a view of a block (an object NumPy sees through
``__array_interface__``) that owns its storage. Views, views of views, ``torch.from_numpy`` and
memoryviews all keep a reference to the block, so the storage cannot come back to the cache
while anything can still reach it. When the last of them is gone the block is finalised and its
storage joins the idle list, to be handed out again (a fresh array with undefined contents, like
``np.empty``). The idle list keeps at most :func:`get_cache_limit` bytes (2 GiB, or an eighth of
the machine's memory where that is less), releasing the oldest first; nothing in use is ever
counted against it or released.

Only arrays of at least ``MIN_BYTES`` go through the cache: smaller ones come from the C
allocator's heap, which already reuses its memory.

    >>> import numpy as np, xent
    >>> xent.empty_cache()
    >>> x = np.zeros((1024, 2048), np.float32)   # 8 MiB
    >>> p = xent.softmax(x)
    >>> addr = p.__array_interface__["data"][0]
    >>> del p                                    # storage goes back to the idle list
    >>> xent.cache_info().idle_bytes >= x.nbytes
    True
    >>> q = xent.softmax(x)                      # the same memory, no page faults
    >>> q.__array_interface__["data"][0] == addr
    True
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any, NamedTuple

import numpy as np

MIN_BYTES = 4 << 20  # 4 MiB; below this glibc's heap reuses freed memory by itself


def _default_limit() -> int:
    """2 GiB, or an eighth of the machine's memory where that is less."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX, or not reported
        physical = 0
    return min(2 << 30, physical // 8) if physical > 0 else 2 << 30


DEFAULT_LIMIT = _default_limit()  # idle bytes kept; XENT_CACHE_LIMIT or set_cache_limit() change it


class CacheInfo(NamedTuple):
    """What the buffer cache holds now and how it has served requests since start-up."""

    idle_bytes: int  #: bytes of storage kept for reuse (not reachable from any array)
    idle_buffers: int  #: number of idle storage blocks
    hits: int  #: requests served from idle storage
    misses: int  #: requests (of at least MIN_BYTES) that allocated new storage
    limit: int  #: most idle bytes kept (get_cache_limit())


def _parse_limit(value: Any, source: str) -> int:
    if isinstance(value, str):
        text = value.strip().upper()
        scale = 1
        for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
            if text.endswith(suffix):
                text, scale = text[:-1], mult
                break
        try:
            number = int(text) * scale
        except ValueError:
            raise ValueError(
                f"{source} must be a number of bytes such as 0, 536870912, 512M or 2G; "
                f"got {value!r}"
            ) from None
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    else:
        raise TypeError(f"{source} must be an int number of bytes; got {type(value).__name__}")
    if number < 0:
        raise ValueError(f"{source} must be >= 0 bytes; got {value!r}")
    return number


_lock = threading.RLock()  # re-entrant: a finaliser may run while this thread holds it


def _after_fork() -> None:  # a fork while another thread held the lock must not deadlock
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork)
_idle: list[np.ndarray] = []  # uint8 storage, oldest first
_idle_bytes = 0
_hits = 0
_misses = 0
ENV_ERRORS: list[str] = []  # an invalid XENT_CACHE_LIMIT (the command line reports it)
try:
    _limit = _parse_limit(os.environ.get("XENT_CACHE_LIMIT", DEFAULT_LIMIT), "XENT_CACHE_LIMIT")
except ValueError as _e:  # the default is kept; `xent` commands stop with one line
    ENV_ERRORS.append(f"environment variable {_e}")
    _limit = DEFAULT_LIMIT


class _Block:
    """Owner of one storage array, seen by NumPy as an array through ``__array_interface__``."""

    __slots__ = ("__array_interface__", "__weakref__", "storage")

    def __init__(self, storage: np.ndarray, nbytes: int) -> None:
        self.storage = storage
        self.__array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (storage.__array_interface__["data"][0], False),
            "version": 3,
        }


def _trim(limit: int) -> None:
    global _idle_bytes
    while _idle and _idle_bytes > limit:
        _idle_bytes -= _idle.pop(0).nbytes


def _release(storage: np.ndarray) -> None:
    global _idle_bytes
    with _lock:
        if storage.nbytes > _limit:
            return
        _idle.append(storage)
        _idle_bytes += storage.nbytes
        _trim(_limit)


def _take(nbytes: int) -> np.ndarray | None:
    """The smallest idle storage of nbytes to 2·nbytes bytes, removed from the idle list.

    A garbage collection can start at any allocation in this loop and run a finalizer here, in
    this thread (the lock is re-entrant): :func:`_release` then appends to the idle list and may
    trim its oldest entries, which shifts every index. So the choice is made on a snapshot and
    by identity, never by a position found before the list changed (that could hand out a
    smaller storage than requested).
    """
    global _idle_bytes
    best = None
    for s in list(_idle):
        if nbytes <= s.nbytes <= 2 * nbytes and (best is None or s.nbytes < best.nbytes):
            best = s
    if best is None:
        return None
    for i in range(len(_idle)):  # allocates no tracked object: no collection in between
        if _idle[i] is best:
            del _idle[i]
            _idle_bytes -= best.nbytes
            return best
    return None  # released to the system by a trim meanwhile


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Like ``np.empty(shape, dtype)`` (C order), from the cache when the array is large."""
    global _hits, _misses
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < MIN_BYTES or _limit == 0:
        return np.empty(shape, dt)
    with _lock:
        storage = _take(nbytes)
        if storage is None:
            _misses += 1
        else:
            _hits += 1
    if storage is None:
        storage = np.empty(nbytes, np.uint8)  # NumPy's allocation: 16-byte aligned or better
    block = _Block(storage, nbytes)
    fin = weakref.finalize(block, _release, storage)
    fin.atexit = False
    return np.asarray(block).view(dt).reshape(shape)


def empty_like(a: np.ndarray) -> np.ndarray:
    """``empty(a.shape, a.dtype)``."""
    return empty(a.shape, a.dtype)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Like ``np.zeros``; a cached array is zero-filled (memory already touched: fast)."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def empty_cache() -> None:
    """Release every idle buffer to the operating system (arrays in use are not affected)."""
    with _lock:
        _trim(0)


def set_cache_limit(nbytes: int | str) -> None:
    """Keep at most ``nbytes`` of idle output buffers for reuse; 0 turns the cache off.

    Accepts an int or a string with a K/M/G suffix ("512M"). The default is 2 GiB (an eighth of
    the machine's memory where that is less), or the environment variable ``XENT_CACHE_LIMIT`` at
    import. Lowering it releases idle buffers now.
    """
    global _limit
    limit = _parse_limit(nbytes, "cache limit")
    with _lock:
        _limit = limit
        ENV_ERRORS.clear()
        _trim(limit)


def get_cache_limit() -> int:
    """The most idle bytes the output-buffer cache keeps (see :func:`set_cache_limit`).

    Raises ValueError while an invalid ``XENT_CACHE_LIMIT`` is in force (the cache then keeps
    the default limit), until :func:`set_cache_limit` sets one.
    """
    if ENV_ERRORS:
        raise ValueError(ENV_ERRORS[0].removeprefix("environment variable "))
    return _limit


def cache_info() -> CacheInfo:
    """Idle bytes and buffers held now, hits and misses so far, and the limit."""
    with _lock:
        return CacheInfo(_idle_bytes, len(_idle), _hits, _misses, _limit)
