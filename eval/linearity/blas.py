"""The Gram matrix X^T X of a float64 CPU matrix through BLAS's syrk (scipy's OpenBLAS): torch has no syrk.

X^T X is symmetric, so syrk computes half of it: n d (d + 1) flops instead of a product's 2 n d^2. Without it,
``symmetric_gram`` (score.py) builds the product from its upper block triangle, 0.66-0.70 of a full product's
time at d = 768; syrk takes 0.51-0.54 (15,000 x 768, one and two threads; docs/PERFORMANCE.md). The Gram matrices
are about a third of a linearity profile's float64 work.

scipy's ``cython_blas`` exports BLAS's Fortran routines as C function pointers; calling the pointer through ctypes
passes torch's memory (strides and storage offset included) without a copy, so row slices of a column-major
array (the held-out folds) go in as they are, with their leading dimension.

Threads: OpenBLAS's own pool fights torch's. Its workers spin for a while after each call, and torch's OpenMP
workers after each of theirs, so on 2 cores with 2 threads each a syrk between torch calls measured 1.3-12x
slower than torch's product (8 ms of latency for 4000 x 128). Instead the rows are split into as many bands as
torch has threads, each band's syrk runs single-threaded in a Python thread of its own (ctypes releases the GIL),
and the bands' Gram matrices are summed: no BLAS pool is woken, and the work is split evenly. Where the rows are too
few for a band per thread (many cores), torch's product keeps every thread busy instead.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import torch

_INT_MAX = 2**31 - 1  # scipy's BLAS takes 32-bit Fortran integers
# Below this many multiply-adds (n d^2; ~5 ms of a float64 product on one core) torch's own product is used: the
# call's fixed cost (threads, thread limits, ctypes) is ~0.1 ms, and 4000 x 64 gained only 20 % on one thread.
_MIN_WORK = 2**28
_MIN_BAND = 256  # rows per band at least: thinner bands fall off BLAS speed


@functools.cache
def _dsyrk():
    """(BLAS's dsyrk, a threadpoolctl controller), or None where scipy's BLAS cannot be reached."""
    try:
        from scipy.linalg import cython_blas
        from threadpoolctl import ThreadpoolController
    except ImportError:  # scipy is in every install path; a stripped environment keeps torch's block triangle
        return None
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_blas.__pyx_capi__["dsyrk"]
    pointer = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    i, d, p, c = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_double), ctypes.c_void_p, ctypes.c_char_p
    # void dsyrk(char *uplo, char *trans, int *n, int *k, double *alpha, double *a, int *lda, double *beta,
    #            double *c, int *ldc)
    return ctypes.CFUNCTYPE(None, c, c, i, i, d, p, i, d, p, i)(pointer), ThreadpoolController()


def upper_gram(x: torch.Tensor) -> torch.Tensor | None:
    """The d x d matrix whose upper triangle (row-major view) is x^T x, its lower triangle left undefined, for a
    column-major float64 x on the CPU; None where syrk is not used (another layout, dtype or device, a product
    under ``_MIN_WORK``, too few rows for a band per thread, no scipy): the caller then computes the product
    itself."""
    if x.device.type != "cpu" or x.dtype != torch.float64 or x.dim() != 2:
        return None
    rows, cols = x.shape
    lead = x.stride(1)
    if x.stride(0) != 1 or lead < rows or max(rows, cols, lead) > _INT_MAX or rows * cols * cols < _MIN_WORK:
        return None
    # One band per torch thread, each at least _MIN_BAND rows and (the bands' d x d partial sums together no larger
    # than x) at least d rows. Where that leaves threads idle (many cores, few rows), torch's product uses them all.
    bands = torch.get_num_threads()
    if bands > 1 and rows < bands * max(_MIN_BAND, cols):
        return None
    found = _dsyrk()
    if found is None:
        return None
    dsyrk, controller = found
    edges = [rows * j // bands for j in range(bands + 1)]
    parts = [torch.empty(cols, cols, dtype=torch.float64) for _ in range(bands)]
    n, one, zero, ld = ctypes.c_int(cols), ctypes.c_double(1.0), ctypes.c_double(0.0), ctypes.c_int(lead)

    def band(j: int) -> None:
        # Fortran's A is the band's rows x cols (column-major, leading dimension ``lead``): its "L" triangle of
        # A^T A, column-major, is the upper triangle of the row-major part.
        k = ctypes.c_int(edges[j + 1] - edges[j])
        dsyrk(b"L", b"T", ctypes.byref(n), ctypes.byref(k), ctypes.byref(one),
              ctypes.c_void_p(x.data_ptr() + x.element_size() * edges[j]), ctypes.byref(ld), ctypes.byref(zero),
              ctypes.c_void_p(parts[j].data_ptr()), ctypes.byref(n))

    with controller.limit(limits=1, user_api="blas"):
        workers = [threading.Thread(target=band, args=(j,)) for j in range(1, bands)]
        for w in workers:
            w.start()
        band(0)
        for w in workers:
            w.join()
    out = parts[0]
    for part in parts[1:]:
        out += part
    return out
