"""From counts on reduced shapes to counts at the headline shape: exact linear models, checked.

The traffic counter (``bench/traffic.py``) cannot interpret a headline-size launch within minutes (~10-30 ms per
program per loop iteration). Programs along channel blocks, batch rows and sequence tiles repeat the same code on
other data, so every count of an op is a fixed linear combination of a few *features* of its shape (for the
selective scan: 1, D, L and D*L; for the ordered scan also the number of backward launches). Each op's spec
(``bench/static_ops.py``) names its features and a few reduced shapes (points) that keep everything that shapes
the launches (block sizes, tiles per chunk, launch counts: pinned through ``kernels._utils.launch_config``). The
counts at the points are solved for the coefficients (exact rational arithmetic; more points than features must
agree exactly), and the model is evaluated at the headline shape.

What is extrapolated, per op, mode and kernel function (all launches of a kernel summed):

* lane bytes and unique bytes;
* loop iterations per source line (the trip counts behind the SASS loops). When a kernel makes the same number of
  launches at every point and at the headline shape, they are extrapolated per launch and per program and
  multiplied by the headline launch's program count (a launch whose channel block grows with the channel count,
  like the selective scan's carry kernel, then still comes out right); otherwise as totals.

The torch ops between launches need no model: their bytes depend on shapes only, so they are counted on the
headline shape itself while its launches are captured (``bench.traffic.capture``).

Limits (each checked or stated): a model is exact when every program of a kind touches data of the same size and
the overlap between programs does not change with the cut; the tests check that on a point outside the fit
(``tests/test_static_report.py``). Lane bytes of data every channel block re-reads (index tables) are exact only
where the block size does not change between the points and the headline shape. Specs that scale a count rather
than extrapolate it say so (``OpSpec.exact``, ``OpSpec.note``), and the report flags their rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any


def solve(rows: Sequence[Sequence[Fraction]], values: Sequence[Fraction]) -> list[Fraction]:
    """Coefficients ``c`` with ``rows @ c == values`` exactly (Gauss-Jordan over rationals).

    Raises:
        ValueError: the features are not independent over the points, or more points than features disagree.
    """
    n = len(rows[0])
    m = [list(map(Fraction, r)) + [Fraction(v)] for r, v in zip(rows, values, strict=True)]
    pivots: list[int] = []
    r = 0
    for col in range(n):
        piv = next((i for i in range(r, len(m)) if m[i][col] != 0), None)
        if piv is None:
            raise ValueError(f"feature {col} is not determined by the points (singular system)")
        m[r], m[piv] = m[piv], m[r]
        lead = m[r][col]
        m[r] = [x / lead for x in m[r]]
        for i in range(len(m)):
            if i != r and m[i][col] != 0:
                f = m[i][col]
                m[i] = [a - f * b for a, b in zip(m[i], m[r], strict=True)]
        pivots.append(col)
        r += 1
    for i in range(r, len(m)):
        if m[i][n] != 0:
            raise ValueError("the counts are not linear in the features: an extra point disagrees with the model")
    return [m[i][n] for i in range(n)]


def fit(features: Sequence[Sequence[Fraction]], values: Sequence[int | Fraction],
        at: Sequence[Fraction]) -> Fraction:
    """The linear model through ``(features[i], values[i])`` evaluated at ``at``."""
    if all(v == values[0] for v in values) and values[0] == 0:
        return Fraction(0)
    coef = solve(features, [Fraction(v) for v in values])
    return sum((c * Fraction(a) for c, a in zip(coef, at, strict=True)), Fraction(0))


def kernels_of(launches: Sequence[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for la in launches:
        if la["kernel"] not in out:
            out.append(la["kernel"])
    return out


def extrapolate_mode(point_launches: Sequence[Sequence[dict[str, Any]]], point_features: Sequence[Sequence[Fraction]],
                     full_launches: Sequence[dict[str, Any]], full_features: Sequence[Fraction],
                     integral: bool = True, multiplier: Fraction = Fraction(1)) -> dict[str, dict[str, Any]]:
    """Per kernel of one (op, mode): lane and unique bytes, and loop iterations per launch of the full shape.

    ``point_launches[i]``: the counted launches of point i (dicts with kernel, programs, lane, unique, loops);
    ``full_launches``: the captured launches of the full shape (kernel, programs); ``multiplier`` scales the
    extensive counts (bytes, loop totals) of a spec that counts a fraction of the full shape (per-program trip
    counts are not scaled: the full launch's program count already is). Returns kernel ->
    {"lane", "unique", "launch_loops": [per full launch of the kernel: {line: iterations}]}.
    """
    names = kernels_of(full_launches)
    for i, pl in enumerate(point_launches):
        if kernels_of(pl) != names:
            raise ValueError(f"point {i} launches kernels {kernels_of(pl)}, the full shape {names}: the reduced "
                             "shapes do not reproduce the launch structure")
    out: dict[str, dict[str, Any]] = {}
    for k in names:
        mine = [[la for la in pl if la["kernel"] == k] for pl in point_launches]
        full = [la for la in full_launches if la["kernel"] == k]
        res: dict[str, Any] = {}
        for q in ("lane", "unique"):
            v = fit(point_features, [sum(la[q] for la in m) for m in mine], full_features) * multiplier
            res[q] = _integer(v, integral, f"{k} {q}")
        lines = sorted({int(line) for m in mine for la in m for line in la["loops"]})
        if all(len(m) == len(full) for m in mine):  # per launch, per program
            res["launch_loops"] = []
            for j, fl in enumerate(full):
                loops = {}
                for line in lines:
                    per_prog = [Fraction(m[j]["loops"].get(str(line), m[j]["loops"].get(line, 0)), m[j]["programs"])
                                for m in mine]
                    loops[line] = fit(point_features, per_prog, full_features) * fl["programs"]
                res["launch_loops"].append(loops)
        else:  # totals, shared among the full launches in proportion to their programs
            progs = sum(fl["programs"] for fl in full)
            totals = {line: multiplier * fit(point_features, [sum(la["loops"].get(str(line), la["loops"].get(line, 0))
                                                                 for la in m) for m in mine], full_features)
                      for line in lines}
            res["launch_loops"] = [{line: t * fl["programs"] / progs for line, t in totals.items()} for fl in full]
        out[k] = res
    return out


def _integer(v: Fraction, integral: bool, what: str) -> int:
    if v < 0:
        raise ValueError(f"{what}: the model predicts a negative count ({v})")
    if integral and v.denominator != 1:
        raise ValueError(f"{what}: the model predicts a fractional byte count ({v}): it is not exact here")
    return round(v)
