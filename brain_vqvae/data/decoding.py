"""Decoding shared by the loaders: greyscale image files, and many files on all cores.

Files are decoded on threads (as fast as processes here, and safe after TensorFlow has
started). A file that cannot be used raises `DataError`,
or with `skip_bad` is left out and named in the problems.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .slices import DataError

__all__ = ["GREY_TOLERANCE", "decode_all", "read_greyscale"]

GREY_TOLERANCE = 2  # grey levels by which the channels of a "greyscale" colour file may differ

_GREY_MODES = frozenset({"L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})  # PIL image modes
_DECODE_CHUNK = 64  # at most this many files per thread task


def read_greyscale(path: Path) -> np.ndarray:
    """(H, W) uint8 pixels of a greyscale image file.

    8-bit grey is kept as is; 16-bit, 32-bit and float grey are scaled so the file's maximum
    becomes 255; colour files are accepted only when their channels agree within GREY_TOLERANCE.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in _GREY_MODES:  # 1, LA, P, RGBA, CMYK, YCbCr, ... as RGB
                image = image.convert("RGB")
            pixels = np.asarray(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        raise DataError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3:
        channels = pixels[..., :3].astype(np.int16)
        if np.ptp(channels, axis=-1).max() > GREY_TOLERANCE:
            raise DataError(
                f"{path}: image is not greyscale (mode {mode} with differing channels); "
                "convert it to 8-bit greyscale"
            )
        return np.rint(channels.mean(axis=-1)).astype(np.uint8)
    if pixels.dtype == np.uint8:
        return pixels
    pixels = np.clip(pixels.astype(np.float64), 0.0, None)
    peak = pixels.max()
    return np.rint(pixels * (255.0 / peak if peak > 0 else 0.0)).astype(np.uint8)


def decode_all(
    decode: Callable[[Any], Any], items: Sequence[Any], skip_bad: bool, problems: list[str]
) -> list[Any]:
    """[decode(item) for item in items] on all cores, in order.

    A `DataError` is raised (and the remaining work cancelled), or with `skip_bad` becomes None
    in the result and a line in `problems`.
    """
    workers = _worker_count()
    size = max(1, min(_DECODE_CHUNK, len(items) // (4 * workers)))  # >= 4 chunks per worker
    chunks = [items[start : start + size] for start in range(0, len(items), size)]
    results = []
    with ThreadPoolExecutor(workers) as pool:
        for outcomes in pool.map(partial(_attempt_each, decode), chunks):
            for outcome in outcomes:
                if isinstance(outcome, DataError):
                    if not skip_bad:
                        pool.shutdown(cancel_futures=True)
                        raise outcome
                    problems.append(f"skipped {outcome}")
                    outcome = None
                results.append(outcome)
    return results


def _attempt_each(decode: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    """decode(item) per item, with a `DataError` returned in place of its result."""
    outcomes = []
    for item in chunk:
        try:
            outcomes.append(decode(item))
        except DataError as error:
            outcomes.append(error)
    return outcomes


def _worker_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
