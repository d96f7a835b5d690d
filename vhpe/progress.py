"""A one-line progress display for long loops (training epochs, dataset inference, the video demo)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A one-line progress display (``\\r``-updated on a terminal, a line every ``every`` steps otherwise): step,
    named values (loss, lr), throughput in ``unit``/s, elapsed time and ETA (when ``total`` > 0)."""

    def __init__(self, total: int, desc: str, every: int = 10, stream=None, enabled: bool = True,
                 unit: str = "clips"):
        self.total, self.desc, self.every, self.unit = total, desc, max(1, every), unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.start = time.perf_counter()
        self.n = 0

    def update(self, n: int, items: int, **fields: Any) -> None:
        self.n = n
        if not self.enabled or (not self.tty and n % self.every and n != self.total):
            return
        el = time.perf_counter() - self.start
        rate = items / el if el > 0 else 0.0
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if self.total > 0:
            eta = max(self.total - n, 0) * el / max(n, 1)
            where = f"[{n:>{len(str(self.total))}}/{self.total}]"
            tail = f"elapsed {format_time(el)} eta {format_time(eta)}"
        else:  # unknown length
            where, tail = f"[{n}]", f"elapsed {format_time(el)}"
        line = f"{self.desc} {where} {extra} {rate:.2f} {self.unit}/s {tail}".replace("  ", " ")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            if n == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def format_time(s: float) -> str:
    """Seconds as ``MmSSs`` (``HhMMm`` from one hour)."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

