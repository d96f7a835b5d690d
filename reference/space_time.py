"""Space-time scan orders over a ``(T, H, W)`` token grid, and the gather / grouped scatter-add that apply them.

Tokens are channel-last ``(Bsz, L, C)`` in natural order ``l = (t*H + h)*W + w``. A scan order is an int64
permutation ``perm`` of ``range(L)``: ``perm[j]`` is the natural index of the token read at scan step ``j``.

- :func:`scan_order` builds the six STS6D orders: ``spatial`` ``(t, h, w)`` raster, ``temporal`` ``(h, w, t)``
  (t fastest), ``unified`` the ``H x (T*W)`` panorama read row by row ``(h, t, w)`` (w fastest), and the three
  flipped ``*_rev`` orders.
- :func:`window_order` builds the WSTS tube order (``wh x ww x T`` windows in raster order over the window grid,
  frame-major inside a window) and a ``reset`` flag marking where each window (an independent segment) starts.
- :func:`space_time_scan` gathers ``x`` into ``K`` scan orders; :func:`space_time_merge` is its adjoint: the
  scatter-add back to natural order, summing the directions of each output group.

The index functions are pure functions of the shape and are cached per ``(shape, device)``: the returned tensors
are shared, never modify them in place. Validation helpers here (``_check_*``) are shared with ``kernels/`` so that
both backends reject bad input with the same errors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

STS6D: tuple[str, ...] = ("unified", "spatial", "temporal", "unified_rev", "spatial_rev", "temporal_rev")
"""The paper's six global orders y1..y6; ``STS6D[k]`` and ``STS6D[k + 3]`` are one type forward and reversed."""

STS6D_GROUPS: tuple[int, ...] = (0, 1, 2, 0, 1, 2)
"""The merge group of each :data:`STS6D` order: one group per scan type (forward and reversed summed together)."""

DEFAULT_WINDOW: tuple[int, int] = (8, 6)
"""WSTS window (rows, cols); each tube spans all T frames."""

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------------------------------------------
# validation helpers (shared with kernels/)
# --------------------------------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int], argname: str = "shape") -> tuple[int, int, int]:
    """``shape`` as a tuple of three positive ints ``(T, H, W)``."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{argname} must be a sequence of three ints (T, H, W), got {shape!r}") from None
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"{argname} must be a sequence of three ints (T, H, W), got {shape!r}")
    if any(d < 1 for d in dims):
        raise ValueError(f"{argname} must have T, H, W >= 1, got {dims}")
    return dims  # type: ignore[return-value]


def _device_of(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _check_tensor(t: object, argname: str, ndim: int, dtypes: tuple[torch.dtype, ...] | None = FLOAT_DTYPES,
                  what: str = "") -> torch.Tensor:
    """``t`` must be a tensor of rank ``ndim`` with a dtype in ``dtypes``; returns it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{argname} must be a torch.Tensor{what}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{argname} must have {ndim} dims{what}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{argname} must have dtype in ({names}), got {t.dtype} (shape {tuple(t.shape)})")
    return t


def _check_same_device(ref: torch.Tensor, refname: str, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {refname} is on {ref.device}; move them to one device")


# orders tensors already checked to be permutations: tensor -> (version, inverse permutation)
_VERIFIED_ORDERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _check_orders(orders: object, L: int | None = None, argname: str = "orders") -> torch.Tensor:
    """Check ``orders`` is an int64 ``(K, L)`` tensor whose every row is a permutation of ``range(L)``.

    Returns the inverse permutations ``inv`` ``(K, L)`` (``inv[k, orders[k, j]] = j``). The result is cached per
    tensor object and version, so a fixed order tensor is checked (one device sync) only once.
    """
    if not isinstance(orders, torch.Tensor):
        raise TypeError(f"{argname} must be an int64 torch.Tensor of shape (K, L), got {type(orders).__name__}")
    if orders.dim() != 2:
        raise ValueError(f"{argname} must have shape (K, L), got shape {tuple(orders.shape)}")
    if orders.dtype != torch.int64:
        raise TypeError(f"{argname} must have dtype int64, got {orders.dtype} (shape {tuple(orders.shape)})")
    K, n = orders.shape
    if K < 1:
        raise ValueError(f"{argname} must hold at least one order, got shape {tuple(orders.shape)}")
    if L is not None and n != L:
        raise ValueError(f"{argname} must have shape (K, {L}) (L tokens), got shape {tuple(orders.shape)}")
    hit = _VERIFIED_ORDERS.get(orders)
    if hit is not None and hit[0] == orders._version:
        return hit[1]
    ar = torch.arange(n, device=orders.device)
    if not torch.equal(orders.sort(dim=1).values, ar.expand(K, n)):
        bad = [k for k in range(K) if not torch.equal(orders[k].sort().values, ar)]
        raise ValueError(f"{argname} rows must be permutations of range({n}); row(s) {bad} of shape "
                         f"{tuple(orders.shape)} are not (repeated or out-of-range indices)")
    inv = _inverse_permutations(orders)
    _VERIFIED_ORDERS[orders] = (orders._version, inv)
    return inv


def _inverse_permutations(orders: torch.Tensor) -> torch.Tensor:
    """``inv[k, orders[k, j]] = j`` for each row of ``orders (K, L)`` (rows already known to be permutations)."""
    K, n = orders.shape
    return torch.empty_like(orders).scatter_(1, orders, torch.arange(n, device=orders.device).expand(K, n))


def _check_groups(groups: object, K: int, argname: str = "groups") -> tuple[int, ...]:
    """``groups`` as a tuple of K ints using every id in ``0..G-1`` (G = max + 1)."""
    if isinstance(groups, torch.Tensor):
        groups = groups.tolist()
    try:
        gs = tuple(groups)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{argname} must be a sequence of {K} ints, got {groups!r}") from None
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in gs):
        raise TypeError(f"{argname} must be a sequence of ints, got {gs!r}")
    if len(gs) != K:
        raise ValueError(f"{argname} must have one group id per direction (K={K}), got {len(gs)}: {gs}")
    if min(gs) < 0:
        raise ValueError(f"{argname} ids must be >= 0, got {gs}")
    G = max(gs) + 1
    missing = sorted(set(range(G)) - set(gs))
    if missing:
        raise ValueError(f"{argname} must use every id in 0..{G - 1} (G = max + 1), ids {missing} unused in {gs}")
    return gs


def _check_reset(reset: object, K: int, L: int, ref: torch.Tensor, argname: str = "reset") -> torch.Tensor | None:
    if reset is None:
        return None
    r = _check_tensor(reset, argname, 2, (torch.bool,), what=f" of shape ({K}, {L})")
    if tuple(r.shape) != (K, L):
        raise ValueError(f"{argname} must have shape (K, L) = ({K}, {L}), got shape {tuple(r.shape)}")
    _check_same_device(ref, "x", **{argname: r})
    return r


def _check_scan(x: object, orders: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_tensor(x, "x", 3, what=" (Bsz, L, C)")
    inv = _check_orders(orders, x.shape[1])
    _check_same_device(x, "x", orders=orders)  # type: ignore[arg-type]
    return x, inv


def _check_merge(ys: object, orders: object, groups: object) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    ys = _check_tensor(ys, "ys", 4, what=" (Bsz, K, L, C)")
    if not isinstance(orders, torch.Tensor) or orders.dim() != 2:
        _check_orders(orders)  # raises the type/shape error
    if tuple(orders.shape) != tuple(ys.shape[1:3]):  # type: ignore[union-attr]
        raise ValueError(f"orders must have shape (K, L) = {tuple(ys.shape[1:3])} to match ys of shape "
                         f"{tuple(ys.shape)}, got shape {tuple(orders.shape)}")  # type: ignore[union-attr]
    inv = _check_orders(orders, ys.shape[2])
    _check_same_device(ys, "ys", orders=orders)  # type: ignore[arg-type]
    gs = _check_groups(groups, ys.shape[1])
    return ys, inv, gs


# --------------------------------------------------------------------------------------------------------------
# orders
# --------------------------------------------------------------------------------------------------------------


def _register(order: torch.Tensor) -> torch.Tensor:
    """Mark a freshly built (K, L) permutation table as checked (its inverse is computed here)."""
    _VERIFIED_ORDERS[order] = (order._version, _inverse_permutations(order))
    return order


@functools.lru_cache(maxsize=512)
def _scan_order_cached(T: int, H: int, W: int, name: str, device: torch.device) -> torch.Tensor:
    grid = torch.arange(T * H * W, dtype=torch.int64).view(T, H, W)
    base = name[:-4] if name.endswith("_rev") else name
    if base == "spatial":
        perm = grid.reshape(-1)
    elif base == "temporal":
        perm = grid.permute(1, 2, 0).reshape(-1)  # (h, w, t), t fastest
    else:  # unified: panorama rows h, then frames t side by side, then columns w
        perm = grid.permute(1, 0, 2).reshape(-1)  # (h, t, w), w fastest
    if name.endswith("_rev"):
        perm = perm.flip(0)
    return perm.contiguous().to(device)


def scan_order(shape: Sequence[int], name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """One STS6D scan order over a ``(T, H, W)`` grid.

    Args:
        shape: ``(T, H, W)``.
        name: one of :data:`STS6D`: ``"spatial"`` ``(t, h, w)`` raster (= ``arange(L)``), ``"temporal"``
            ``(h, w, t)`` with t fastest, ``"unified"`` the ``H x (T*W)`` panorama row by row ``(h, t, w)`` with
            w fastest; ``"<type>_rev"`` is the same order flipped.
        device: where the result lives (default CPU).

    Returns:
        LongTensor ``[L]``, ``perm[j]`` = natural index ``(t*H + h)*W + w`` of the token read at step ``j``.
        Cached and shared: do not modify it in place.

    Example:
        >>> scan_order((2, 2, 3), "temporal")[:4].tolist()
        [0, 6, 1, 7]
    """
    T, H, W = _check_shape(shape)
    if not isinstance(name, str) or name not in STS6D:
        raise ValueError(f"name must be one of {STS6D}, got {name!r}")
    return _scan_order_cached(T, H, W, name, _device_of(device))


@functools.lru_cache(maxsize=256)
def _scan_orders_cached(T: int, H: int, W: int, names: tuple[str, ...], device: torch.device) -> torch.Tensor:
    return _register(torch.stack([_scan_order_cached(T, H, W, n, device) for n in names]))


def scan_orders(shape: Sequence[int], names: Sequence[str] = STS6D,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Stack of :func:`scan_order` for ``names``: LongTensor ``[K, L]`` (cached; do not modify in place)."""
    T, H, W = _check_shape(shape)
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of order names, got the string {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError("names must hold at least one order name, got an empty sequence")
    for n in names:
        if not isinstance(n, str) or n not in STS6D:
            raise ValueError(f"names entries must be in {STS6D}, got {n!r}")
    return _scan_orders_cached(T, H, W, names, _device_of(device))


def _check_window(window: object) -> tuple[int, int]:
    try:
        wh, ww = window  # type: ignore[misc]
    except (TypeError, ValueError):
        raise TypeError(f"window must be a pair of ints (rows, cols), got {window!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (wh, ww)):
        raise TypeError(f"window must be a pair of ints (rows, cols), got {window!r}")
    if wh < 1 or ww < 1:
        raise ValueError(f"window must have rows, cols >= 1, got {(wh, ww)}")
    return wh, ww


@functools.lru_cache(maxsize=256)
def _window_order_cached(T: int, H: int, W: int, wh: int, ww: int, reverse: bool,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.arange(T * H * W, dtype=torch.int64).view(T, H, W)
    parts, starts = [], []
    for h0 in range(0, H, wh):
        for w0 in range(0, W, ww):
            tube = grid[:, h0:h0 + wh, w0:w0 + ww].reshape(-1)  # frame-major raster inside the window
            parts.append(tube.flip(0) if reverse else tube)
            starts.append(tube.numel())
    if reverse:
        parts, starts = parts[::-1], starts[::-1]
    order = torch.cat(parts)
    reset = torch.zeros(order.numel(), dtype=torch.bool)
    reset[torch.tensor([0] + starts[:-1]).cumsum(0)] = True
    return order.to(device), reset.to(device)


def window_order(shape: Sequence[int], window: Sequence[int] = DEFAULT_WINDOW, reverse: bool = False,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """WSTS order: ``wh x ww x T`` tubes, windows in raster order, frame-major ``(t, h, w)`` inside each window.

    Border windows are smaller when ``wh`` / ``ww`` do not divide ``H`` / ``W`` (no token dropped, no padding).

    Args:
        shape: ``(T, H, W)``.
        window: ``(wh, ww)`` rows and columns of a window (default ``(8, 6)``).
        reverse: the flipped order (windows last-to-first, each read backwards).
        device: where the results live (default CPU).

    Returns:
        ``(order, reset)``: LongTensor ``[L]`` (natural index read at step j) and BoolTensor ``[L]``, True at the
        first step of each window in this sequence (always at j = 0). Cached: do not modify in place.

    Example:
        >>> o, r = window_order((1, 2, 3), (2, 2))
        >>> o.tolist(), r.tolist()
        ([0, 1, 3, 4, 2, 5], [True, False, False, False, True, False])
    """
    T, H, W = _check_shape(shape)
    wh, ww = _check_window(window)
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {reverse!r}")
    return _window_order_cached(T, H, W, wh, ww, reverse, _device_of(device))


@functools.lru_cache(maxsize=256)
def _window_orders_cached(T: int, H: int, W: int, wh: int, ww: int,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    fwd = _window_order_cached(T, H, W, wh, ww, False, device)
    rev = _window_order_cached(T, H, W, wh, ww, True, device)
    return _register(torch.stack([fwd[0], rev[0]])), torch.stack([fwd[1], rev[1]])


def window_orders(shape: Sequence[int], window: Sequence[int] = DEFAULT_WINDOW,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward and reversed :func:`window_order` stacked: ``(orders [2, L], reset [2, L])`` (cached)."""
    T, H, W = _check_shape(shape)
    wh, ww = _check_window(window)
    return _window_orders_cached(T, H, W, wh, ww, _device_of(device))


# --------------------------------------------------------------------------------------------------------------
# gather / grouped scatter-add
# --------------------------------------------------------------------------------------------------------------


def space_time_scan(x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Gather the tokens of ``x`` in each scan order.

    Args:
        x: ``[Bsz, L, C]`` tokens in natural order.
        orders: ``[K, L]`` int64, each row a permutation of ``range(L)``.

    Returns:
        ``[Bsz, K, L, C]`` with ``out[:, k, j] = x[:, orders[k, j]]`` (autograd: the backward is
        :func:`space_time_merge` with every direction in one group).
    """
    x, _ = _check_scan(x, orders)
    Bsz, L, C = x.shape
    K = orders.shape[0]
    return x.index_select(1, orders.reshape(-1)).view(Bsz, K, L, C)


def space_time_merge(ys: torch.Tensor, orders: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Scatter-add each direction back to natural order and sum the directions of each group.

    Args:
        ys: ``[Bsz, K, L, C]``, direction k in scan order k.
        orders: ``[K, L]`` int64 permutations (the orders ``ys`` were read in).
        groups: K ints, the output group of each direction (G = max + 1; every id in ``0..G-1`` used).

    Returns:
        ``[Bsz, G, L, C]`` with ``out[:, g, orders[k, j]] += ys[:, k, j]`` for every k in group g; summed in fp32
        (float64 for float64 input) and cast to ``ys.dtype``. The adjoint of :func:`space_time_scan` when
        ``groups = range(K)``.
    """
    ys, inv, gs = _check_merge(ys, orders, groups)
    Bsz, K, L, C = ys.shape
    acc = torch.float64 if ys.dtype == torch.float64 else torch.float32
    outs = []
    for g in range(max(gs) + 1):
        # owner-computes: natural position n of group g reads ys[:, k, inv[k, n]] for each k in the group
        terms = [ys[:, k].index_select(1, inv[k]).to(acc) for k in range(K) if gs[k] == g]
        outs.append(functools.reduce(torch.add, terms))
    return torch.stack(outs, dim=1).to(ys.dtype)
