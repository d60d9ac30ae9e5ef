"""Every size and layout threshold of xent, in one leaf module (it imports nothing).

Which code runs a call depends on its size in three places, and each reads its numbers here:

- `xent._dispatch.backend_for`: NumPy or the Numba kernels for a core call (``AUTO_*``);
- `xent.torch._route.plan`: PyTorch's own op or xent for a drop-in call (``MIN_ELEMENTS``,
  ``MIN_CLASSES``);
- the kernels' own blocking and threading (``SINGLE_THREAD_ELEMENTS``, ``ROW_BLOCK*``,
  ``TILE_BYTES`` ...) and the chunking of `xent.torch.linear_cross_entropy`.

Each number was chosen from a measurement: the benchmark that measured it is named beside it,
and its results are in ``benchmarks/README.md``. Nothing else in the package writes one of them
down again; tests pin them by value (``tests/test_thresholds.py``).
"""

from __future__ import annotations

# -- xent._dispatch: NumPy or the kernels (``auto``) -------------------------------------------

#: ``auto`` uses a kernel from this many elements (rows × cols) on, chosen from
#: ``benchmarks/bench_kernels.py --crossover``: below it the kernels save a few microseconds per
#: call, which does not pay for importing Numba and loading or compiling the kernels on first
#: use, so small calls stay on NumPy.
AUTO_MIN_ELEMENTS = 1 << 16
AUTO_MIN_ELEMENTS_BY_OP = {"bce_logits": 1 << 16}

#: ``auto`` runs a row op on rows of fewer classes than this (float32/float64 storage, 16-bit
#: storage) on NumPy while the kernels would run it on one thread (fewer than
#: `SINGLE_THREAD_ELEMENTS`): a row kernel pays about 115 ns per row beyond its per-element
#: work, which NumPy's reductions along short rows do not ("Dispatch thresholds": at 65536
#: float32 rows the index cross-entropy kernel took 2.5x NumPy's time at 4 classes, 2.0x at 8,
#: 0.83x at 16; softmax 1.6x, 1.2x, 0.48x). NumPy's 16-bit path converts to float32 and back,
#: so there the kernels win from fewer classes.
AUTO_MIN_COLS_BY_OP = {"ce_index": (16, 12), "softmax": (16, 8), "log_softmax": (16, 8),
                       "ce_prob": (8, 4)}

#: Below this many elements (or with one row) a kernel runs on the calling thread alone: the
#: hand-off to a helper thread costs tens of microseconds. From 1M elements (~1 ms of serial
#: work; e.g. a (512, 2048) float32 cross-entropy) a second core pays off; on two threads the
#: row kernels win on short rows too, but for the index cross-entropy on 4 to 8 classes (1.3x to
#: 1.0x), which `AUTO_MIN_COLS_BY_OP` takes into account.
SINGLE_THREAD_ELEMENTS = 1 << 20
#: Blocks of rows per thread (`xent._kernels._threads`): enough for the threads to balance.
BLOCKS_PER_THREAD = 4

# -- the kernels' blocking (`xent._kernels`) ---------------------------------------------------

#: Block length of the row kernels' online max / sum-of-exp pass: 2048 float32 = 8 KiB stays in
#: L1 between the block's max loop and its exp loop.
ROW_BLOCK = 2048
#: The same for the pass that stores the exps of a 16-bit row (`_rows._store_block`). Measured
#: one thread, rows of 32768 from memory, CE forward+backward: bfloat16 0.561 ns/element at 2048,
#: 0.516 at 4096, 0.476 at 8192, 0.462 at 16384, where float32 is fastest at 2048.
ROW_BLOCK16 = 16384

#: Class axis not last, ``(A, C, B)`` layout (`_kernels._kdim`): a tile (one a, up to bt
#: positions b, all C classes) of at most TILE_BYTES stays in L2 between its passes (half of a
#: 1 MiB per-core L2, leaving room for the gradient being written); a chunk of CHUNK_BYTES (cc
#: classes × bt positions) stays in L1 between the online max and the exps of pass 1. MAX_TILE
#: keeps the per-position scratch in L1.
TILE_BYTES = 256 << 10
CHUNK_BYTES = 16 << 10
MAX_TILE = 2048
#: With a tile of all B positions, R consecutive class rows are processed as one run of about
#: GROUP_LANES contiguous values: a loop over 16 or 32 lanes alone runs at half speed (measured
#: 0.69 / 0.45 ns per float32 element against 0.35 from 128 lanes on).
GROUP_LANES = 128

# -- xent.torch: PyTorch's op or xent's (`xent.torch._route`) ----------------------------------

#: Below this many input elements a drop-in runs PyTorch's own op even where xent's could: a
#: call through the bridge and the core has a fixed cost (autograd Function, validation, NumPy
#: views, kernel dispatch) above PyTorch's whole loss on a small batch (the crossover of the
#: forced path with PyTorch's op, ``benchmarks/bench_small.py``). 0 sends every call xent can
#: compute to xent. `xent.torch.set_min_elements` changes it (the one mutable threshold).
MIN_ELEMENTS = 1 << 19

#: Cross-entropy and NLL rows of fewer classes than this run PyTorch's op whatever their number
#: (unless the cut-off is 0): xent's row kernels pay a cost per row that PyTorch's vectorised
#: loss does not, and lose to it on short rows at every size (same measurement).
MIN_CLASSES = 1024

# -- xent.torch.linear_cross_entropy's chunks (`xent.torch._linear`) ---------------------------

#: Bytes of the ``(chunk_size, V)`` logits buffer when ``chunk_size`` is not given: the chunk's
#: row count is ``DEFAULT_CHUNK_BYTES // (V * itemsize)``, at least `MIN_CHUNK_ROWS` (512 rows at
#: V=65536 in float32). Chosen from the chunk-size sweep in docs/torch.md: smaller chunks make the
#: ``grad_W += dz.T @ x`` update stream the whole ``(V, H)`` gradient more often; larger ones add
#: memory and gain nothing measurable.
DEFAULT_CHUNK_BYTES = 128 * 2**20
MIN_CHUNK_ROWS = 64
#: Bytes of the float32 copy of one vocabulary block of a chunk's gradient (`_linear._GradW`).
GW_BLOCK_BYTES = 8 * 2**20
