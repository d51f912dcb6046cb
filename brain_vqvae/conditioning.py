"""The conditions of real slices, in the form a conditional prior reads them.

A slice's conditions come from the loaded data: its level in its volume
(`SliceSet.relative_positions`), its subject's age, sex and CDR (`BrainSlices.demographics`,
an OASIS table) and the code map of the slice just below it in the same subject (the subject's
loaded slice with the next lower slice index). `available_conditions` says which of them the
data provides, `resolve_prior_conditions` turns `prior_conditions` "auto" into those, and
`slice_conditions` gives a prior's inputs for every slice, each missing value unknown.
"""

from __future__ import annotations

import numpy as np

from brain_vqvae.data import SliceSet
from brain_vqvae.model.conditions import SCALAR_CONDITIONS, encode_condition
from hyperparameters import PRIOR_CONDITIONS, Hyperparameters, parse_prior_conditions


def raw_condition_values(
    name: str, slice_set: SliceSet, demographics: dict[str, dict]
) -> np.ndarray | None:
    """(N,) object array of a scalar condition's raw value per slice (None where unknown), or
    None when the data has no value of it at all."""
    if name == "slice_position":
        positions = slice_set.relative_positions()
        return None if positions is None else positions.astype(object)
    values = np.array(
        [demographics.get(str(subject), {}).get(name) for subject in slice_set.subject_ids],
        dtype=object,
    )
    return values if any(value is not None for value in values) else None


def previous_slice_rows(slice_set: SliceSet) -> np.ndarray:
    """(N,) int64: the row of the slice just below each slice (same subject, the next lower
    slice index among the loaded ones), -1 for a subject's lowest slice."""
    previous = np.full(len(slice_set), -1, dtype=np.int64)
    order = np.lexsort((slice_set.slice_indices, slice_set.subject_ids))
    same_subject = slice_set.subject_ids[order[1:]] == slice_set.subject_ids[order[:-1]]
    previous[order[1:][same_subject]] = order[:-1][same_subject]
    return previous


def available_conditions(slice_set: SliceSet, demographics: dict[str, dict]) -> tuple[str, ...]:
    """The conditions the data provides, in the order of `PRIOR_CONDITIONS`: slice_position and
    previous_slice when the slices have levels (volumes of several slices), each demographic
    when some slice's subject has a value of it."""
    found = {
        name
        for name in SCALAR_CONDITIONS
        if raw_condition_values(name, slice_set, demographics) is not None
    }
    if "slice_position" in found:
        found.add("previous_slice")
    return tuple(name for name in PRIOR_CONDITIONS if name in found)


def resolve_prior_conditions(
    hyperparameters: Hyperparameters, slice_set: SliceSet, demographics: dict[str, dict]
) -> Hyperparameters:
    """`hyperparameters` with `prior_conditions` "auto" replaced by every condition the data
    provides ("none" if it provides none, or for the masked PixelCNN, which takes none).
    Conditions named explicitly must all be provided, else `ValueError` names the missing."""
    requested = parse_prior_conditions(hyperparameters.prior_conditions)
    available = available_conditions(slice_set, demographics)
    if requested is None:
        chosen = available if hyperparameters.pixelcnn_architecture == "gated" else ()
        return hyperparameters.replace(prior_conditions=",".join(chosen) or "none")
    missing = [name for name in requested if name not in available]
    if missing:
        raise ValueError(
            f"prior_conditions asks for {', '.join(missing)}, which the training data does not "
            f"provide (it provides: {', '.join(available) or 'none'}; age, sex and cdr come "
            "from an OASIS demographics table, slice_position from volumes of several slices)"
        )
    return hyperparameters


def condition_ranges(
    names: tuple[str, ...], slice_set: SliceSet, demographics: dict[str, dict]
) -> dict:
    """What the training slices hold of each scalar condition: {name: [low, high]}, for sex the
    sorted values seen."""
    ranges = {}
    for name in names:
        if name == "previous_slice":
            continue
        values = raw_condition_values(name, slice_set, demographics)
        known = [value for value in values if value is not None]
        if name == "sex":
            ranges[name] = sorted({str(value) for value in known})
        else:
            ranges[name] = [float(min(known)), float(max(known))]
    return ranges


def slice_conditions(
    names: tuple[str, ...],
    slice_set: SliceSet,
    demographics: dict[str, dict],
    code_maps: np.ndarray,
) -> dict[str, np.ndarray]:
    """The prior's condition inputs for every slice of `slice_set`, whose code maps
    [N, h, w] are `code_maps`: {"values": [N, C] float32, "known": [N, C] float32, "previous":
    [N, h, w] int32} for the C conditions `names` (`brain_vqvae.model.conditions`); a value the
    data lacks, and the previous slice of a lowest slice, are unknown."""
    count = len(slice_set)
    values = np.zeros((count, len(names)), dtype="float32")
    known = np.zeros((count, len(names)), dtype="float32")
    previous = np.zeros_like(code_maps, dtype="int32")
    for column, name in enumerate(names):
        if name == "previous_slice":
            rows = previous_slice_rows(slice_set)
            has_previous = rows >= 0
            previous[has_previous] = code_maps[rows[has_previous]]
            known[:, column] = has_previous
            continue
        raw = raw_condition_values(name, slice_set, demographics)
        if raw is None:
            continue
        for row, value in enumerate(raw):
            if value is not None:
                values[row, column] = encode_condition(name, value)
                known[row, column] = 1.0
    return {"values": values, "known": known, "previous": previous}
