"""The static report's measurements: the traffic counter, the extrapolation to headline shapes, the sm_90 report.

Counter tests run kernels under the Triton interpreter on tiny shapes with the CUDA geometry
(``kernels._utils.launch_config(cuda_geometry=True)``). The sm_90 test compiles in worker processes without the
interpreter, skipped when this Triton cannot compile ahead of time here.
"""

from __future__ import annotations

import os
from fractions import Fraction

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the traffic counter needs the Triton interpreter (TRITON_INTERPRET=1)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from glsmamba.bench import static, static_ops, traffic  # noqa: E402
from glsmamba.bench.extrapolate import extrapolate_mode, solve  # noqa: E402
from glsmamba.kernels._utils import launch_config  # noqa: E402


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(y_ptr + o, tl.load(x_ptr + o, mask=m), mask=m)


@triton.jit
def _read_twice_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    a = tl.load(x_ptr + o, mask=m)
    b = tl.load(x_ptr + o, mask=m)  # the same elements again
    tl.store(y_ptr + o, a + b, mask=m)


def _launch(kernel, x, y, block=64):
    kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), BLOCK=block)


def test_copy_kernel_moves_exactly_its_compulsory_bytes():
    x = torch.randn(1000, dtype=torch.bfloat16)  # not a multiple of the block: masked lanes do not count
    y = torch.empty_like(x)
    with traffic.count() as tr:
        _launch(_copy_kernel, x, y)
    assert torch.equal(x, y)
    (la,) = tr.launches
    compulsory = 2 * x.numel() * 2  # read x once, write y once, bf16
    assert (la.lane, la.unique) == (compulsory, compulsory)
    assert (la.args["x_ptr"].unique_read, la.args["y_ptr"].unique_write) == (2000, 2000)
    assert la.programs == 16 and la.kernel.endswith("._copy_kernel")


def test_reading_twice_doubles_lane_bytes_and_two_launches_double_unique_bytes():
    x = torch.randn(1000, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    with traffic.count() as tr:
        _launch(_read_twice_kernel, x, y)
    (la,) = tr.launches
    assert la.args["x_ptr"].lane_read == 2 * 2000  # twice the compulsory read
    assert la.args["x_ptr"].unique_read == 2000  # one launch: perfect L2 reuse
    with traffic.count() as tr:  # the input read by two launches: twice the compulsory bytes
        _launch(_copy_kernel, x, y)
        _launch(_copy_kernel, x, y)
    assert sum(la.unique for la in tr.launches) == 2 * (2 * 2000)


def test_aliased_arguments_are_told_apart():
    """Two pointer arguments on one tensor: each access is attributed to the argument it went through."""
    x = torch.randn(256, dtype=torch.float32)
    with traffic.count() as tr:
        _launch(_copy_kernel, x[:128], x[128:])
    (la,) = tr.launches
    assert la.args["x_ptr"].unique_read == 512 and la.args["x_ptr"].unique_write == 0
    assert la.args["y_ptr"].unique_write == 512 and la.args["y_ptr"].unique_read == 0


def test_space_time_scan_moves_exactly_its_compulsory_bytes():
    from glsmamba.kernels.space_time import space_time_scan
    from glsmamba.reference.space_time import STS6D, scan_orders

    thw, B, C = (2, 4, 8), 2, 64
    orders = scan_orders(thw, STS6D)
    K, L = orders.shape
    x = torch.randn(B, L, C, dtype=torch.bfloat16)
    with launch_config(cuda_geometry=True):
        space_time_scan(x, orders)  # the group tables are built (and cached) by the first call
        with traffic.count() as tr:
            y = space_time_scan(x, orders)
    assert torch.equal(y, x[:, orders])
    (la,) = tr.launches
    p = dict(op="space_time_scan", B=B, L=L, C=C, dtype=torch.bfloat16)
    compulsory = static_ops.space_time_compulsory(p, "fwd")
    assert compulsory == x.numel() * 2 + orders.numel() * 8 + y.numel() * 2
    a = la.args
    assert (a["src_ptr"].unique_read, a["idx_ptr"].unique_read, a["out_ptr"].unique_write) == \
        (x.numel() * 2, orders.numel() * 8, y.numel() * 2)
    assert a["src_ptr"].lane_read == K * x.numel() * 2  # every direction reads all of x
    extra = la.unique + tr.torch_bytes() - compulsory
    assert extra == a["grp_ptr"].unique_read == 4 * K  # only the kernel's group-id table (int32 per direction)
    assert f"{(la.unique + tr.torch_bytes()) / compulsory:.2f}" == "1.00"


def test_torch_ops_between_launches_are_counted_views_are_free():
    a = torch.randn(8, 16)
    with traffic.count() as tr:
        b = a.t()  # a view: free
        c = b.contiguous()  # a copy: read 512 bytes, write 512
        tr.paused = True
        torch.ones(3)  # not recorded
        tr.paused = False
        c[:2].zero_()  # writes 2 * 8 floats, reads nothing
    assert [(o.read, o.written) for o in tr.torch_ops] == [(512, 512), (0, 64)]


def test_unknown_triton_release_is_refused(monkeypatch):
    monkeypatch.setattr(triton, "__version__", "3.7.1")
    with pytest.raises(RuntimeError, match=r"knows the interpreter of triton 3\.6, 3\.9"):
        traffic.check_triton()


def test_fast_scan_and_reduce_match_the_interpreter():
    """The counter's vectorised scan/reduce fallbacks against the interpreter's own (custom combine functions)."""
    from triton.runtime import interpreter as interp

    rng = torch.Generator().manual_seed(0)

    def tensor(data):
        return interp.ReduceScanOpInterface(0, None).to_tensor(data.numpy(), tl.int32)

    @triton.jit
    def combine(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2  # the affine combine, in exact integer arithmetic

    a = torch.randint(-3, 4, (8, 4), generator=rng, dtype=torch.int32)
    b = torch.randint(-3, 4, (8, 4), generator=rng, dtype=torch.int32)
    scope = interp._patch_lang(combine.fn)  # what a launch does before running kernel code
    try:
        ops = interp.ScanOps(0, combine, False)
        want = [t.handle.data for t in ops.generic_scan((tensor(a), tensor(b)))]
        got = [t.handle.data for t in traffic._fast_generic_scan(ops, (tensor(a), tensor(b)))]
        assert all((w == g).all() for w, g in zip(want, got, strict=True))
        red = interp.ReduceOps(1, combine, False)
        want = [t.handle.data for t in red.generic_reduce((tensor(a), tensor(b)))]
        got = [t.handle.data for t in traffic._fast_generic_reduce(red, (tensor(a), tensor(b)))]
        assert all((w == g).all() for w, g in zip(want, got, strict=True))
    finally:
        scope.restore()


def test_solve_is_exact_and_refuses_inconsistent_points():
    rows = [(1, 1), (1, 2), (1, 3)]
    assert solve([tuple(map(Fraction, r)) for r in rows], [Fraction(5), Fraction(7), Fraction(9)]) == [3, 2]
    with pytest.raises(ValueError, match="not linear"):
        solve([tuple(map(Fraction, r)) for r in rows], [Fraction(5), Fraction(7), Fraction(10)])


@pytest.mark.parametrize("family", ["selective_scan", "space_time_scan"])
def test_extrapolation_is_exact_on_a_point_outside_the_fit(family):
    """Fit every count of every mode on the spec's kind of reduced points, predict a larger point, count it."""
    if family == "selective_scan":  # N=4; chunks of 256 tokens; the backward's channels in 2 ranges
        base = dict(B=1, N=4, dtype=torch.bfloat16)
        spec = static_ops.selective_scan_spec(64)
        spec.points = [dict(base, D=16 * c, L=256 * s) for c in (1, 2) for s in (2, 3)]
        check = dict(base, D=48, L=1024)
        full = dict(check, splits=2)
    else:
        spec = static_ops.space_time_spec("space_time_scan")
        check = dict(spec.points[0], C=192, thw=(3, 4, 8), L=96)
        full = check
    counted = [static.count_point(spec, p, dict(spec.pin(p, full), scale=Fraction(1))) for p in spec.points]
    actual = static.count_point(spec, check, dict(spec.pin(check, full), scale=Fraction(1)))
    feats = [spec.features(p) for p in spec.points]
    for mode in static.MODES:
        got = static._mode_launches(actual, mode)
        ex = extrapolate_mode([static._mode_launches(c, mode) for c in counted], feats, got, spec.features(check))
        for k, e in ex.items():
            mine = [la for la in got if la["kernel"] == k]
            assert e["lane"] == sum(la["lane"] for la in mine), (mode, k)
            assert e["unique"] == sum(la["unique"] for la in mine), (mode, k)
            for loops, la in zip(e["launch_loops"], mine, strict=True):
                assert {line: int(v) for line, v in loops.items()} == {int(k): v for k, v in la["loops"].items()}


def test_compulsory_formulas_are_inputs_read_once_and_outputs_written_once():
    """Each op's formula against the byte sizes of the tensors it is called with (tiny shapes)."""
    for spec in static_ops.specs():
        p = spec.points[0]
        case = spec.build(p, True)
        with launch_config(cuda_geometry=True), traffic.capture():  # only the output's shape is needed
            out = case.run()
        from glsmamba.reference.space_time import STS6D, scan_orders

        tables = 0
        if spec.op == "ordered_selective_scan":
            orders, _, reset = static_ops._orders(p)
            tables = orders.numel() * 8 + (0 if reset is None else reset.numel())
        elif spec.op.startswith("space_time"):
            tables = scan_orders(p["thw"], STS6D).numel() * 8
        elif spec.op == "deformable_aggregate":
            tables = 9 * 3 * 8
        nbytes = sum(t.numel() * t.element_size() for t in case.leaves)
        outb = out.numel() * out.element_size()
        if spec.op.startswith("space_time"):  # linear ops: the backward does not read the forward input
            assert spec.compulsory(p, "fwd") == nbytes + tables + outb
            assert spec.compulsory(p, "bwd") == tables + outb + nbytes
        else:
            assert spec.compulsory(p, "fwd") == nbytes + tables + outb, spec.op
            assert spec.compulsory(p, "bwd") == 2 * nbytes + tables + outb, spec.op
        assert spec.compulsory(p, "fwd+bwd") == spec.compulsory(p, "fwd") + spec.compulsory(p, "bwd")


def test_count_cache_is_keyed_by_the_sources(tmp_path, monkeypatch):
    """A cached point is taken only while every source its count runs is unchanged; a round trip keeps it exactly."""
    files = [tmp_path / "kernel.py", tmp_path / "launcher.py"]
    for f in files:
        f.write_text("x = 1\n")
    monkeypatch.setattr(static, "_source_files", lambda op: files)
    digest = static.sources_digest("space_time_scan")
    spec = static_ops.space_time_spec("space_time_scan")
    counted = static.count_point(spec, spec.points[0], {})
    path = tmp_path / "counts.json"
    static.save_counts(path, {"p0": digest}, {"p0": counted})
    assert static.load_counts(path, {"p0": digest}) == {"p0": counted}
    assert static.load_counts(path, {"p1": digest}) == {}
    files[1].write_text("x = 2\n")  # a launcher edited: the op's cached points are stale
    assert static.sources_digest("space_time_scan") != digest
    assert static.load_counts(path, {"p0": static.sources_digest("space_time_scan")}) == {}


def test_count_cache_digest_covers_every_module_a_count_launches_from():
    """The modules of every kernel an op launches (captured at its first reduced point, forward and backward) are
    among the files of its digest, and so are the counter and the op builds."""
    import sys
    from pathlib import Path

    for spec in static_ops.specs():
        files = set(static._source_files(spec.op))
        assert {Path(traffic.__file__), Path(static_ops.__file__)} <= files
        with launch_config(cuda_geometry=True), traffic.capture() as tr:
            static._run_case(spec.build(spec.points[0], True), True, tr)
        modules = {la.kernel.rsplit(".", 1)[0] for la in tr.launches}
        assert modules, spec.op
        for m in modules:
            assert Path(sys.modules[f"glsmamba.{m}"].__file__) in files, (spec.op, m)


def test_readme_shows_the_committed_static_report(tmp_path):
    """The README section is the one ``write_readme`` makes from the committed static.md, and static.md's per-op
    table shows the committed static.csv's ``all`` rows (traffic ratio, estimate, roofline share, loop counts)."""
    import csv
    import shutil
    from pathlib import Path

    from glsmamba.bench.report_static import write_readme

    if not (static.RESULTS / "static.csv").exists() or not static.README.exists():
        pytest.skip("no committed static report next to this installation (not a source checkout)")
    md = (static.RESULTS / "static.md").read_text()
    readme = Path(shutil.copy(static.README, tmp_path / "README.md"))
    write_readme(md, readme)
    assert readme.read_text() == static.README.read_text(), "README static section is not static.md's: rerun"
    with open(static.RESULTS / "static.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kernel"] == "all" and not r["op"].endswith("_unfused")]
    table = md.split("## Per op (kernel `all`)\n", 1)[1].split("## ", 1)[0]
    shown = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
             for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")}
    assert len(shown) == len(rows) + 1 > 1  # + the header
    for r in rows:
        cells = shown[(r["op"], r["shape"], r["mode"])]  # KeyError: a CSV row the table does not show
        # the CSV keeps one more decimal than the table, both rounded from one float: half a unit of each apart
        for i, col, places in ((0, "traffic_ratio", 2), (1, "est_us", 1), (3, "est_pct_roofline", 1),
                               (5, "loop_instr_per_elem_state", 1)):
            assert abs(float(cells[i]) - float(r[col])) <= 0.55 * 10.0 ** -places, (col, cells[i], r[col])
        assert cells[7:] == [r["regs"], r["spills"]], r
