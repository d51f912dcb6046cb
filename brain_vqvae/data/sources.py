"""What a format finder returns: a data set located on disk, before anything is decoded.

Each format module has a finder that takes a folder (or file) and returns a `Found` or None;
`Found.load` later decodes the data with the caller's `Options`. Also the file-listing rules
every finder shares: hidden and system files are never data, and names sort by their numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .slices import SliceSet

__all__ = ["Found", "Options", "is_stray", "natural_key", "visible_files"]

_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})


@dataclass(frozen=True)
class Options:
    """The options of a load that change the decoded arrays (all of them key the cache)."""

    image_size: int
    slices_per_volume: int
    seed: int
    skip_bad: bool


@dataclass(frozen=True)
class Found:
    """A data set located on disk, before anything is decoded."""

    format: str
    root: Path  # the folder (or .npz file) holding the data
    inputs: tuple[Path, ...]  # every file the load reads; their stats key the cache
    load: Callable[[Options, list[str]], dict[str, SliceSet]]  # appends to the problems
    faults: tuple[str, ...] = ()  # files that cannot be used: an error unless skip_bad
    notes: tuple[str, ...] = ()  # files ignored or read partly on purpose, reported as problems


def is_stray(path: Path) -> bool:
    """Hidden files (.DS_Store, ._x) and system files (Thumbs.db) that are never data."""
    return path.name.startswith(".") or path.name.lower() in _SYSTEM_FILES


def visible_files(folder: Path) -> list[Path]:
    """The files directly in `folder` that are not stray, sorted by name."""
    return sorted(entry for entry in folder.iterdir() if entry.is_file() and not is_stray(entry))


def natural_key(text: str) -> list:
    """Sort key that orders digit runs by value: "slice_2" before "slice_10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]
