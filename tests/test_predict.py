"""`python predict.py` on a tiny trained run: samples, reconstructions, the user's own files,
and the refusals (bad run folders, bad inputs, an output folder that already holds files)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel
import numpy as np
import pytest
from conftest import brain_like_slice
from fixtures import synthetic_head, write_nifti, write_oriented
from PIL import Image

import predict
from brain_vqvae import generation
from brain_vqvae.evaluation import score_model
from brain_vqvae.model import build_pixelcnn
from brain_vqvae.runs import load_run
from dataset import load_slices


def run_predict(*argv) -> int:
    return predict.main([str(argument) for argument in argv])


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run that a test may write into or break."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run[0], copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def figure_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_samples_are_8_bit_pngs_a_grid_and_an_axial_nifti_stack(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "samples"
    assert run_predict("--run", run, "--num", 5, "--seed", 3, "--out", out) == 0

    pngs = sorted(out.glob("sample_*.png"))
    assert [path.name for path in pngs] == [f"sample_{index:03d}.png" for index in range(5)]
    pixels = []
    for path in pngs:
        with Image.open(path) as image:
            assert (image.mode, image.size) == ("L", (32, 32))
            pixels.append(np.asarray(image))
    width, height = figure_size(out / "samples.png")
    assert width > height  # five tiles: a grid of 3 columns and 2 rows

    volume = nibabel.load(out / "samples.nii.gz")
    assert volume.shape == (32, 32, 5)
    assert volume.get_data_dtype() == np.uint8
    assert volume.header.get_zooms() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(np.diag(volume.affine)[:3], [1.0, 1.0, 1.0])
    data = np.asarray(volume.dataobj)
    for index, image in enumerate(pixels):  # voxel (x, y, n) = slice n at row S-1-y, column x
        np.testing.assert_array_equal(np.flip(data[:, :, index], axis=1).T, image)


def test_the_seed_fixes_the_samples(tiny_run):
    run = load_run(tiny_run[0])
    codes, slices = generation.sample_slices(run, 4, temperature=0.8, seed=7)
    again_codes, again_slices = generation.sample_slices(run, 4, temperature=0.8, seed=7)
    other_codes, _ = generation.sample_slices(run, 4, temperature=0.8, seed=8)
    size = run.hyperparameters.code_map_size
    assert codes.shape == (4, size, size)
    assert slices.shape == (4, 32, 32) and slices.dtype == np.uint8
    np.testing.assert_array_equal(codes, again_codes)
    np.testing.assert_array_equal(slices, again_slices)
    assert not np.array_equal(codes, other_codes)
    with pytest.raises(ValueError, match="temperature"):
        generation.sample_slices(run, 2, temperature=0.0)


def test_a_run_draws_from_its_own_nucleus_unless_told_otherwise(tiny_run):
    """A run whose sampling_top_p keeps only the most likely code draws the same slice at a
    level whatever the seed, as if --top-p said so; --top-p 1 draws from every code again."""
    run = load_run(tiny_run[0])
    greedy = dataclasses.replace(
        run, hyperparameters=run.hyperparameters.replace(sampling_top_p=1e-6)
    )
    level = {"slice_position": 0.5}
    codes = [generation.sample_slices(greedy, 3, seed=s, conditions=level)[0] for s in (1, 2)]
    np.testing.assert_array_equal(codes[0], codes[1])
    told = generation.sample_slices(run, 3, seed=3, top_p=1e-6, conditions=level)[0]
    np.testing.assert_array_equal(codes[0], told)
    every = [
        generation.sample_slices(greedy, 3, seed=s, top_p=1.0, conditions=level)[0] for s in (1, 2)
    ]
    assert not np.array_equal(every[0], every[1])


def test_nifti_stack_puts_each_slice_upright_in_an_axial_plane():
    slices = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    volume = generation.slices_to_nifti(slices)
    data = np.asarray(volume.dataobj)
    assert data.shape == (3, 3, 2)
    assert data[0, 2, 1] == slices[1, 0, 0]  # top-left pixel: x = 0, y = top
    assert data[2, 0, 0] == slices[0, 2, 2]  # bottom-right pixel: x = right, y = 0
    assert nibabel.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_allclose(volume.affine[:3, 3], [-1.0, -1.0, -0.5])


def test_default_output_is_in_the_run_and_not_overwritten_without_the_flag(run_copy, capsys):
    assert run_predict("--run", run_copy, "--num", 4) == 0
    out = run_copy / "samples"
    assert len(list(out.glob("sample_*.png"))) == 4
    before = (out / "samples.nii.gz").stat().st_mtime_ns

    assert run_predict("--run", run_copy, "--num", 4) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "already holds files" in error and "--overwrite" in error
    assert (out / "samples.nii.gz").stat().st_mtime_ns == before

    assert run_predict("--run", run_copy, "--num", 2, "--overwrite") == 0
    assert sorted(path.name for path in out.glob("sample_*.png")) == [
        "sample_000.png",
        "sample_001.png",
    ]
    assert nibabel.load(out / "samples.nii.gz").shape == (32, 32, 2)


def test_reconstruct_draws_slices_of_the_training_data_by_default(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "reconstructions"
    assert run_predict("--run", run, "--reconstruct", "--num", 3, "--out", out) == 0
    assert sorted(path.name for path in out.iterdir()) == ["reconstructions.png"]
    one = tmp_path / "one"
    assert run_predict("--run", run, "--reconstruct", "--num", 1, "--out", one) == 0
    # One row of four panels per slice: three slices make a taller figure of the same width.
    (width, height), (one_width, one_height) = (
        figure_size(folder / "reconstructions.png") for folder in (out, one)
    )
    assert width == one_width and height > 2 * one_height


def test_reconstructed_slices_are_spread_labelled_and_scored_like_similarity(
    tiny_run, tiny_png_tree
):
    slices = load_slices(tiny_png_tree, image_size=32)
    images, labels = generation.split_slices(slices, "test", 3)
    assert images.shape == (3, 32, 32, 1) and images.dtype == np.float32
    assert labels == ["subject 006, slice 0", "subject 006, slice 2", "subject 006, slice 5"]
    np.testing.assert_array_equal(images, slices.splits["test"].float_images()[[0, 2, 5]])

    run = load_run(tiny_run[0], prior="skip")
    result = generation.reconstruct(run, images, labels)
    assert result.code_maps.shape == (3, 8, 8)
    assert 0.0 <= result.reconstructions.min() <= result.reconstructions.max() <= 1.0
    np.testing.assert_allclose(result.ssim, score_model(run.vqvae, images).ssim, atol=1e-5)
    np.testing.assert_array_equal(generation.spread_indices(4, 10), [0, 1, 2, 3])


def test_input_reads_a_png_slice_and_a_nifti_volume(tiny_run, tmp_path):
    run, _ = tiny_run
    png = tmp_path / "my slice.png"
    Image.fromarray(brain_like_slice(np.random.default_rng(1), size=100), mode="L").save(png)
    volume = write_nifti(tmp_path / "head.nii.gz", synthetic_head((30, 36, 28)))

    images, labels = generation.input_slices(png, 32, num=4)
    assert images.shape == (1, 32, 32, 1) and labels == ["my slice.png"]
    images, labels = generation.input_slices(volume, 32, num=4)
    assert images.shape == (4, 32, 32, 1)
    assert images.min() >= 0.0 and images.max() == pytest.approx(1.0)
    assert labels[0] == "head.nii.gz: slice 1 of 4"
    assert not np.array_equal(images[0], images[-1])  # planes spread, not one plane repeated

    out = tmp_path / "png_out"
    assert run_predict("--run", run, "--input", png, "--out", out) == 0
    assert run_predict("--run", run, "--input", volume, "--num", 4, "--out", tmp_path / "nii") == 0
    # One row per slice: the volume's four slices make a figure about four times as tall.
    png_height = figure_size(out / "reconstructions.png")[1]
    assert figure_size(tmp_path / "nii" / "reconstructions.png")[1] > 3 * png_height


def test_input_takes_a_single_plane_nifti_as_one_slice(tmp_path):
    head = synthetic_head((30, 36, 28))
    plane = write_nifti(tmp_path / "plane.nii", head[:, :, 14:15])
    flat = tmp_path / "flat.nii.gz"
    nibabel.save(nibabel.Nifti1Image(head[:, :, 14].astype(np.float32), np.eye(4)), flat)
    first, labels = generation.input_slices(plane, 32, num=5)
    second, _ = generation.input_slices(flat, 32, num=5)
    assert first.shape == second.shape == (1, 32, 32, 1) and labels == ["plane.nii"]
    np.testing.assert_allclose(first, second, atol=1 / 255)


def test_bad_input_files_are_named(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert run_predict("--run", run, "--input", notes, "--out", tmp_path / "a") == 2
    assert "notes.txt: cannot read this type of file" in capsys.readouterr().err
    assert run_predict("--run", run, "--input", tmp_path / "gone.png", "--out", tmp_path / "b") == 2
    assert "gone.png: no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not gzip")
    assert run_predict("--run", run, "--input", broken, "--out", tmp_path / "c") == 2
    assert "broken.nii.gz: cannot read volume" in capsys.readouterr().err


def break_run(run, fault: str):
    if fault == "no folder":
        shutil.rmtree(run)
    elif fault == "no hyperparameters":
        (run / "hyperparameters.json").unlink()
    elif fault == "no vqvae":
        (run / "vqvae.keras").unlink()
    elif fault == "no pixelcnn":
        (run / "pixelcnn.keras").unlink()
    elif fault == "other image size":
        values = json.loads((run / "hyperparameters.json").read_text())
        (run / "hyperparameters.json").write_text(json.dumps({**values, "image_size": 64}))


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("no folder", "no such run folder"),
        ("no hyperparameters", "hyperparameters.json is missing"),
        ("no vqvae", "vqvae.keras"),
        ("no pixelcnn", "pixelcnn.keras"),
        ("other image size", "other values of image_size"),
    ],
)
def test_a_bad_run_folder_is_named_and_exits_2(run_copy, tmp_path, capsys, fault, message):
    break_run(run_copy, fault)
    out = tmp_path / "out"
    assert run_predict("--run", run_copy, "--out", out) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not out.exists()


def test_reconstruction_needs_no_prior(run_copy, tmp_path):
    (run_copy / "pixelcnn.keras").unlink()
    out = tmp_path / "out"
    assert run_predict("--run", run_copy, "--reconstruct", "--num", 1, "--out", out) == 0
    assert (out / "reconstructions.png").is_file()


def test_dataset_flags_only_go_with_reconstruct(tiny_run):
    with pytest.raises(SystemExit) as exit_info:
        run_predict("--run", tiny_run[0], "--split", "train")
    assert exit_info.value.code == 2


def test_top_k_of_one_draws_the_same_greedy_slices_whatever_the_seed(tiny_run, tmp_path, capsys):
    # The level is asked: one not asked is drawn from the seed (`with_drawn_levels`).
    outs = [tmp_path / "seed1", tmp_path / "seed2"]
    for seed, out in zip((1, 2), outs, strict=True):
        argv = ("--run", tiny_run[0], "--num", 3, "--top-k", 1, "--seed", seed, "--out", out)
        argv += ("--slice-position", 0.5)
        assert run_predict(*argv) == 0
    first, second = (nibabel.load(out / "samples.nii.gz").get_fdata() for out in outs)
    np.testing.assert_array_equal(first, second)
    assert run_predict("--run", tiny_run[0], "--top-p", 1.5, "--out", tmp_path / "bad") == 2
    assert "top_p" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["head_lps.nii.gz", "head_pil.nii", "head_lia.mgz"])
def test_a_marker_on_the_subjects_left_stays_on_the_left_from_volume_to_nifti(tmp_path, name):
    """Volume (any voxel order) -> upright slices -> the NIfTI stack predict.py writes: the
    marker the head carries in its anterior-left quarter is still left (x < 0) and anterior
    (y > 0) in the written volume's world coordinates."""
    axcodes = name.split("_")[1].split(".")[0].upper()
    volume = write_oriented(tmp_path / name, synthetic_head((40, 48, 36)), axcodes)
    images, _ = generation.input_slices(volume, 32, num=5)
    written = generation.slices_to_nifti(generation.to_uint8(images))
    data = np.asarray(written.dataobj)
    marker = np.argwhere(data >= data.max() - 5)
    world = nibabel.affines.apply_affine(written.affine, marker)
    assert (world[:, 0] < 0).all() and (world[:, 1] > 0).all()


def test_a_volume_is_32_slices_bottom_to_top_with_its_spacing_in_a_ras_nifti(tiny_run, tmp_path):
    """The tiny run's prior is conditioned on the slice level and the slice below (its data has
    levels, no demographics table), so it draws volumes; the NIfTI holds the drawn slices in
    order, at the spacing asked for, and the montage is written beside it."""
    run, _ = tiny_run
    out = tmp_path / "volumes"
    argv = ["--run", run, "--volume", "--num", 2, "--seed", 4, "--spacing", 1.5, 4.0]
    assert run_predict(*argv, "--out", out) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "volume_000.nii.gz",
        "volume_000.png",
        "volume_001.nii.gz",
        "volume_001.png",
    ]
    image = nibabel.load(out / "volume_000.nii.gz")
    assert image.shape == (32, 32, generation.VOLUME_DEPTH)
    assert image.header.get_zooms() == (1.5, 1.5, 4.0)
    assert nibabel.aff2axcodes(image.affine) == ("R", "A", "S")
    _, volumes = generation.sample_volumes(load_run(run), 2, seed=4)
    data = np.asarray(image.dataobj)
    for level in (0, 13, 31):  # voxel (x, y, n) = slice n at row S-1-y, column x
        np.testing.assert_array_equal(np.flip(data[:, :, level], axis=1).T, volumes[0, level])
    assert figure_size(out / "volume_000.png")[1] > 300


def test_each_slice_of_a_volume_is_drawn_on_the_slice_below_blurred_as_in_training(
    tiny_run, monkeypatch
):
    """Slice d is asked for at level d / (depth - 1) on the code map drawn below it, of which
    about `previous_slice_noise` of the codes are replaced by random ones (each itself again
    1 time in K), as the prior saw it in training."""
    run = load_run(tiny_run[0])
    asked = []
    draw = generation.sample_code_maps

    def recording(pixelcnn, count, **options):
        asked.append(options["conditions"])
        return draw(pixelcnn, count, **options)

    monkeypatch.setattr(generation, "sample_code_maps", recording)
    code_maps, _ = generation.sample_volumes(run, 16, depth=5, seed=3)
    assert [conditions["slice_position"] for conditions in asked] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "previous_slice" not in asked[0]
    changed = np.mean([asked[d]["previous_slice"] != code_maps[:, d - 1] for d in range(1, 5)])
    codes = run.hyperparameters.num_embeddings
    noise = run.hyperparameters.previous_slice_noise
    assert noise > 0
    assert changed == pytest.approx(noise * (codes - 1) / codes, abs=0.04)


def test_slices_drawn_at_a_level_follow_the_run_and_refuse_what_it_cannot_give(
    tiny_run, tmp_path, capsys
):
    run, _ = tiny_run
    out = tmp_path / "low"
    assert run_predict("--run", run, "--slice-position", 0.0, "--num", 3, "--out", out) == 0
    assert len(list(out.glob("sample_*.png"))) == 3
    low = generation.sample_slices(load_run(run), 8, seed=1, conditions={"slice_position": 0.0})
    high = generation.sample_slices(load_run(run), 8, seed=1, conditions={"slice_position": 1.0})
    assert not np.array_equal(low[0], high[0])
    plain = generation.sample_slices(
        load_run(run), 8, seed=1, conditions={"slice_position": 0.0}, guidance=1.0
    )
    assert not np.array_equal(low[0], plain[0])  # the default guidance changes the draw
    capsys.readouterr()
    for flags, message in (
        (("--age", 80), "not trained with condition(s) age"),
        (("--slice-position", 1.5), "slice_position 1.5 is outside what the run was trained on"),
        (("--slice-position", 0.5, "--guidance", -1), "guidance must be a finite number >= 0"),
        (("--coarse-top-p", 0.9), "the nucleus of a two-level prior's coarse level"),
    ):
        assert run_predict("--run", run, *flags, "--out", tmp_path / "refused") == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_predict("--run", run, "--volume", "--slice-position", 0.5)
    with pytest.raises(SystemExit):
        run_predict("--run", run, "--reconstruct", "--age", 50)


def test_a_volume_needs_a_prior_trained_with_the_slice_level(run_copy, tmp_path):
    run = load_run(run_copy)
    hyperparameters = run.hyperparameters.replace(prior_conditions="none")
    unconditional = build_pixelcnn(hyperparameters)
    unconditional.save(run_copy / "pixelcnn.keras")
    (run_copy / "hyperparameters.json").write_text(json.dumps(hyperparameters.to_dict()))
    with pytest.raises(ValueError, match="needs a prior trained with slice_position"):
        generation.sample_volumes(load_run(run_copy), 1)


def test_guidance_takes_one_weight_and_weights_of_its_own(tiny_run, tmp_path, capsys):
    """`--guidance W NAME=W ...`: one weight for all, a dict when a condition has its own; a
    run asked with a weight for its level draws as the library does with that weight."""
    parser = predict.build_parser()

    def parsed(*terms):
        return parser.parse_args(["--run", "r", "--guidance", *terms]).guidance

    assert parser.parse_args(["--run", "r"]).guidance == generation.DEFAULT_GUIDANCE
    assert parsed("3") == 3.0 and parsed("2", "age=2") == 2.0
    assert parsed("2", "age=3") == {"slice_position": 2.0, "age": 3.0, "sex": 2.0, "cdr": 2.0}
    assert parsed("slice-position=1.5") == {**generation.DEFAULT_GUIDANCE, "slice_position": 1.5}
    assert parsed("age=4") == {"slice_position": 2.0, "age": 4.0, "sex": 2.0, "cdr": 1.0}
    assert generation.describe_guidance(generation.DEFAULT_GUIDANCE) == "2, age 3, cdr 1"
    assert generation.describe_guidance(parsed("2", "age=3")) == "2, age 3"
    assert generation.describe_guidance({"age": 3.0}) == "1, age 3"
    for terms, message in (
        (("2", "brain=3"), "'brain' is not a condition: slice_position, age, sex, cdr"),
        (("two",), "'two' is neither a weight W nor NAME=W"),
        (("2", "3"), "two weights for every condition: 2 and 3"),
    ):
        with pytest.raises(SystemExit):
            parsed(*terms)
        assert message in capsys.readouterr().err
    run, _ = tiny_run
    out = tmp_path / "guided"
    flags = ("--slice-position", 0.2, "--num", 3, "--out", out)
    assert run_predict("--run", run, *flags, "--guidance", 1, "slice_position=3") == 0
    _, expected = generation.sample_slices(
        load_run(run), 3, seed=0, conditions={"slice_position": 0.2}, guidance=3.0
    )
    for index, image in enumerate(expected):
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / f"sample_{index:03d}.png")), image
        )
