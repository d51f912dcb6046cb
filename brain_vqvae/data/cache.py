"""The cache of decoded slices: one uncompressed `.npz` per data set and options.

The cache lives in `cache_dir` (default `$BRAIN_VQVAE_CACHE` or ~/.cache/brain-vqvae), never in
the data folder. A file is keyed by the source of every module of this package that shapes the
decoded arrays (`code_hash`), the source folder, format, options and the (relative path, size,
mtime_ns) of every input file, so a second load takes seconds, and touching any input or
changing the loading code reloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .slices import SPLITS, SliceSet
from .sources import Found, Options

__all__ = ["load_cached"]

# Modules of this package that never touch the decoded arrays, so they do not key the cache.
_NOT_DECODING = frozenset({"demo.py", "pipeline.py", "summary.py"})


def load_cached(
    found: Found, options: Options, cache_dir: str | os.PathLike | None
) -> tuple[dict[str, SliceSet], list[str]]:
    """The decoded splits and decoding problems, from the cache or decoded (and then cached)."""
    cache_file = _cache_file(found, options, cache_dir)
    cached = _read_cache(cache_file)
    if cached is not None:
        return cached
    problems: list[str] = []
    splits = found.load(options, problems)
    try:
        _write_cache(cache_file, splits, problems)
    except OSError as error:
        problems.append(f"cache not written to {cache_file.parent}: {error}")
    return splits, problems


def _code_hash() -> str:
    """SHA-256 of the source of the package's decoding modules (its .py files sorted by name,
    bar _NOT_DECODING): new code, new arrays."""
    digest = hashlib.sha256()
    for module in sorted(Path(__file__).parent.glob("*.py")):
        if module.name not in _NOT_DECODING:
            digest.update(f"{module.name}\n".encode())
            digest.update(module.read_bytes())
    return digest.hexdigest()


def _cache_file(found: Found, options: Options, cache_dir: str | os.PathLike | None) -> Path:
    """The cache file for this data and these options; `ValueError` if inside the data folder."""
    if cache_dir is None:
        cache_dir = os.environ.get("BRAIN_VQVAE_CACHE") or Path.home() / ".cache" / "brain-vqvae"
    folder = Path(cache_dir).expanduser().resolve()
    data_folder = found.root.resolve()
    if data_folder.is_dir() and folder.is_relative_to(data_folder):
        raise ValueError(
            f"cache_dir {folder} is inside the data folder {data_folder}; "
            "choose another: nothing is ever written into a data folder"
        )
    return folder / f"{found.format}-{_cache_key(found, options)}.npz"


def _cache_key(found: Found, options: Options) -> str:
    """SHA-256 of the loading code, the source, format, options and every input file's
    (relative path, size, mtime_ns)."""
    settings = [_code_hash(), str(found.root.resolve()), found.format]
    settings += [options.image_size, options.slices_per_volume, options.seed, options.skip_bad]
    digest = hashlib.sha256(json.dumps(settings).encode())
    for file in found.inputs:
        status = file.stat()
        relative = file.relative_to(found.root).as_posix()
        digest.update(f"{relative}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _write_cache(cache_file: Path, splits: dict[str, SliceSet], problems: list[str]) -> None:
    """Write the splits as one uncompressed .npz, atomically (temporary file + os.replace)."""
    arrays = {"problems": np.asarray(json.dumps(problems))}
    for split, slice_set in splits.items():
        for name in ("images", "subject_ids", "slice_indices", "masks", "labels"):
            if getattr(slice_set, name) is not None:
                arrays[f"{split}.{name}"] = getattr(slice_set, name)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=cache_file.parent, prefix=cache_file.stem + ".", suffix=".tmp", delete=False
    ) as handle:
        temporary = Path(handle.name)
        try:
            np.savez(handle, **arrays)
        except BaseException:
            temporary.unlink()
            raise
    os.replace(temporary, cache_file)


def _read_cache(cache_file: Path) -> tuple[dict[str, SliceSet], list[str]] | None:
    """The cached splits and problems, or None when absent or unreadable (then rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}
        splits = {
            split: SliceSet(
                images=stored[f"{split}.images"],
                subject_ids=stored[f"{split}.subject_ids"],
                slice_indices=stored[f"{split}.slice_indices"],
                masks=stored.get(f"{split}.masks"),
                labels=stored.get(f"{split}.labels"),
            )
            for split in SPLITS
        }
        return splits, json.loads(str(stored["problems"]))
    except Exception:  # a damaged or foreign cache file is rebuilt, never trusted
        return None
