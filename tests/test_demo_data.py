"""The synthetic MNI152 demo dataset: layout, determinism, variation, output-folder safety."""

import csv
import io
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from brain_vqvae.data import demo as demo_data
from brain_vqvae.data.demo import build_demo_dataset

SPLIT_SUBJECTS = {"train": 2, "validate": 1, "test": 1}
IMAGE_NAME = re.compile(r"^case_(\d{3})_slice_(\d|[12]\d|3[01])\.nii\.png$")
MASK_NAME = re.compile(r"^seg_(\d{3})_slice_(\d|[12]\d|3[01])\.nii\.png$")
FOLDERS = [f"keras_png_slices_{s}" for s in demo_data.SPLITS] + [
    f"keras_png_slices_seg_{s}" for s in demo_data.SPLITS
]


def build_small(out_dir, **options):
    """Build the 2 + 1 + 1 subject dataset (options override the counts, seed, workers...)."""
    arguments = {
        "train_subjects": SPLIT_SUBJECTS["train"],
        "validate_subjects": SPLIT_SUBJECTS["validate"],
        "test_subjects": SPLIT_SUBJECTS["test"],
        "workers": 1,
    }
    return build_demo_dataset(out_dir, **(arguments | options))


def read_png(path):
    with Image.open(path) as image:
        image.load()
        return image


def read_subject(root, split, case):
    """(32, 256, 256) uint8 images and masks of one case."""
    images, masks = [], []
    for s in range(demo_data.SLICES_PER_SUBJECT):
        name = f"{case}_slice_{s}.nii.png"
        images.append(np.asarray(read_png(root / f"keras_png_slices_{split}" / f"case_{name}")))
        masks.append(np.asarray(read_png(root / f"keras_png_slices_seg_{split}" / f"seg_{name}")))
    return np.stack(images), np.stack(masks)


def file_bytes(root):
    """{relative path: bytes} of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The small dataset built with two worker processes."""
    return build_small(tmp_path_factory.mktemp("demo") / "keras_png_slices_data", workers=2)


def test_layout_and_names_match_the_oasis_png_tree(demo):
    assert sorted(p.name for p in demo.iterdir()) == sorted(
        [*FOLDERS, "README.txt", "oasis_cross-sectional.csv"]
    )
    for split, subjects in SPLIT_SUBJECTS.items():
        images = sorted((demo / f"keras_png_slices_{split}").iterdir())
        masks = sorted((demo / f"keras_png_slices_seg_{split}").iterdir())
        assert len(images) == len(masks) == subjects * 32
        assert all(IMAGE_NAME.match(p.name) for p in images)
        assert all(MASK_NAME.match(p.name) for p in masks)
        assert {p.name.replace("case_", "seg_", 1) for p in images} == {p.name for p in masks}
        for case in {IMAGE_NAME.match(p.name).group(1) for p in images}:
            slices = {int(IMAGE_NAME.match(p.name).group(2)) for p in images if p.name[5:8] == case}
            assert slices == set(range(32))


def test_case_numbers_are_consecutive_and_never_in_two_splits(demo):
    cases = {}
    for split in SPLIT_SUBJECTS:
        names = [p.name for p in (demo / f"keras_png_slices_{split}").iterdir()]
        cases[split] = {IMAGE_NAME.match(name).group(1) for name in names}
    assert cases == {"train": {"001", "002"}, "validate": {"003"}, "test": {"004"}}


def test_images_are_8_bit_greyscale_and_masks_hold_four_classes(demo):
    for path in sorted(demo.rglob("*.png"))[::17]:
        image = read_png(path)
        assert (image.mode, image.size) == ("L", (256, 256)), path
    images, masks = read_subject(demo, "train", "001")
    assert set(np.unique(masks)) == {0, 85, 170, 255}
    assert np.all(images[masks == 0] == 0), "background must be black"
    assert np.mean(images[masks > 0] > 0) > 0.99
    middle = masks[16] // 85
    brain_pixels = np.count_nonzero(middle)
    for tissue in (1, 2, 3):
        assert np.count_nonzero(middle == tissue) > 0.02 * brain_pixels
    # White matter is brighter than grey matter, which is brighter than CSF (a T1 image).
    tissue_means = [images[16][middle == tissue].mean() for tissue in (1, 2, 3)]
    assert tissue_means[0] < tissue_means[1] < tissue_means[2]


def test_every_slice_shows_a_centred_upright_brain(demo):
    masks = read_subject(demo, "validate", "003")[1]
    brain_fraction = (masks > 0).mean(axis=(1, 2))
    assert np.all(brain_fraction > 0.02), "no empty slices"
    assert 0.25 < brain_fraction[16] < 0.7
    assert not masks[:, [0, -1], :].any() and not masks[:, :, [0, -1]].any(), "brain cut off"
    rows, columns = np.nonzero(masks[16])
    assert abs(rows.mean() - 127.5) < 20 and abs(columns.mean() - 127.5) < 20
    # Upright: the head is longer front to back than side to side, and the lowest slice shows
    # the cerebellum, which is posterior, so it lies in the bottom half of the image.
    assert np.ptp(rows) > np.ptp(columns)
    assert np.nonzero(masks[0])[0].mean() > 128


def test_subjects_differ_but_stay_brains(demo):
    first, first_masks = read_subject(demo, "train", "001")
    second, second_masks = read_subject(demo, "train", "002")
    difference = np.abs(first.astype(np.int16) - second.astype(np.int16))
    assert difference[16].mean() > 10
    assert np.mean(first_masks[16] != second_masks[16]) > 0.1
    for masks in (first_masks, second_masks):
        assert 0.25 < (masks[16] > 0).mean() < 0.7


def test_same_seed_gives_identical_bytes_with_any_worker_count(demo, tmp_path):
    again = build_small(tmp_path / "again", workers=1)
    assert file_bytes(again) == file_bytes(demo)


def test_another_seed_gives_other_images(demo, tmp_path):
    other = build_demo_dataset(
        tmp_path / "other", train_subjects=1, validate_subjects=0, test_subjects=0, seed=1
    )
    image_name = "keras_png_slices_train/case_001_slice_16.nii.png"
    first = np.asarray(read_png(demo / image_name)).astype(np.int16)
    second = np.asarray(read_png(other / image_name)).astype(np.int16)
    assert np.abs(first - second).mean() > 10
    assert not list((other / "keras_png_slices_validate").iterdir())


def test_readme_says_synthetic_mni152_not_oasis(demo):
    text = (demo / "README.txt").read_text()
    assert demo_data.README_MARKER in text
    assert "SYNTHETIC DATA - NOT OASIS" in text
    assert "MNI152 2009a" in text and "nilearn" in text
    assert "Seed: 0." in text
    assert "cases 001-002" in text and "cases 004-004" in text


def test_refuses_a_non_empty_folder_and_leaves_it_alone(tmp_path):
    user_folder = tmp_path / "my_scans"
    user_folder.mkdir()
    (user_folder / "scan.nii").write_bytes(b"precious")
    with pytest.raises(ValueError, match="my_scans.*not empty"):
        build_demo_dataset(user_folder, train_subjects=1, validate_subjects=0, test_subjects=0)
    with pytest.raises(ValueError, match="my_scans.*not a demo dataset"):
        build_demo_dataset(
            user_folder, train_subjects=1, validate_subjects=0, test_subjects=0, overwrite=True
        )
    assert [p.name for p in tmp_path.iterdir()] == ["my_scans"]
    assert [p.name for p in user_folder.iterdir()] == ["scan.nii"]


def test_overwrite_replaces_a_previous_demo_only(tmp_path):
    out_dir = tmp_path / "demo"
    counts = {"train_subjects": 1, "validate_subjects": 0, "test_subjects": 0}
    build_demo_dataset(out_dir, **counts, seed=0)
    (out_dir / ".complete").touch()  # the Makefile's stamp file may sit in the folder
    build_demo_dataset(out_dir, **counts, seed=1, overwrite=True)
    assert "Seed: 1." in (out_dir / "README.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no staging folder left behind"

    (out_dir / "notes.txt").write_text("mine")
    (out_dir / ".git").mkdir()
    with pytest.raises(ValueError, match=r"\.git, notes\.txt"):
        build_demo_dataset(out_dir, **counts, overwrite=True)
    assert (out_dir / "notes.txt").read_text() == "mine"
    assert (out_dir / ".git").is_dir()


def test_a_failed_build_leaves_no_partial_dataset(tmp_path, monkeypatch):
    def fail(*arguments):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_data, "write_subject", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_small(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"train_subjects": 0}, "train_subjects"),
        ({"validate_subjects": -1}, "validate_subjects"),
        ({"test_subjects": 2.5}, "test_subjects"),
        ({"train_subjects": 990, "validate_subjects": 10}, "at most 999"),
        ({"seed": -3}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=named):
        build_demo_dataset(tmp_path / "demo", **arguments)
    assert not (tmp_path / "demo").exists()


def test_dataset_loader_reads_the_demo_as_a_png_tree(demo):
    from dataset import load_slices

    brain_slices = load_slices(demo, image_size=64)
    assert brain_slices.format == "png_tree"
    assert brain_slices.problems == []
    train = brain_slices.splits["train"]
    assert train.images.shape == (2 * 32, 64, 64)
    assert set(train.subject_ids) == {"001", "002"}
    assert sorted(set(train.slice_indices)) == list(range(32))
    assert set(np.unique(train.masks)) == {0, 1, 2, 3}
    assert set(brain_slices.splits["test"].subject_ids) == {"004"}


def lopsided_template():
    """A small template in RAS voxel order: an ellipsoid brain whose left hemisphere (voxel x
    below the centre, i.e. towards the subject's left) is bright and right one dark."""
    shape = (150, 180, 140)
    centre = (np.array(shape) - 1) / 2
    x, y, z = (np.arange(side)[:, None, None] - c for side, c in zip(shape, centre, strict=True))
    y, z = np.moveaxis(y, 0, 1), np.moveaxis(z, 0, 2)
    brain = ((x / 60) ** 2 + (y / 75) ** 2 + (z / 55) ** 2 < 1).astype(np.uint8) * 255
    t1 = np.where(x < 0, brain, brain // 3).astype(np.uint8)
    return demo_data.Template(
        t1=t1,
        grey_matter=brain,
        white_matter=np.zeros_like(brain),
        brain=brain,
        centre=centre,
        ventricle_push=np.zeros((3, 2, 2, 2), np.float32),
        ventricle_origin=np.zeros(3),
        outer_depth=np.full(shape, 10.0, np.float32),  # no outer CSF near the tissue
        tissue_t1=np.array([0.1, 0.5, 0.9]),
    )


def test_subject_left_is_written_on_the_image_left():
    """The neurological convention of the loaders: the subject's left (negative RAS x) in the
    left half of every slice, anterior at the top."""
    x_mm, y_mm, _ = demo_data.output_plane_axes(1)
    assert x_mm[0] < 0 < x_mm[255] and y_mm[0] > 0 > y_mm[255]

    subject = demo_data.synthesize_subject(lopsided_template(), case_number=1, seed=0)

    middle, brain = subject.images[16].astype(float), subject.classes[16] > 0
    left, right = middle[:, :128][brain[:, :128]], middle[:, 128:][brain[:, 128:]]
    assert left.mean() > 2 * right.mean()
    rows, columns = np.nonzero(brain)
    assert np.ptp(rows) > np.ptp(columns)  # upright: the long front-back axis runs down


# Demographics: the table beside the tree, its distribution, and anatomy that follows it.

OASIS_CROSS_SECTIONAL_HEADER = "ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,ASF,Delay"


def read_table(root):
    """(header line, rows as dicts) of the demo's oasis_cross-sectional.csv."""
    text = (root / "oasis_cross-sectional.csv").read_text()
    return text.splitlines()[0], list(csv.DictReader(io.StringIO(text)))


def test_demographics_table_has_the_oasis_header_and_a_row_per_subject(demo):
    header, rows = read_table(demo)
    assert header == OASIS_CROSS_SECTIONAL_HEADER
    assert [row["ID"] for row in rows] == ["001", "002", "003", "004"]
    for row in rows:
        age, cdr, mmse = int(row["Age"]), float(row["CDR"]), int(row["MMSE"])
        assert 18 <= age <= 96 and row["M/F"] in {"F", "M"} and row["Hand"] == "R"
        assert cdr in {0, 0.5, 1, 2} and (cdr == 0 or age >= 60)
        assert 0 <= mmse <= 30
        assert row["Educ"] == row["SES"] == "" and row["Delay"] == "N/A"
        assert 1000 < int(row["eTIV"]) < 3000 and 0.6 < float(row["ASF"]) < 1.6


def test_demographics_table_volumes_match_the_masks(demo):
    """nWBV is the tissue fraction of the brain in the subject's masks; eTIV * ASF is the one
    template volume for every subject (eTIV = V s_x s_y s_z, ASF = 1 / (s_x s_y s_z))."""
    rows = {row["ID"]: row for row in read_table(demo)[1]}
    for split, case in (("train", "001"), ("train", "002"), ("validate", "003")):
        classes = read_subject(demo, split, case)[1] // 85
        tissue_fraction = np.count_nonzero(classes >= 2) / np.count_nonzero(classes)
        assert float(rows[case]["nWBV"]) == pytest.approx(tissue_fraction, abs=5e-4)
    template_volumes = [int(row["eTIV"]) * float(row["ASF"]) for row in rows.values()]
    assert np.ptp(template_volumes) < 0.002 * np.mean(template_volumes)


def test_load_slices_finds_the_demographics_of_every_subject(demo):
    from dataset import load_slices

    brain_slices = load_slices(demo, image_size=64)
    assert brain_slices.problems == []
    assert set(brain_slices.demographics) == {"001", "002", "003", "004"}
    rows = {row["ID"]: row for row in read_table(demo)[1]}
    for subject, record in brain_slices.demographics.items():
        assert record == {
            "age": float(rows[subject]["Age"]),
            "sex": rows[subject]["M/F"],
            "cdr": float(rows[subject]["CDR"]),
            "mmse": float(rows[subject]["MMSE"]),
        }


def test_demographics_are_drawn_like_oasis_1():
    """OASIS-1: 416 people aged 18-96, about 60% women, about half of those over 60 demented
    (100 of 198), nobody under 60; MMSE falls with the CDR."""
    people = [demo_data.draw_demographics(np.random.default_rng([0, n])) for n in range(3000)]
    ages = np.array([person.age for person in people])
    cdrs = np.array([person.cdr for person in people])
    mmses = np.array([person.mmse for person in people])
    assert ages.min() >= 18 and ages.max() <= 96 and ages.min() < 20 and ages.max() > 94
    assert 0.42 < np.mean(ages >= 60) < 0.54
    assert 0.55 < np.mean([person.sex == "F" for person in people]) < 0.69
    assert set(cdrs) == {0, 0.5, 1, 2}
    assert np.all(cdrs[ages < 60] == 0)
    assert 0.42 < np.mean(cdrs[ages >= 60] > 0) < 0.58
    # Dementia grows likelier with age.
    assert np.mean(cdrs[ages >= 85] > 0) > 2 * np.mean(cdrs[(ages >= 60) & (ages < 70)] > 0)
    assert mmses.min() >= 0 and mmses.max() <= 30
    assert mmses[cdrs == 0].mean() > mmses[cdrs == 0.5].mean() > mmses[cdrs == 1].mean() + 2


def test_ages_are_stratified_within_each_split():
    """Each split of n people has one age quantile in each of the n strata [i / n, (i + 1) / n),
    so its ages span the distribution; the quantiles map onto the OASIS-like bands."""
    for split in ("train", "validate", "test"):
        quantiles = demo_data.split_age_quantiles(8, seed=3, split=split)
        assert sorted(np.floor(quantiles * 8).astype(int)) == list(range(8))
    assert not np.allclose(
        demo_data.split_age_quantiles(8, 3, "test"), demo_data.split_age_quantiles(8, 3, "train")
    )
    # Bands 30 % in 18-30, 22 % in 30-60, 48 % in 60-96 years.
    expected = {0.0: 18, 0.15: 24, 0.3: 30, 0.41: 45, 0.52: 60, 0.76: 78, 0.99999: 96}
    for quantile, age in expected.items():
        assert demo_data.age_at_quantile(quantile) == age, quantile
    with pytest.raises(ValueError, match="quantile must be in"):
        demo_data.age_at_quantile(1.0)
    # The same person at a given quantile: only the age (and what follows it) changes.
    person = demo_data.draw_demographics(np.random.default_rng([0, 7]), age_quantile=0.99)
    assert person.age == demo_data.age_at_quantile(0.99)


def ventricle_area(classes):
    """Pixels of the middle slices' CSF regions of at least 40 pixels (29 mm^2) that are
    enclosed by tissue: the lateral ventricles, not the CSF around the brain and in its sulci,
    which reaches the background."""
    area = 0
    for slice_classes in classes[12:24]:
        csf, background = slice_classes == 1, slice_classes == 0
        labels, count = ndimage.label(csf)
        sizes = ndimage.sum_labels(csf, labels, np.arange(1, count + 1))
        sizes[labels[ndimage.binary_dilation(background) & csf] - 1] = 0
        area += sizes[sizes >= 40].sum()
    return area


def outer_csf_fraction(classes):
    """Fraction of the brain's outer 10 mm (12 pixels) that is CSF: the widened sulci."""
    outer = np.stack([ndimage.distance_transform_edt(c > 0) for c in classes])
    outer = (outer > 0) & (outer <= 12)
    return np.count_nonzero(outer & (classes == 1)) / np.count_nonzero(outer)


@pytest.fixture(scope="module")
def one_person_ageing():
    """Subject 1 of seed 0 as a healthy 20- and 80-year-old and a demented 80-year-old."""
    template = demo_data.load_template()
    return {
        name: demo_data.synthesize_subject(
            template, 1, 0, demo_data.Demographics(age=age, sex="F", cdr=cdr, mmse=mmse)
        )
        for name, age, cdr, mmse in (
            ("young", 20, 0.0, 30),
            ("old", 80, 0.0, 29),
            ("demented", 80, 2.0, 15),
        )
    }


def test_ventricles_grow_with_age_and_dementia(one_person_ageing):
    area = {name: ventricle_area(s.classes) for name, s in one_person_ageing.items()}
    assert area["old"] > 1.5 * area["young"]
    assert area["demented"] > 1.08 * area["old"]


def test_cortex_thins_and_sulci_widen_with_age_and_dementia(one_person_ageing):
    grey_fraction = {
        name: np.count_nonzero(s.classes == 2) / np.count_nonzero(s.classes)
        for name, s in one_person_ageing.items()
    }
    assert grey_fraction["young"] - grey_fraction["old"] > 0.03
    assert grey_fraction["old"] - grey_fraction["demented"] > 0.03
    outer_csf = {name: outer_csf_fraction(s.classes) for name, s in one_person_ageing.items()}
    assert outer_csf["old"] > 1.5 * outer_csf["young"]
    assert outer_csf["demented"] > 1.2 * outer_csf["old"]


def test_an_ageing_brain_keeps_its_head_and_its_images_follow_its_masks(one_person_ageing):
    """Atrophy turns tissue into CSF inside the same intracranial space, in image and mask."""
    young, demented = one_person_ageing["young"], one_person_ageing["demented"]
    young_brain, demented_brain = (np.count_nonzero(s.classes) for s in (young, demented))
    assert abs(demented_brain - young_brain) < 0.01 * young_brain
    became_csf = (young.classes == 2) & (demented.classes == 1)
    assert np.count_nonzero(became_csf) > 0.05 * young_brain
    # The same scanner draws for both: the young brain's CSF and grey matter set the levels.
    csf_mean, grey_mean = (young.images[young.classes == c].mean() for c in (1, 2))
    assert abs(demented.images[became_csf].mean() - csf_mean) < 0.3 * (grey_mean - csf_mean)
