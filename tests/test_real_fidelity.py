"""`bench/real_fidelity.py`: leave-subjects-out folds, reconstruction and generation."""

from __future__ import annotations

import dataclasses
import json

import fixtures
import numpy as np
import pytest
from conftest import tiny_argv

from bench import real_fidelity

SUBJECTS = ("anna", "ben", "carl", "dora")
SLICES_PER_VOLUME = 16


@pytest.fixture(scope="module")
def volume_folder(tmp_path_factory):
    """Four NIfTI heads of different sizes, one per subject."""
    folder = tmp_path_factory.mktemp("volumes")
    for seed, subject in enumerate(SUBJECTS):
        head = fixtures.synthetic_head((36 + 2 * seed, 40, 36), seed=seed)
        fixtures.write_nifti(folder / f"{subject}.nii.gz", head)
    return folder


def bench_argv(hyperparameters, data, *extra: str) -> list[str]:
    """The bench's command line: `hyperparameters` as train.py flags (less train.py's --out)."""
    argv = tiny_argv(hyperparameters, data, "unused", *extra)
    del argv[2:4]
    return argv


def test_a_fold_holds_out_whole_subjects_and_validates_every_tenth_slice():
    slices = real_fidelity.SliceSet(
        images=np.zeros((6, 4, 4), dtype=np.uint8),
        subject_ids=np.array(["a", "a", "a", "b", "b", "c"]),
        slice_indices=np.array([4, 5, 15, 5, 6, 5], dtype=np.int32),
    )
    masks = real_fidelity.fold_masks(slices, ["c"])
    assert masks["test"].tolist() == [False] * 5 + [True]
    assert masks["validate"].tolist() == [False, True, True, True, False, False]
    assert masks["train"].tolist() == [True, False, False, False, True, False]


def test_generation_is_judged_against_the_held_out_subjects(
    tiny_hyperparameters, volume_folder, tmp_path, capsys
):
    hyperparameters = dataclasses.replace(
        tiny_hyperparameters,
        slices_per_volume=SLICES_PER_VOLUME,
        epochs_vqvae=2,
        epochs_pixelcnn=1,
    )
    report_file, kept = tmp_path / "report.json", tmp_path / "kept"
    argv = bench_argv(hyperparameters, volume_folder, "--folds", "1", "--held-out", "2")
    argv += ["--generation", "--keep", str(kept), "--json", str(report_file)]
    assert real_fidelity.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_file.read_text())
    (fold,) = report["folds"]
    held_out = list(SUBJECTS[:2])  # fold 1 holds out the first two in sorted order
    assert list(fold["held_out"]) == held_out
    assert fold["train_slices"] + fold["validate_slices"] == 2 * SLICES_PER_VOLUME
    generation = fold["generation"]
    # Judged on the held-out people's slices, not on the loader's own test split.
    assert generation["slices"] == 2 * SLICES_PER_VOLUME
    realism = generation["realism"]
    assert realism["n_real_a"] == SLICES_PER_VOLUME  # one held-out person per half
    assert realism["fd_real_floor"] > 0
    assert "slice_position" in generation["conditions"]
    assert (kept / "fold1" / "similarity_test" / "realism.png").stat().st_size > 0
    assert (kept / "fold1" / "pixelcnn.keras").exists()
    row = real_fidelity.generation_row(generation)
    assert row["fd_ratio"] == pytest.approx(realism["fd_samples"] / realism["fd_real_floor"])
    assert "FD/floor" in printed and "mean" in printed
