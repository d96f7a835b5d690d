"""The demo end to end with and without the encoder-feature cache: one run, the ratio of wall-clock times.

Renders a synthetic video (``glsmamba synth``'s figures, one person), then runs :func:`vhpe.demo.run_demo` on it
(overlay mp4 + JSON written, no ``--boxes``: the whole frame is the person box) with the cache
(``feature_cache=True``, the default: every frame encoded once) and without it (every clip encodes its ``T`` crops,
the computation before the cache), alternating ``--repeats`` times after one warm-up run of each; reports the best
time of each, the ratio, the crops encoded and the time spent in the encoder by each, the largest keypoint
difference, with the device, dtype and library versions. Writes ``demo_cache.json`` to ``--out``.

    python -m glsmamba.bench.bench_streaming --checkpoint runs/tiny/final.pth [--frames 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from glsmamba.bench.harness import environment, now_iso


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="model file (a tiny checkpoint is enough)")
    p.add_argument("--frames", type=int, default=50, help="video length (default 50)")
    p.add_argument("--size", default="256x192", help="video W x H (default 256x192)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each variant (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for demo_cache.json (default bench/results/local)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from glsmamba.model import GLSMamba
    from glsmamba.vhpe.demo import run_demo
    from glsmamba.vhpe.synth import SynthConfig, render_video
    from glsmamba.vhpe.video import write_video

    w, h = (int(v) for v in args.size.lower().split("x"))
    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "local"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment(torch.device(args.device))
    env.pop("_peaks")
    with tempfile.TemporaryDirectory() as tmp:
        images, _ = render_video(99, args.frames, seed=1, cfg=SynthConfig(width=w, height=h, persons=(1, 1)))
        video = write_video(Path(tmp) / "synth.mp4", [np.asarray(im) for im in images], 25)
        times: dict[str, list[float]] = {"cache": [], "no_cache": []}
        encoder_s: dict[str, list[float]] = {"cache": [], "no_cache": []}
        docs: dict[str, dict] = {}
        real_encode, spent = GLSMamba.encode, [0.0]

        def timed_encode(self, frames):  # the encoder's share of the time
            t = time.perf_counter()
            out = real_encode(self, frames)
            spent[0] += time.perf_counter() - t
            return out

        GLSMamba.encode = timed_encode
        for rep in range(args.repeats + 1):  # rep 0: warm-up (first calls, caches of index tables)
            for name in ("no_cache", "cache"):
                t0, spent[0] = time.perf_counter(), 0.0
                docs[name] = run_demo(video, args.checkpoint, Path(tmp) / f"{name}.mp4", Path(tmp) / f"{name}.json",
                                      device=args.device, feature_cache=name == "cache")
                if rep:
                    times[name].append(time.perf_counter() - t0)
                    encoder_s[name].append(spent[0])
        GLSMamba.encode = real_encode
    best = {k: min(v) for k, v in times.items()}
    diff = max(float(np.abs(np.subtract(a["instances"][0]["keypoints"], b["instances"][0]["keypoints"])).max())
               for a, b in zip(docs["cache"]["frames"], docs["no_cache"]["frames"], strict=True))
    res = {
        "timestamp": now_iso(), "bench": "bench_streaming.py", "checkpoint": str(args.checkpoint),
        "video": f"{args.frames} frames {w}x{h} synthetic, one person, no --boxes", "dtype": "float32",
        "clip_frames": docs["cache"]["clip_frames"], "repeats": args.repeats,
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "best_s": {k: round(v, 3) for k, v in best.items()},
        "speedup": round(best["no_cache"] / best["cache"], 2),
        "encoder_s": {k: round(min(v), 3) for k, v in encoder_s.items()},
        "encoded_crops": {k: d["encoded_crops"] for k, d in docs.items()},
        "max_keypoint_diff_px": diff, **env,
    }
    path = out_dir / "demo_cache.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"demo, {args.frames} frames {w}x{h}, T={res['clip_frames']}, {env['device']}, {env['threads']} threads, "
          f"torch {env['torch']}: without the cache {best['no_cache']:.2f} s ({res['encoded_crops']['no_cache']} "
          f"crops encoded, encoder {res['encoder_s']['no_cache']:.2f} s), with it {best['cache']:.2f} s "
          f"({res['encoded_crops']['cache']}, encoder {res['encoder_s']['cache']:.2f} s): {res['speedup']}x; "
          f"max keypoint difference {diff:.3g} px -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
