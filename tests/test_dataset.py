"""dataset.py and brain_vqvae.data on fixtures written in the real on-disk formats (see
tests/fixtures.py)."""

import json
import os
import sys
import types
from pathlib import Path

import fixtures
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import dataset
from brain_vqvae.data import cache as data_cache
from brain_vqvae.data import png_tree
from dataset import (
    DataError,
    SliceSet,
    code_map_dataset,
    load_slices,
    load_volume_slices,
    main,
    make_tf_dataset,
)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "explicit-cache"


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of everything under `folder`, to prove nothing changed."""
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def all_slices(brain_slices):
    """{subject id: (K, S, S) images} over every split."""
    by_subject = {}
    for slice_set in brain_slices.splits.values():
        for subject in np.unique(slice_set.subject_ids):
            by_subject[str(subject)] = slice_set.images[slice_set.subject_ids == subject]
    return by_subject


def subject_sets(brain_slices):
    return {split: set(s.subject_ids.tolist()) for split, s in brain_slices.splits.items()}


def assert_split_by_person(brain_slices):
    subjects = subject_sets(brain_slices)
    assert all(subjects.values()), subjects
    for first, second in (("train", "validate"), ("train", "test"), ("validate", "test")):
        assert not subjects[first] & subjects[second], (first, second)


def marker_position(image):
    """Mean (row, column) of the saturated marker pixels."""
    rows, columns = np.nonzero(image == 255)
    assert rows.size, "no marker pixels"
    return rows.mean(), columns.mean()


# ---------------------------------------------------------------------------------- PNG tree


def test_png_tree_keeps_its_splits_orders_slices_numerically_and_pairs_masks(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=12)
    before = snapshot(root)

    slices = load_slices(root, image_size=64, cache_dir=cache)

    assert slices.format == "png_tree" and slices.source == root and slices.problems == []
    train = slices.splits["train"]
    assert train.images.shape == (24, 64, 64) and train.images.dtype == np.uint8
    assert train.subject_ids.tolist() == ["001"] * 12 + ["002"] * 12
    assert train.slice_indices.tolist() == list(range(12)) * 2  # slice_10 after slice_9
    block_greys = train.images[:, 8, 8].tolist()  # inside the top-left block of each slice
    assert block_greys == [fixtures.slice_marker_grey(i) for i in range(12)] * 2
    assert subject_sets(slices) == {"train": {"001", "002"}, "validate": {"003"}, "test": {"004"}}
    expected_mask = fixtures.png_mask_pixels(256)[2::4, 2::4] // 85  # nearest neighbour
    for slice_set in slices.splits.values():
        assert slice_set.masks.shape == slice_set.images.shape
        assert all(np.array_equal(mask, expected_mask) for mask in slice_set.masks)
    assert set(np.unique(train.masks).tolist()) == {0, 1, 2, 3}
    assert snapshot(root) == before


@pytest.mark.parametrize(
    "nesting", ["", "keras_png_slices_data", "keras_png_slices_data/keras_png_slices_data"]
)
def test_png_tree_is_found_bare_or_nested_and_stray_files_are_ignored(tmp_path, cache, nesting):
    given = tmp_path / "given"
    tree = fixtures.write_png_tree(
        given / nesting, cases={"train": [1], "validate": [2], "test": [3]}, slices=3
    )
    for folder in [given, tree, *tree.glob("keras_png_slices_*")]:
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")

    slices = load_slices(given, image_size=32, cache_dir=cache)

    assert slices.format == "png_tree" and slices.source == tree
    assert [len(slices.splits[split]) for split in dataset.SPLITS] == [3, 3, 3]
    assert slices.problems == []


def test_png_tree_without_seg_folders_has_no_masks_and_notes_foreign_files(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=2, masks=False)
    (root / "keras_png_slices_train" / "README.txt").write_text("OASIS slices")
    slices = load_slices(root, image_size=32, cache_dir=cache)
    assert all(s.masks is None for s in slices.splits.values())
    assert len(slices.splits["train"]) == 4
    assert len(slices.problems) == 1 and "README.txt" in slices.problems[0]


def test_mask_with_no_image_is_an_error_or_skipped_and_reported(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=3)
    (root / "keras_png_slices_train" / "case_001_slice_2.nii.png").unlink()

    with pytest.raises(DataError, match=r"seg_001_slice_2\.nii\.png: mask with no image"):
        load_slices(root, image_size=32, cache_dir=cache)
    slices = load_slices(root, image_size=32, cache_dir=cache, skip_bad=True)

    assert len(slices.splits["train"]) == 5
    assert any("seg_001_slice_2.nii.png: mask with no image" in p for p in slices.problems)


def test_images_without_masks_all_load_and_are_named(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=3)
    for name in ("seg_001_slice_1.nii.png", "seg_002_slice_0.nii.png"):
        (root / "keras_png_slices_seg_train" / name).unlink()

    slices = load_slices(root, image_size=32, cache_dir=cache)

    train = slices.splits["train"]
    assert len(train) == 6 and train.masks is None
    assert train.slice_indices.tolist() == [0, 1, 2] * 2
    assert slices.splits["validate"].masks.shape == (3, 32, 32)  # the other splits keep theirs
    unmasked = [problem for problem in slices.problems if "image with no mask" in problem]
    assert len(unmasked) == 2 == len(slices.problems)
    assert "case_001_slice_1.nii.png" in unmasked[0] and "seg_001_slice_1" in unmasked[0]
    assert "case_002_slice_0.nii.png" in unmasked[1] and "without masks" in unmasked[1]


def test_truncated_png_is_an_error_naming_it_or_skipped(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=3)
    broken = root / "keras_png_slices_validate" / "case_003_slice_1.nii.png"
    broken.write_bytes(broken.read_bytes()[:200])

    with pytest.raises(DataError, match=r"case_003_slice_1\.nii\.png: cannot decode image"):
        load_slices(root, image_size=32, cache_dir=cache)
    slices = load_slices(root, image_size=32, cache_dir=cache, skip_bad=True)

    assert slices.splits["validate"].slice_indices.tolist() == [0, 2]
    assert len(slices.splits["validate"].masks) == 2
    assert [p for p in slices.problems if "case_003_slice_1.nii.png" in p]


def test_colour_image_is_an_error_unless_its_channels_agree(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=2)
    grey = fixtures.png_slice_pixels(1, 0)
    image_file = root / "keras_png_slices_train" / "case_001_slice_0.nii.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").save(image_file)
    assert load_slices(root, image_size=32, cache_dir=cache).problems == []

    tinted = np.stack([grey, grey, grey // 2], axis=-1)
    Image.fromarray(tinted, mode="RGB").save(image_file)
    with pytest.raises(DataError, match=r"case_001_slice_0\.nii\.png: image is not greyscale"):
        load_slices(root, image_size=32, cache_dir=cache)


def test_sixteen_bit_and_non_square_images_in_a_plain_folder(tmp_path, cache):
    folder = tmp_path / "slices"
    folder.mkdir()
    deep = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    Image.fromarray(deep).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")  # a real 16-bit PNG
    Image.fromarray(np.full((30, 60), 200, np.uint8), mode="L").save(folder / "wide.png")
    Image.fromarray(np.full((64, 64), 90, np.uint8), mode="L").save(folder / "plain.jpg")

    images = all_slices(load_slices(folder, image_size=32, cache_dir=cache))

    ramp = images["deep"][0][16].astype(int)  # 0..4095 scaled by its maximum, not by 65535
    assert ramp[0] < 8 and ramp[-1] > 245 and (np.diff(ramp) > 0).all()
    wide = images["wide"][0].astype(int)  # 60x30 centred on 60x60: top and bottom quarters 0
    assert (wide[:4] == 0).all() and (wide[-4:] == 0).all()
    assert (abs(wide[12:20] - 200) <= 1).all()
    assert abs(int(images["plain"][0].mean()) - 90) <= 2


def test_plain_image_folder_is_split_by_file_stem(tmp_path, cache):
    folder = tmp_path / "slices"
    folder.mkdir()
    for index in range(12):
        pixels = fixtures.png_slice_pixels(index, 0, size=48)
        Image.fromarray(pixels, mode="L").save(folder / f"scan_{index}.png")
    (folder / ".DS_Store").write_bytes(b"\x00")

    slices = load_slices(folder, image_size=32, cache_dir=cache)
    again = load_slices(folder, image_size=32, cache_dir=tmp_path / "cache2")

    assert slices.format == "image_folder"
    assert sum(len(s) for s in slices.splits.values()) == 12
    assert_split_by_person(slices)
    assert subject_sets(again) == subject_sets(slices)


# ----------------------------------------------------------------------------- OASIS raw


def test_oasis_fixture_is_sixteen_bit_big_endian_analyze_of_the_real_shape(tmp_path):
    header_file = fixtures.write_oasis1_session(tmp_path / "disc1", "OAS1_0001_MR1")
    header = header_file.read_bytes()
    image_file = header_file.with_suffix(".img")

    assert len(header) == 348 and header[:4] == (348).to_bytes(4, "big")
    assert header[70:72] == (4).to_bytes(2, "big")  # datatype: signed 16-bit
    assert header[72:74] == (16).to_bytes(2, "big")  # bitpix
    assert nib.load(header_file).shape == (176, 208, 176, 1)
    assert image_file.stat().st_size == 176 * 208 * 176 * 2
    stored = np.fromfile(image_file, dtype=">i2").reshape(fixtures.OASIS_SHAPE, order="F")
    assert np.array_equal(stored, fixtures.synthetic_head(fixtures.OASIS_SHAPE)[::-1])


def test_oasis_real_shape_volume_gives_upright_slices_over_the_brain(tmp_path, cache):
    fixtures.write_oasis1_session(tmp_path / "disc1", "OAS1_0001_MR1", siblings=True)
    before = snapshot(tmp_path / "disc1")

    slices = load_slices(tmp_path / "disc1", image_size=64, cache_dir=cache)

    train = slices.splits["train"]
    assert slices.format == "oasis_raw" and len(train) == 32
    assert set(train.subject_ids.tolist()) == {"OAS1_0001_MR1"}
    assert train.slice_indices.tolist() == list(range(32))
    brain_area = (train.images > 0).sum(axis=(1, 2))
    assert brain_area.min() > 0 and brain_area[0] < brain_area[16] > brain_area[-1]
    assert len({image.tobytes() for image in train.images}) == 32
    for image in train.images[8:24]:  # anterior at the top, the subject's left on the left
        row, column = marker_position(image)
        assert row < 32 and column < 32
    assert snapshot(tmp_path / "disc1") == before


def write_oasis_release(root, count, shape=(36, 44, 36), repeat_of=None):
    """`count` OASIS-1 sessions over disc1/disc2 with n3..n6 names; one MR2 repeat scan."""
    sessions = [f"OAS1_{number:04d}_MR1" for number in range(1, count + 1)]
    if repeat_of is not None:
        sessions.append(f"OAS1_{repeat_of:04d}_MR2")
    for index, session in enumerate(sessions):
        fixtures.write_oasis1_session(
            root / f"disc{1 + index % 2}",
            session,
            shape=shape,
            variant=("n3", "n4", "n5", "n6")[index % 4],
            seed=index,
            siblings=index < 2,
        )
    return sessions


def test_oasis_release_is_split_by_person_deterministically(tmp_path, cache):
    sessions = write_oasis_release(tmp_path / "oasis", 12, repeat_of=3)

    slices = load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=5, cache_dir=cache)
    again = load_slices(
        tmp_path / "oasis", image_size=32, slices_per_volume=5, cache_dir=tmp_path / "cache2"
    )
    reseeded = load_slices(
        tmp_path / "oasis", image_size=32, slices_per_volume=5, seed=1, cache_dir=cache
    )

    subjects = subject_sets(slices)
    assert set().union(*subjects.values()) == set(sessions)
    assert_split_by_person(slices)
    assert len(subjects["train"]) >= 9
    assert any({"OAS1_0003_MR1", "OAS1_0003_MR2"} <= found for found in subjects.values())
    for slice_set in slices.splits.values():
        for subject in set(slice_set.subject_ids.tolist()):
            indices = slice_set.slice_indices[slice_set.subject_ids == subject]
            assert indices.tolist() == [0, 1, 2, 3, 4]
    assert subject_sets(again) == subjects
    assert np.array_equal(again.splits["train"].images, slices.splits["train"].images)
    assert subject_sets(reseeded) != subjects
    assert_split_by_person(reseeded)


@pytest.mark.parametrize("given", ["release", "disc"])
def test_oasis_is_found_from_the_release_root_or_one_disc(tmp_path, cache, given):
    write_oasis_release(tmp_path / "oasis", 4)
    path = tmp_path / "oasis" if given == "release" else tmp_path / "oasis" / "disc1"
    slices = load_slices(path, image_size=32, slices_per_volume=3, cache_dir=cache)
    assert slices.format == "oasis_raw"
    assert sum(len(s) for s in slices.splits.values()) == 3 * (4 if given == "release" else 2)


def test_oasis_demographics_are_joined_from_the_table_above_the_disc(tmp_path, cache):
    write_oasis_release(tmp_path / "oasis", 3)
    rows = [
        {"ID": "OAS1_0001_MR1", "M/F": "F", "Hand": "R", "Age": "74", "Educ": "2", "SES": "3"}
        | {"MMSE": "29", "CDR": "0", "eTIV": "1344", "nWBV": "0.743", "ASF": "1.306"}
        | {"Delay": "N/A"},
        {"ID": "OAS1_0002_MR1", "M/F": "M", "Hand": "R", "Age": "23", "eTIV": "1588"}
        | {"nWBV": "0.848", "ASF": "1.105", "Delay": "N/A"},
        {"ID": "OAS1_0003_MR1", "M/F": "F", "Hand": "R", "Age": "80", "MMSE": "22", "CDR": "0.5"}
        | {"Delay": "N/A"},
        {"ID": "OAS1_0099_MR1", "M/F": "M", "Hand": "R", "Age": "51", "Delay": "N/A"},
    ]
    table = fixtures.write_csv(
        tmp_path / "oasis" / "oasis_cross-sectional.csv", fixtures.OASIS1_COLUMNS, rows
    )

    slices = load_slices(tmp_path / "oasis" / "disc1", image_size=32, slices_per_volume=2,
                         cache_dir=cache)  # fmt: skip
    given = load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2, cache_dir=cache,
                        demographics_csv=table)  # fmt: skip

    assert slices.demographics == {
        "OAS1_0001_MR1": {"age": 74.0, "sex": "F", "cdr": 0.0, "mmse": 29.0},
        "OAS1_0003_MR1": {"age": 80.0, "sex": "F", "cdr": 0.5, "mmse": 22.0},
    }  # disc1 holds sessions 1 and 3
    assert given.demographics["OAS1_0002_MR1"] == {
        "age": 23.0,
        "sex": "M",
        "cdr": None,
        "mmse": None,
    }
    assert len(given.demographics) == 3


@pytest.mark.parametrize(
    "columns", [("Subject", "Age"), ("ID", "Notes")], ids=["no id column", "no demographics"]
)
def test_a_table_without_the_oasis_columns_is_an_error_naming_it(tmp_path, cache, columns):
    write_oasis_release(tmp_path / "oasis", 3)
    row = dict(zip(columns, ("OAS1_0001_MR1", "1"), strict=True))
    table = fixtures.write_csv(tmp_path / "table.csv", columns, [row])
    with pytest.raises(DataError, match=r"table\.csv: not an OASIS demographics table"):
        load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2, cache_dir=cache,
                    demographics_csv=table)  # fmt: skip


def test_a_table_without_mmse_still_joins(tmp_path, cache):
    write_oasis_release(tmp_path / "oasis", 3)
    columns = tuple(column for column in fixtures.OASIS1_COLUMNS if column != "MMSE")
    rows = [
        {"ID": "OAS1_0001_MR1", "M/F": "F", "Age": "74", "CDR": "0"},
        {"ID": "OAS1_0002_MR1", "M/F": "M", "Age": "23"},
    ]
    fixtures.write_csv(tmp_path / "oasis" / "oasis_cross-sectional.csv", columns, rows)

    slices = load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2, cache_dir=cache)

    assert slices.demographics["OAS1_0001_MR1"] == {
        "age": 74.0,
        "sex": "F",
        "cdr": 0.0,
        "mmse": None,
    }
    assert slices.demographics["OAS1_0002_MR1"]["age"] == 23.0
    assert any("1 of 3 subjects have no row" in problem for problem in slices.problems)


def test_oasis2_longitudinal_layout_and_its_table(tmp_path, cache):
    part = tmp_path / "oasis2" / "OAS2_RAW_PART1"
    sessions = ["OAS2_0001_MR1", "OAS2_0001_MR2", "OAS2_0002_MR1", "OAS2_0004_MR1"]
    for index, session in enumerate(sessions):
        fixtures.write_oasis2_session(part, session, seed=index)
    rows = [
        {"Subject ID": "OAS2_0001", "MRI ID": "OAS2_0001_MR1", "Group": "Nondemented"}
        | {"Visit": "1", "MR Delay": "0", "M/F": "M", "Hand": "R", "Age": "87", "EDUC": "14"}
        | {"SES": "2", "MMSE": "27", "CDR": "0"},
        {"Subject ID": "OAS2_0002", "MRI ID": "OAS2_0002_MR1", "Group": "Demented"}
        | {"Visit": "1", "MR Delay": "0", "M/F": "M", "Hand": "R", "Age": "75", "EDUC": "12"}
        | {"MMSE": "23", "CDR": "0.5"},
    ]
    fixtures.write_csv(
        tmp_path / "oasis2" / "oasis_longitudinal.csv", fixtures.OASIS2_COLUMNS, rows
    )

    slices = load_slices(tmp_path / "oasis2", image_size=32, slices_per_volume=4, cache_dir=cache)

    assert slices.format == "oasis_raw"
    assert set(all_slices(slices)) == set(sessions)
    assert any(
        {"OAS2_0001_MR1", "OAS2_0001_MR2"} <= found for found in subject_sets(slices).values()
    )
    assert slices.demographics["OAS2_0002_MR1"] == {
        "age": 75.0,
        "sex": "M",
        "cdr": 0.5,
        "mmse": 23.0,
    }


def test_truncated_analyze_image_is_an_error_naming_it_or_skipped(tmp_path, cache):
    sessions = write_oasis_release(tmp_path / "oasis", 4)
    header_file = next((tmp_path / "oasis").rglob(f"{sessions[2]}_mpr_*_masked_gfc.hdr"))
    image_file = header_file.with_suffix(".img")
    image_file.write_bytes(image_file.read_bytes()[:1000])

    with pytest.raises(DataError, match=rf"{image_file.name}: truncated Analyze image"):
        load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2, cache_dir=cache)
    slices = load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2,
                         cache_dir=cache, skip_bad=True)  # fmt: skip

    assert sessions[2] not in all_slices(slices) and len(all_slices(slices)) == 3
    assert any(image_file.name in problem for problem in slices.problems)


def test_header_without_its_image_is_an_error_naming_it(tmp_path, cache):
    sessions = write_oasis_release(tmp_path / "oasis", 3)
    header_file = next((tmp_path / "oasis").rglob(f"{sessions[0]}_mpr_*_masked_gfc.hdr"))
    header_file.with_suffix(".img").unlink()

    with pytest.raises(DataError, match=rf"{header_file.name}: Analyze header with no .*\.img"):
        load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2, cache_dir=cache)
    slices = load_slices(tmp_path / "oasis", image_size=32, slices_per_volume=2,
                         cache_dir=cache, skip_bad=True)  # fmt: skip
    assert sessions[0] not in all_slices(slices)


def test_unreadable_analyze_header_and_lone_image_are_errors_naming_them(tmp_path, cache):
    folder = tmp_path / "volumes"
    head = fixtures.synthetic_head((32, 36, 32))
    fixtures.write_analyze(folder / "good.hdr", head)
    fixtures.write_analyze(folder / "garbled.hdr", head)
    (folder / "garbled.hdr").write_bytes(bytes(range(256)) + bytes(92))
    with pytest.raises(DataError, match=r"garbled\.hdr: cannot read volume"):
        load_slices(folder, image_size=32, slices_per_volume=2, cache_dir=cache)

    (folder / "garbled.hdr").unlink()
    with pytest.raises(DataError, match=r"garbled\.img: Analyze image with no garbled\.hdr"):
        load_slices(folder, image_size=32, slices_per_volume=2, cache_dir=cache)


def test_all_zero_and_non_finite_volumes_are_errors_naming_them(tmp_path, cache):
    folder = tmp_path / "volumes"
    head = fixtures.synthetic_head((32, 36, 32))
    fixtures.write_nifti(folder / "good.nii", head)
    fixtures.write_analyze(folder / "empty.hdr", np.zeros_like(head))
    with pytest.raises(DataError, match=r"empty\.hdr: volume is all zeros"):
        load_slices(folder, image_size=32, slices_per_volume=2, cache_dir=cache)

    (folder / "empty.hdr").unlink()
    (folder / "empty.img").unlink()
    broken = head.astype(np.float32)
    broken[5, 5, 5] = np.nan
    fixtures.write_nifti(folder / "broken.nii.gz", broken)
    with pytest.raises(DataError, match=r"broken\.nii\.gz: volume holds NaN or infinite"):
        load_slices(folder, image_size=32, slices_per_volume=2, cache_dir=cache)
    slices = load_slices(folder, image_size=32, slices_per_volume=2, cache_dir=cache,
                         skip_bad=True)  # fmt: skip
    assert set(all_slices(slices)) == {"good"}
    assert any("broken.nii.gz" in problem for problem in slices.problems)


# --------------------------------------------------------------------------- NIfTI folder


def test_nifti_folder_reorients_and_keeps_the_aspect_ratio(tmp_path, cache):
    folder = tmp_path / "scans"
    head = fixtures.synthetic_head((40, 56, 40))  # non-square axial planes: 40 wide, 56 deep
    fixtures.write_nifti(folder / "canonical.nii", head)
    fixtures.write_nifti(folder / "flipped_y.nii.gz", head, flip_axis=1)
    fixtures.write_nifti(folder / "lab" / "flipped_x.nii.gz", head, flip_axis=0)
    nib.save(nib.MGHImage(head.astype(np.float32), np.eye(4)), folder / "freesurfer.mgz")
    before = snapshot(folder)

    slices = load_slices(folder, image_size=48, slices_per_volume=6, cache_dir=cache)

    images = all_slices(slices)
    assert slices.format == "nifti_folder"
    assert set(images) == {"canonical", "flipped_y", "lab/flipped_x", "freesurfer"}
    for name in ("flipped_y", "lab/flipped_x", "freesurfer"):
        assert np.array_equal(images[name], images["canonical"]), name
    middle = images["canonical"][3]
    row, column = marker_position(middle)
    assert row < 24 and column < 24
    rows, columns = np.nonzero(middle)
    aspect = (np.ptp(rows) + 1) / (np.ptp(columns) + 1)
    assert aspect == pytest.approx(56 / 40, rel=0.1)
    assert_split_by_person(slices)
    assert snapshot(folder) == before


def test_dark_csf_of_a_masked_volume_is_not_cut_to_black(tmp_path, cache):
    """A skull-stripped volume (background exactly 0) whose ventricles are darker than Otsu's
    threshold keeps them above black; the same head in noisy air loses its air to black."""
    head = fixtures.synthetic_head((40, 40, 40)).astype(np.float32)
    x, y, z = np.mgrid[0:40, 0:40, 0:40] / 40 - 0.5
    ventricles = x**2 + y**2 + z**2 < 0.12**2
    head[ventricles] = 150.0  # CSF: far below the ~1000 of tissue, far above the 0 outside
    fixtures.write_nifti(tmp_path / "stripped" / "subject.nii", head)
    noisy = head + np.random.default_rng(0).normal(40, 10, head.shape)
    fixtures.write_nifti(tmp_path / "in_air" / "subject.nii", noisy)

    stripped = all_slices(load_slices(tmp_path / "stripped", image_size=40, slices_per_volume=5,
                                      cache_dir=cache))["subject"][2]  # fmt: skip
    in_air = all_slices(load_slices(tmp_path / "in_air", image_size=40, slices_per_volume=5,
                                    cache_dir=cache))["subject"][2]  # fmt: skip

    assert 0 < stripped[20, 20] < 100  # the ventricle centre: dark grey, not black
    assert stripped[0, 0] == 0
    assert in_air[0, 0] == 0  # the noisy air is below the Otsu foreground's low end


def test_anisotropic_voxels_are_resampled_to_square_pixels(tmp_path, cache):
    head = fixtures.synthetic_head((40, 40, 40))
    fixtures.write_nifti(tmp_path / "scans" / "tall.nii", head, zooms=(1.0, 1.5, 1.0))
    middle = all_slices(
        load_slices(tmp_path / "scans", image_size=48, slices_per_volume=3, cache_dir=cache)
    )["tall"][1]
    rows, columns = np.nonzero(middle)
    assert (np.ptp(rows) + 1) / (np.ptp(columns) + 1) == pytest.approx(1.5, rel=0.1)


def test_analyze_orient_field_names_the_voxel_axes(tmp_path, cache):
    head = fixtures.synthetic_head((36, 44, 40))
    fixtures.write_analyze(tmp_path / "scans" / "transverse.hdr", head, orient=0)
    fixtures.write_analyze(tmp_path / "scans" / "sagittal.hdr", head, orient=2)
    images = all_slices(
        load_slices(tmp_path / "scans", image_size=32, slices_per_volume=4, cache_dir=cache)
    )
    assert np.array_equal(images["sagittal"], images["transverse"])
    row, column = marker_position(images["transverse"][2])
    assert row < 16 and column < 16


# ------------------------------------------------------------------------------------ npz


def test_medmnist_npz_splits_labels_and_subjects(tmp_path, cache):
    rng = np.random.default_rng(0)
    val = rng.random((3, 28, 28, 1)).astype(np.float32)
    val[0] = 0.5
    np.savez(
        tmp_path / "organamnist.npz",
        train_images=rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        train_labels=np.arange(5).reshape(5, 1),
        val_images=val,
        val_labels=np.array([7, 8, 9]),
        test_images=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
    )

    slices = load_slices(tmp_path / "organamnist.npz", image_size=32, cache_dir=cache)

    assert slices.format == "npz"
    assert [len(slices.splits[split]) for split in dataset.SPLITS] == [5, 3, 2]
    ids = np.concatenate([slices.splits[split].subject_ids for split in dataset.SPLITS])
    assert ids.tolist() == [f"npz_{index:06d}" for index in range(10)]
    assert slices.splits["train"].labels.tolist() == [0, 1, 2, 3, 4]
    assert slices.splits["validate"].labels.dtype == np.int64
    assert slices.splits["test"].labels is None
    assert (slices.splits["validate"].images[0] == 128).all()
    assert all((s.slice_indices == 0).all() for s in slices.splits.values())


def test_npz_without_the_keys_or_in_colour_is_an_error_naming_it(tmp_path, cache):
    np.savez(tmp_path / "other.npz", x_train=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"other\.npz: none of the keys train_images"):
        load_slices(tmp_path / "other.npz", image_size=16, cache_dir=cache)
    colour = np.zeros((2, 8, 8, 3), np.uint8)
    colour[..., 0] = 200
    np.savez(tmp_path / "pathmnist.npz", train_images=colour)
    with pytest.raises(DataError, match=r"pathmnist\.npz: train_images is not greyscale"):
        load_slices(tmp_path / "pathmnist.npz", image_size=16, cache_dir=cache)


# ---------------------------------------------------------------------------------- cache


def test_second_load_is_a_cache_hit_and_changed_inputs_reload(tmp_path, cache, monkeypatch):
    root = fixtures.write_png_tree(tmp_path / "data", slices=2)
    first = load_slices(root, image_size=32, cache_dir=cache)

    def refuse(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    with monkeypatch.context() as patch:
        patch.setattr(png_tree, "read_greyscale", refuse)
        second = load_slices(root, image_size=32, cache_dir=cache)
        assert np.array_equal(second.splits["train"].images, first.splits["train"].images)
        assert np.array_equal(second.splits["test"].masks, first.splits["test"].masks)
        with pytest.raises(AssertionError, match="decoded"):
            load_slices(root, image_size=16, cache_dir=cache)  # other options: a miss

        touched = root / "keras_png_slices_train" / "case_001_slice_0.nii.png"
        status = touched.stat()
        os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
        with pytest.raises(AssertionError, match="decoded"):
            load_slices(root, image_size=32, cache_dir=cache)

    load_slices(root, image_size=32, cache_dir=cache)
    added = root / "keras_png_slices_test" / "case_004_slice_2.nii.png"
    Image.fromarray(fixtures.png_slice_pixels(4, 2), mode="L").save(added)
    Image.fromarray(fixtures.png_mask_pixels(), mode="L").save(
        root / "keras_png_slices_seg_test" / "seg_004_slice_2.nii.png"
    )
    assert len(load_slices(root, image_size=32, cache_dir=cache).splits["test"]) == 3


def test_new_loading_code_keys_a_new_cache_file(tmp_path, cache, monkeypatch):
    root = fixtures.write_png_tree(tmp_path / "data", slices=2)
    load_slices(root, image_size=32, cache_dir=cache)
    (first,) = cache.glob("png_tree-*.npz")
    assert data_cache._code_hash() == data_cache._code_hash()  # stable between calls

    monkeypatch.setattr(data_cache, "_code_hash", lambda: "edited loading code")
    load_slices(root, image_size=32, cache_dir=cache)

    assert {path.name for path in cache.glob("png_tree-*.npz")} - {first.name}


def test_damaged_cache_file_is_rebuilt_and_cache_never_goes_in_the_data(tmp_path, cache):
    root = fixtures.write_png_tree(tmp_path / "data", slices=2)
    first = load_slices(root, image_size=32, cache_dir=cache)
    (cache_file,) = cache.glob("png_tree-*.npz")
    cache_file.write_bytes(b"not a zip file")

    rebuilt = load_slices(root, image_size=32, cache_dir=cache)

    assert np.array_equal(rebuilt.splits["train"].images, first.splits["train"].images)
    assert list(cache.iterdir()) == [cache_file] and cache_file.stat().st_size > 1000
    with pytest.raises(ValueError, match="inside the data folder"):
        load_slices(root, image_size=32, cache_dir=root / "cache")
    assert not (root / "cache").exists()


# --------------------------------------------------------------------------- bad paths


def test_missing_empty_and_unknown_inputs_are_errors_naming_them(tmp_path, cache):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        load_slices(tmp_path / "nowhere", cache_dir=cache)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"empty: folder is empty"):
        load_slices(empty, cache_dir=cache)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "notes.txt").write_text("brains")
    with pytest.raises(DataError, match=r"unknown: no known data format") as caught:
        load_slices(unknown, cache_dir=cache)
    for expectation in ("png_tree", "case_NNN_slice_S.nii.png", "oasis_raw", "T88_111"):
        assert expectation in str(caught.value)
    for name in ("nifti_folder", "*.nii.gz", "npz", "train_images", "image_folder", "*.jpg"):
        assert name in str(caught.value)

    with pytest.raises(DataError, match=r"notes\.txt: a data file must be a MedMNIST-style"):
        load_slices(unknown / "notes.txt", cache_dir=cache)


# ---------------------------------------------------------------------------- command line


def test_summary_json_describes_the_data(tmp_path, capsys):
    root = fixtures.write_png_tree(tmp_path / "data", slices=3)
    assert main(["summary", str(root), "--json", "--image-size", "32"]) == 0

    summary = json.loads(capsys.readouterr().out)

    assert {"format", "source", "image_size", "splits", "problems"} <= set(summary)
    assert summary["format"] == "png_tree" and summary["image_size"] == 32
    assert summary["splits"]["train"]["slices"] == 6
    assert summary["splits"]["train"]["subjects"] == 2
    assert summary["splits"]["test"]["masks"] is True
    intensity = summary["splits"]["train"]["intensity"]
    assert 0.0 == intensity["min"] < intensity["mean"] < intensity["max"] <= 1.0
    assert summary["problems"] == []
    assert list(Path(os.environ["BRAIN_VQVAE_CACHE"]).glob("png_tree-*.npz"))  # conftest's


def test_summary_reports_bad_files_as_errors_or_skips_them(tmp_path, capsys):
    root = fixtures.write_png_tree(tmp_path / "data", slices=3)
    broken = root / "keras_png_slices_train" / "case_002_slice_1.nii.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")

    assert main(["summary", str(root)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "case_002_slice_1.nii.png" in error
    assert "Traceback" not in error

    assert main(["summary", str(root), "--skip-bad"]) == 0
    output = capsys.readouterr().out
    assert "format:       png_tree" in output and "case_002_slice_1.nii.png" in output


def test_demo_command_calls_build_demo_dataset(tmp_path, monkeypatch, capsys):
    calls = []

    def build_demo_dataset(out_dir, **options):
        calls.append((out_dir, options))
        return out_dir

    monkeypatch.setitem(
        sys.modules,
        "brain_vqvae.data.demo",
        types.SimpleNamespace(build_demo_dataset=build_demo_dataset),
    )
    argv = ["demo", "--out", str(tmp_path / "demo"), "--overwrite", "--train-subjects", "3"]
    assert main([*argv, "--validate-subjects", "2", "--test-subjects", "1", "--seed", "5"]) == 0

    assert calls == [
        (
            tmp_path / "demo",
            {
                "train_subjects": 3,
                "validate_subjects": 2,
                "test_subjects": 1,
                "seed": 5,
                "overwrite": True,
            },
        )
    ]
    assert str(tmp_path / "demo") in capsys.readouterr().out


# -------------------------------------------------------------------------------- tf.data


def numbered_slices(count, size=8):
    """Images whose every pixel is 10 * index, to read the order back from a batch."""
    images = np.repeat((np.arange(count, dtype=np.uint8) * 10)[:, None, None], size, axis=1)
    images = np.repeat(images, size, axis=2)
    return SliceSet(images, np.asarray([str(i) for i in range(count)]), np.zeros(count, np.int32))


def order_of(tf_dataset):
    return [
        round(float(value) * 25.5) for batch in tf_dataset for value in batch[:, 0, 0, 0].numpy()
    ]


def test_tf_dataset_batches_float_images_in_unit_range():
    slice_set = numbered_slices(10)
    batches = [batch.numpy() for batch in make_tf_dataset(slice_set, batch_size=4)]

    assert [batch.shape for batch in batches] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
    assert all(batch.dtype == np.float32 for batch in batches)
    assert np.array_equal(np.concatenate(batches), slice_set.float_images())
    assert np.concatenate(batches).max() == pytest.approx(90 / 255)


def test_tf_dataset_shuffle_is_seeded_and_changes_every_epoch():
    slice_set = numbered_slices(20)
    shuffled = make_tf_dataset(slice_set, batch_size=6, shuffle=True, seed=3)
    first_epoch, second_epoch = order_of(shuffled), order_of(shuffled)

    assert sorted(first_epoch) == list(range(20))
    assert first_epoch != second_epoch and first_epoch != list(range(20))
    assert order_of(make_tf_dataset(slice_set, batch_size=6, shuffle=True, seed=3)) == first_epoch


def test_tf_dataset_augmentation_keeps_shape_and_range_and_varies_per_image():
    brain = fixtures.png_slice_pixels(5, 20, size=32)
    slice_set = SliceSet(np.stack([brain] * 8), np.asarray(["a"] * 8), np.zeros(8, np.int32))
    augmented = make_tf_dataset(slice_set, batch_size=8, augment=True, seed=1)

    (batch,) = [batch.numpy() for batch in augmented]
    (next_epoch,) = [batch.numpy() for batch in augmented]
    (same_seed,) = [b.numpy() for b in make_tf_dataset(slice_set, 8, augment=True, seed=1)]

    assert batch.shape == (8, 32, 32, 1) and batch.dtype == np.float32
    assert augmented.element_spec.shape.as_list() == [None, 32, 32, 1]  # static, for the SSIM
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    assert len({image.tobytes() for image in batch}) == 8
    assert not np.allclose(batch[0, ..., 0], brain / 255.0)
    assert np.array_equal(same_seed, batch) and not np.array_equal(next_epoch, batch)


def test_numpy_warp_is_the_tf_warp():
    """The JAX pipeline's NumPy flip, rotation and zoom sample as TensorFlow's transform does."""
    import tensorflow as tf

    from brain_vqvae.data.arrays import flip_rotate_zoom
    from brain_vqvae.data.pipeline import _flip_rotate_zoom

    brain = fixtures.png_slice_pixels(5, 20, size=32)
    images = np.stack([brain] * 3)[..., None].astype(np.float32) / 255.0
    flip = np.array([1.0, -1.0, -1.0], np.float32)
    angle = np.array([0.1, -0.17, 0.0], np.float32)
    zoom = np.array([0.92, 1.08, 1.0], np.float32)
    expected = _flip_rotate_zoom(tf.constant(images), flip, angle, zoom).numpy()
    warped = flip_rotate_zoom(images, flip, angle, zoom)
    np.testing.assert_allclose(warped, expected, atol=1e-5)
    np.testing.assert_array_equal(warped[2], images[2, :, ::-1])  # flip alone: a mirror


def test_array_batches_are_the_tf_datasets_batches_in_numpy():
    from brain_vqvae.data.arrays import ArrayBatches, augment_batch, to_unit_float

    slice_set = numbered_slices(20)
    plain = ArrayBatches(slice_set.images, 6, shuffle=False, seed=0, transform=to_unit_float)
    assert [plain[index].shape for index in range(len(plain))] == [(6, 8, 8, 1)] * 3 + [
        (2, 8, 8, 1)
    ]
    np.testing.assert_array_equal(
        np.concatenate([plain[index] for index in range(len(plain))]), slice_set.float_images()
    )

    def epoch_order(batches):
        order = [
            round(float(v) * 25.5) for i in range(len(batches)) for v in batches[i][:, 0, 0, 0]
        ]
        batches.on_epoch_end()
        return order

    shuffled = ArrayBatches(slice_set.images, 6, shuffle=True, seed=3, transform=to_unit_float)
    first_epoch, second_epoch = epoch_order(shuffled), epoch_order(shuffled)
    assert sorted(first_epoch) == list(range(20))
    assert first_epoch != second_epoch and first_epoch != list(range(20))
    again = ArrayBatches(slice_set.images, 6, shuffle=True, seed=3, transform=to_unit_float)
    assert epoch_order(again) == first_epoch

    brain = fixtures.png_slice_pixels(5, 20, size=32)
    augmented = ArrayBatches(np.stack([brain] * 8), 8, False, seed=1, transform=augment_batch)
    batch = augmented[0]
    assert batch.shape == (8, 32, 32, 1) and batch.dtype == np.float32
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    assert len({image.tobytes() for image in batch}) == 8
    np.testing.assert_array_equal(augmented[0], batch)
    augmented.on_epoch_end()
    assert not np.array_equal(augmented[0], batch)


def test_code_map_dataset_batches_and_reshuffles_every_epoch():
    code_maps = np.arange(20 * 4, dtype=np.int32).reshape(20, 2, 2)
    batches = [batch.numpy() for batch in code_map_dataset(code_maps, batch_size=6)]
    assert [batch.shape for batch in batches] == [(6, 2, 2)] * 3 + [(2, 2, 2)]
    assert np.array_equal(np.concatenate(batches), code_maps)

    shuffled = code_map_dataset(code_maps, batch_size=6, shuffle=True, seed=3)

    def firsts(dataset):
        return [int(code) // 4 for batch in dataset for code in batch[:, 0, 0].numpy()]

    first_epoch, second_epoch = firsts(shuffled), firsts(shuffled)
    assert sorted(first_epoch) == list(range(20)) and first_epoch != list(range(20))
    assert first_epoch != second_epoch
    assert firsts(code_map_dataset(code_maps, 6, shuffle=True, seed=3)) == first_epoch


# ------------------------------------------------------------------ orientation round trip

HEAD_SHAPE = (40, 48, 44)  # unequal sides, so a permuted axis order changes the stored shape
ORIENTED_FILES = {  # subject id (file stem) -> (suffix, voxel axis directions written)
    "ras": (".nii", "RAS"),
    "lps": (".nii", "LPS"),
    "pil": (".nii.gz", "PIL"),
    "sar": (".nii.gz", "SAR"),
    "lia_mgz": (".mgz", "LIA"),  # FreeSurfer's conformed orientation
    "ras_mgz": (".mgz", "RAS"),
}


def assert_marker_top_left(images, size, name):
    """The marker (on the subject's anterior left) in the top-left quarter of the middle
    slices of (M, S, S) `images`."""
    middle = len(images) // 2
    for image in images[max(0, middle - 1) : middle + 2]:
        row, column = marker_position(image)
        assert row < size / 2, f"{name}: marker at row {row:.1f}, not anterior (top)"
        assert column < size / 2, f"{name}: marker at column {column:.1f}, not on the left"


def write_every_volume_format(folder):
    """The same head in every volume format and orientation the loaders read:
    {subject id in a nifti_folder load: file}."""
    head = fixtures.synthetic_head(HEAD_SHAPE)
    files = {
        stem: fixtures.write_oriented(folder / f"{stem}{suffix}", head, axcodes)
        for stem, (suffix, axcodes) in ORIENTED_FILES.items()
    }
    files["transverse"] = fixtures.write_analyze(folder / "transverse.hdr", head, orient=0)
    files["sagittal"] = fixtures.write_analyze(folder / "sagittal.hdr", head, orient=2)
    return files


def test_every_volume_format_and_orientation_loads_left_on_the_left(tmp_path, cache):
    folder = tmp_path / "scans"
    files = write_every_volume_format(folder)

    images = all_slices(load_slices(folder, image_size=32, slices_per_volume=5, cache_dir=cache))

    assert set(images) == set(files)
    for name in files:
        assert_marker_top_left(images[name], 32, name)
        assert np.array_equal(images[name], images["ras"]), name  # the same head, any file
        single, planes = load_volume_slices(files[name], image_size=32, slices_per_volume=5)
        assert np.array_equal(single, images[name]), name
        assert planes.shape == (5,) and (np.diff(planes) > 0).all()


@pytest.mark.parametrize("release", ["oasis1", "oasis2"])
def test_raw_oasis_releases_load_left_on_the_left(tmp_path, cache, release):
    if release == "oasis1":
        header = fixtures.write_oasis1_session(tmp_path / "disc1", "OAS1_0001_MR1", (48, 56, 48))
    else:
        header = fixtures.write_oasis2_session(tmp_path / "disc1", "OAS2_0001_MR1")
    slices = load_slices(tmp_path / "disc1", image_size=32, slices_per_volume=5, cache_dir=cache)
    (images,) = all_slices(slices).values()
    assert_marker_top_left(images, 32, release)
    single, _ = load_volume_slices(header, image_size=32, slices_per_volume=5)
    assert_marker_top_left(single, 32, f"{release} file")


def test_load_volume_slices_of_one_file_a_plane_and_bad_files(tmp_path):
    head = fixtures.synthetic_head((40, 48, 40))
    volume = fixtures.write_oriented(tmp_path / "head.nii.gz", head, "LPS")
    images, planes = load_volume_slices(volume, image_size=24, slices_per_volume=7)
    assert images.shape == (7, 24, 24) and images.dtype == np.uint8 and planes.shape == (7,)
    assert_marker_top_left(images, 24, "head.nii.gz")

    middle = head[:, :, 20]
    fixtures.write_nifti(tmp_path / "plane.nii", middle[:, :, None])
    nib.save(nib.Nifti1Image(middle, np.eye(4)), tmp_path / "flat.nii")  # a 2-D image
    for name in ("plane.nii", "flat.nii"):
        (image,), planes = load_volume_slices(tmp_path / name, image_size=24)
        assert planes.tolist() == [0]
        assert_marker_top_left(image[None], 24, name)

    (tmp_path / "broken.nii").write_bytes(b"not a volume")
    with pytest.raises(DataError, match=r"broken\.nii: cannot read volume"):
        load_volume_slices(tmp_path / "broken.nii")
    with pytest.raises(DataError, match=r"missing\.mgz: no such file"):
        load_volume_slices(tmp_path / "missing.mgz")
    with pytest.raises(DataError, match=r"notes\.txt: not a volume file"):
        load_volume_slices(tmp_path / "notes.txt")
    fixtures.write_analyze(tmp_path / "alone.hdr", head).with_suffix(".img").unlink()
    with pytest.raises(DataError, match=r"alone\.hdr: Analyze header with no alone\.img"):
        load_volume_slices(tmp_path / "alone.hdr")
