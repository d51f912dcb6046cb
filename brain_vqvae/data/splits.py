"""Person-level train/validate/test split of subject ids, deterministic for a seed.

Volumes, npz images and plain image slices are split by person: people are ordered by a SHA-256
hash of (seed, person) and dealt out SPLIT_FRACTIONS (5 % test, 10 % validate), the rest train
(at least one each from three people on; with two people, one validates). A person is the BIDS
"sub-xx" label in a subject id if it has one, else the id without an OASIS "_MRn" session
suffix, so repeat scans never straddle two splits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from .slices import SPLITS

__all__ = ["SPLIT_FRACTIONS", "split_subjects"]

SPLIT_FRACTIONS = {"validate": 0.10, "test": 0.05}  # of the people; train takes the rest


def _person(subject_id: str) -> str:
    """Who a subject id belongs to: its BIDS "sub-xx" label, or the id without "_MRn"."""
    bids = re.search(r"(?:^|[/_])(sub-[A-Za-z0-9]+)", subject_id)
    if bids:
        return bids.group(1)
    return re.sub(r"_MR\d+$", "", subject_id)


def split_subjects(subject_ids: Sequence[str], seed: int) -> dict[str, str]:
    """{subject id: split}, by person, deterministic for a seed (see the module docstring)."""
    people = sorted(
        {_person(subject_id) for subject_id in subject_ids},
        key=lambda person: hashlib.sha256(f"{seed}:{person}".encode()).hexdigest(),
    )
    counts = {split: 0 for split in SPLITS}
    if len(people) >= 3:
        for split, fraction in SPLIT_FRACTIONS.items():
            counts[split] = max(1, round(fraction * len(people)))
    elif len(people) == 2:
        counts["validate"] = 1
    split_of_person, start = {}, 0
    for split in ("test", "validate"):
        for person in people[start : start + counts[split]]:
            split_of_person[person] = split
        start += counts[split]
    return {
        subject_id: split_of_person.get(_person(subject_id), "train") for subject_id in subject_ids
    }
