"""Video files in and out through PyAV (the optional extra ``video``: ``pip install 'glsmamba[video]'``).

* :class:`VideoReader` streams RGB frames ``(H, W, 3)`` uint8 with the stream's true frame rate; an unreadable
  file, a file without a video stream, a still image (PNG, JPEG, ...: FFmpeg would make up 25 fps for it) or a
  frame rate of 0 raise :class:`VideoError` (a ``ValueError``) naming the file.
* :class:`VideoWriter` encodes RGB frames to an mp4 (H.264 ``libx264`` when available, else MPEG-4 part 2) at a
  given frame rate (pass the source's to keep it).

PyAV is imported on first use; without it a clear ``ImportError`` says how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np


class VideoError(ValueError):
    """A video cannot be read or written (the message names the file and the reason)."""


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("video input/output needs PyAV: pip install 'glsmamba[video]' (or: pip install av)") from e
    return av


def check_fps(rate, path: str | os.PathLike) -> Fraction:
    """The frame rate as a positive ``Fraction``; raises :class:`VideoError` for ``None``, 0 or negative rates."""
    try:
        fps = Fraction(rate) if rate is not None else Fraction(0)
    except (TypeError, ValueError):
        fps = Fraction(0)
    if fps <= 0:
        raise VideoError(f"{os.fspath(path)}: the video reports a frame rate of {rate!r}; cannot keep its timing "
                         f"(the file may be damaged or not a video)")
    return fps


class VideoReader:
    """Iterate the frames of a video file as ``(H, W, 3)`` uint8 RGB arrays.

    Attributes:
        path: the file.
        fps: frame rate (``Fraction``, > 0).
        width, height: frame size in pixels.
        num_frames: frames announced by the container (0 when unknown; iteration yields the true count).

    Example:
        >>> with VideoReader("clip.mp4") as video:
        ...     for frame in video:
        ...         ...
    """

    def __init__(self, path: str | os.PathLike):
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{self.path}: cannot open as a video ({type(e).__name__}: {e})") from e
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: the file has no video stream")
        demuxer = self._container.format.name
        if demuxer == "image2" or demuxer.endswith("_pipe"):  # FFmpeg's still-image readers (png_pipe, ...)
            self._container.close()
            raise VideoError(f"{self.path}: a still image ({demuxer}), not a video: it has no frame rate of its own "
                             f"(it would run as 1 frame at a made-up 25 fps); give a video file")
        self._stream = self._container.streams.video[0]
        try:
            self.fps = check_fps(self._stream.average_rate or self._stream.guessed_rate, self.path)
        except VideoError:
            self._container.close()
            raise
        self.width = int(self._stream.codec_context.width)
        self.height = int(self._stream.codec_context.height)
        self.num_frames = int(self._stream.frames or 0)
        if self.width <= 0 or self.height <= 0:
            self._container.close()
            raise VideoError(f"{self.path}: the video stream has no frame size ({self.width} x {self.height})")

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: decoding failed ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encode ``(H, W, 3)`` uint8 RGB frames to ``path`` at ``fps``.

    Args:
        path: output file (``.mp4``; the container follows the extension).
        fps: frame rate (``Fraction``, float or int, > 0).
        width, height: frame size (odd sizes are padded by one pixel for the 4:2:0 encoders).
        codec: encoder name (default ``libx264`` when PyAV has it, else ``mpeg4``).
    """

    def __init__(self, path: str | os.PathLike, fps, width: int, height: int, codec: str | None = None):
        av = _av()
        self.path = Path(path)
        self.fps = check_fps(Fraction(fps).limit_denominator(1_000_000) if fps else fps, self.path)
        self.width, self.height = int(width), int(height)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width and height must be >= 1, got {width} x {height}")
        if codec is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), mode="w")
            self._stream = self._container.add_stream(codec, rate=self.fps)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot create a {codec} video ({type(e).__name__}: {e})") from e
        self._stream.width = self.width + self.width % 2
        self._stream.height = self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one ``(height, width, 3)`` uint8 RGB frame."""
        av = _av()
        f = np.asarray(frame)
        if f.shape != (self.height, self.width, 3) or f.dtype != np.uint8:
            raise ValueError(f"frame must be ({self.height}, {self.width}, 3) uint8, got {f.shape} {f.dtype}")
        if self.width % 2 or self.height % 2:
            f = np.pad(f, ((0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def video_info(path: str | os.PathLike) -> dict:
    """``{"fps": Fraction, "width", "height", "frames"}`` of a video, counting the decoded frames."""
    with VideoReader(path) as v:
        n = sum(1 for _ in v)
        return {"fps": v.fps, "width": v.width, "height": v.height, "frames": n}


def write_video(path: str | os.PathLike, frames, fps, codec: str | None = None) -> Path:
    """Write a sequence of ``(H, W, 3)`` uint8 RGB frames (all the same size) to ``path`` at ``fps``."""
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("frames must not be empty")
    h, w = frames[0].shape[:2]
    with VideoWriter(path, fps, w, h, codec) as out:
        for f in frames:
            out.write(f)
    return Path(path)
