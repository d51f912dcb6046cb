"""What loaded from a path, as a JSON-ready summary and as the text `dataset.py summary` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from .slices import BrainSlices, SliceSet

__all__ = ["print_summary", "summarise"]


def summarise(brain_slices: BrainSlices, image_size: int) -> dict[str, Any]:
    """Format, source, image size, per-split counts and intensities (in [0, 1]), the number of
    subjects with demographics, and the problems."""
    return {
        "format": brain_slices.format,
        "source": str(brain_slices.source),
        "image_size": image_size,
        "splits": {
            split: _split_summary(slice_set) for split, slice_set in brain_slices.splits.items()
        },
        "demographics_joined": len(brain_slices.demographics),
        "problems": list(brain_slices.problems),
    }


def _split_summary(slice_set: SliceSet) -> dict[str, Any]:
    images = slice_set.images
    intensity = None
    if len(images):
        intensity = {
            "min": round(float(images.min()) / 255.0, 4),
            "max": round(float(images.max()) / 255.0, 4),
            "mean": round(float(images.mean()) / 255.0, 4),
        }
    return {
        "slices": len(slice_set),
        "subjects": int(np.unique(slice_set.subject_ids).size),
        "intensity": intensity,
        "masks": slice_set.masks is not None,
        "labels": slice_set.labels is not None,
    }


def print_summary(summary: dict[str, Any]) -> None:
    """Print a `summarise` result as a table."""
    size = summary["image_size"]
    print(f"format:       {summary['format']}")
    print(f"source:       {summary['source']}")
    print(f"image size:   {size}x{size}")
    print(f"{'split':<10}{'slices':>8}{'subjects':>10}  {'intensity min/max/mean':<24}masks")
    for split, row in summary["splits"].items():
        intensity = row["intensity"]
        shown = "-" if intensity is None else "{min:.3f}/{max:.3f}/{mean:.3f}".format(**intensity)
        masks = "yes" if row["masks"] else "no"
        print(f"{split:<10}{row['slices']:>8}{row['subjects']:>10}  {shown:<24}{masks}")
    print(f"demographics: {summary['demographics_joined']} subjects joined")
    print(f"problems:     {len(summary['problems']) or 'none'}")
    for problem in summary["problems"]:
        print(f"  - {problem}")
