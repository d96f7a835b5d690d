"""NumPy's classic introsort ``argsort``, transcribed, so that tied scores rank as poseval ranks them.

poseval ranks the detections of one joint type with ``numpy.argsort(scores)[::-1]`` (``eval_helpers.computeRPC``):
ascending by NumPy's default ``kind="quicksort"``, then reversed. That sort is not stable, so the order of equal
scores is whatever the algorithm leaves, and it decides the AP whenever scores tie (submissions without scores tie
everywhere). The classic algorithm (NumPy's ``npysort/quicksort`` ``aquicksort_``: median-of-3 quicksort with
a heapsort fallback below a depth of 2 * floor(log2 n), insertion sort for partitions of at most 17 elements;
the same in every NumPy up to 1.24 and on every CPU) is transcribed here. NumPy >= 1.25 dispatches ``argsort`` to
SIMD sorting networks on CPUs with AVX-512 (NumPy 2 also with AVX2), which order ties differently from one machine
to another; the classic order is the portable one, and the one poseval's published numbers were computed with.

Comparisons use NumPy's ``a < b or (b is NaN and a is not)``: NaN sorts after every number.
"""

from __future__ import annotations

import numpy as np

_SMALL = 16  # SMALL_QUICKSORT: partitions of at most 17 elements are insertion-sorted


def _less(a: float, b: float) -> bool:
    return a < b or (b != b and a == a)


def classic_argsort(values) -> np.ndarray:
    """Ascending ``argsort`` exactly as NumPy's classic ``kind="quicksort"`` (introsort) computes it."""
    v = [float(x) for x in np.asarray(values, dtype=np.float64).ravel()]
    idx = list(range(len(v)))
    if len(v) < 2:
        return np.asarray(idx, dtype=np.intp)
    stack: list[tuple[int, int, int]] = []
    pl, pr = 0, len(v) - 1
    cdepth = (len(v).bit_length() - 1) * 2
    while True:
        if cdepth < 0:
            _heapsort(v, idx, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL:
                pl, pr, push = _partition(v, idx, pl, pr)
                cdepth -= 1
                stack.append((*push, cdepth))
            _insertion_sort(v, idx, pl, pr)
        if not stack:
            break
        pl, pr, cdepth = stack.pop()
    return np.asarray(idx, dtype=np.intp)


def _partition(v: list[float], idx: list[int], pl: int, pr: int) -> tuple[int, int, tuple[int, int]]:
    """One median-of-3 partition of ``idx[pl..pr]``; returns the part to continue with and the part to push."""
    pm = pl + ((pr - pl) >> 1)
    if _less(v[idx[pm]], v[idx[pl]]):
        idx[pm], idx[pl] = idx[pl], idx[pm]
    if _less(v[idx[pr]], v[idx[pm]]):
        idx[pr], idx[pm] = idx[pm], idx[pr]
    if _less(v[idx[pm]], v[idx[pl]]):
        idx[pm], idx[pl] = idx[pl], idx[pm]
    vp = v[idx[pm]]
    pi, pj = pl, pr - 1
    idx[pm], idx[pj] = idx[pj], idx[pm]
    while True:
        pi += 1
        while _less(v[idx[pi]], vp):
            pi += 1
        pj -= 1
        while _less(vp, v[idx[pj]]):
            pj -= 1
        if pi >= pj:
            break
        idx[pi], idx[pj] = idx[pj], idx[pi]
    idx[pi], idx[pr - 1] = idx[pr - 1], idx[pi]
    if pi - pl < pr - pi:  # the larger part goes on the stack
        return pl, pi - 1, (pi + 1, pr)
    return pi + 1, pr, (pl, pi - 1)


def _insertion_sort(v: list[float], idx: list[int], pl: int, pr: int) -> None:
    for pi in range(pl + 1, pr + 1):
        vi = idx[pi]
        vp = v[vi]
        pj = pi
        while pj > pl and _less(vp, v[idx[pj - 1]]):
            idx[pj] = idx[pj - 1]
            pj -= 1
        idx[pj] = vi


def _heapsort(v: list[float], idx: list[int], start: int, n: int) -> None:
    """NumPy's ``aheapsort_`` on ``idx[start:start + n]`` (1-based heap, as the C code)."""
    b = start - 1

    def sift(i: int, tmp: int, n: int) -> None:
        j = i << 1
        while j <= n:
            if j < n and _less(v[idx[b + j]], v[idx[b + j + 1]]):
                j += 1
            if _less(v[tmp], v[idx[b + j]]):
                idx[b + i] = idx[b + j]
                i, j = j, j + j
            else:
                break
        idx[b + i] = tmp

    for i in range(n >> 1, 0, -1):
        sift(i, idx[b + i], n)
    while n > 1:
        tmp = idx[b + n]
        idx[b + n] = idx[b + 1]
        n -= 1
        sift(1, tmp, n)


def poseval_ranking(scores) -> np.ndarray:
    """The order in which poseval ranks ``scores`` (best first): ``classic_argsort(scores)[::-1]``.

    Without ties every sort gives the same order, so NumPy's own (fast) sort is used then.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(s)) == len(s) and not np.isnan(s).any():
        return np.argsort(s, kind="stable")[::-1]
    return classic_argsort(s)[::-1]
