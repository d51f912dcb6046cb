"""How long `dataset.load_slices` takes on an OASIS-sized PNG tree: first load and cached load.

    python -m bench.data_loading [--tree DIR] [--repeats 3] [--quick] [--json PATH]

The tree (`common.build_oasis_tree`) has OASIS's layout and size: 9,664 train, 1,120 validate
and 544 test slices, 256x256 8-bit grey PNGs with their seg_ masks, 22,656 files; it is built
under `--tree` (default: a folder under the temp folder) or reused when already complete.
  first load   `load_slices(tree, image_size=128, cache_dir=EMPTY)`: list and pair the files,
               decode every PNG pair on all cores, resize images (Lanczos) and masks (nearest)
               to 128x128, write the uncompressed .npz cache.
  cached load  the same call with the cache just written: stat every file for the cache key,
               read the .npz.
Each is run `--repeats` times, every first load with a new empty cache folder, cached loads
right after it; the table gives the median and the range. The PNGs sit in the page cache once
the tree is built, so the first load measures decoding, not reading a cold disk (the tree's
size is printed: at 100 MB/s add that many MB / 100 seconds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    OASIS_SPLIT_SIZES,
    QUICK_SCALE,
    add_common_arguments,
    build_oasis_tree,
    cpu_model,
    default_tree,
    median,
    print_table,
    split_sizes,
    write_json,
)
from brain_vqvae.data import load_slices

GOALS_S = {"first load": 30.0, "cached load": 2.0}


def timed_load(tree: Path, cache_dir: Path, expected: dict[str, int]) -> float:
    """Seconds of one `load_slices` call; checks the split sizes it returns."""
    start = time.perf_counter()
    slices = load_slices(tree, image_size=128, cache_dir=cache_dir)
    seconds = time.perf_counter() - start
    found = {split: len(slice_set) for split, slice_set in slices.splits.items()}
    if found != expected:
        raise RuntimeError(f"loaded {found}, expected {expected}")
    return seconds


def measure(
    tree: Path, repeats: int, expected: dict[str, int]
) -> tuple[dict[str, list[float]], float]:
    """({phase: seconds of each repeat} for the first and the cached load, cache size in MB)."""
    seconds = {phase: [] for phase in GOALS_S}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="brain-vqvae-cache-") as cache:
            seconds["first load"].append(timed_load(tree, Path(cache), expected))
            seconds["cached load"].append(timed_load(tree, Path(cache), expected))
            cache_bytes = sum(file.stat().st_size for file in Path(cache).iterdir())
    return seconds, cache_bytes / 2**20


def row(phase: str, seconds: list[float], slices: int) -> dict:
    """A table row; the goal is scaled to the tree's size (it is set for OASIS's)."""
    goal = GOALS_S[phase] * slices / sum(OASIS_SPLIT_SIZES.values())
    return {
        "phase": phase,
        "median_s": median(seconds),
        "range": f"{min(seconds):.2f}-{max(seconds):.2f}",
        "slices_per_s": slices / median(seconds),
        "goal_s": goal,
        "met": "yes" if median(seconds) <= goal else "no",
    }


def folder_megabytes(folder: Path) -> float:
    return sum(file.stat().st_size for file in folder.rglob("*.png")) / 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="where the OASIS-sized tree is (or goes)")
    parser.add_argument("--repeats", type=int, default=3, help="loads of each kind")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    scale = QUICK_SCALE if arguments.quick else 1.0
    repeats = 1 if arguments.quick else arguments.repeats
    tree = arguments.tree or default_tree(scale)
    start = time.perf_counter()
    build_oasis_tree(tree, scale)
    build_seconds = time.perf_counter() - start
    expected = split_sizes(scale)
    total = sum(expected.values())
    print(
        f"{cpu_model()}; tree {tree}: {total} slice pairs ({folder_megabytes(tree):.0f} MB of "
        f"PNG), ready in {build_seconds:.1f} s"
    )
    seconds, cache_mb = measure(tree, repeats, expected)
    rows = [row(phase, seconds[phase], total) for phase in GOALS_S]
    print(f"\nload_slices at 128x128, median of {repeats}; cache {cache_mb:.0f} MB")
    print_table(
        rows,
        (
            ("phase", "phase", "<"),
            ("median_s", "median s", ".2f"),
            ("range", "range", ""),
            ("slices_per_s", "slices/s", ".0f"),
            ("goal_s", "goal s", ".1f"),
            ("met", "met", ""),
        ),
    )
    write_json(
        arguments.json,
        {
            "tree": str(tree),
            "slices": expected,
            "cache_mb": cache_mb,
            "seconds": seconds,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
