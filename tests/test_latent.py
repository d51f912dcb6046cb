"""`python latent.py` on a tiny trained run: embeddings, projections, groupings (split, slice,
subject, dataset, demographics), confidence ellipses, separation scores and the figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fixtures import OASIS1_COLUMNS, write_csv, write_oasis1_session
from PIL import Image

import latent
import modules
from brain_vqvae import latent_space
from brain_vqvae.data.slices import capped_indices
from brain_vqvae.metrics import code_histograms
from brain_vqvae.runs import load_run
from dataset import load_slices


def run_latent(*argv) -> int:
    return latent.main([str(argument) for argument in argv])


def png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_code_histograms_are_the_share_of_each_code():
    code_maps = np.array([[[0, 0], [1, 3]], [[2, 2], [2, 2]]])
    histograms = code_histograms(code_maps, num_embeddings=4)
    np.testing.assert_allclose(histograms, [[0.5, 0.25, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0]])


def test_embeddings_have_one_row_per_slice(tiny_run, tiny_png_tree, tiny_hyperparameters):
    vqvae = load_run(tiny_run[0], prior="skip").vqvae
    images = load_slices(tiny_png_tree, image_size=32).splits["train"].images
    embeddings = latent_space.embed_slices(vqvae, images, tiny_hyperparameters.num_embeddings)

    unit_images = images[..., None] / np.float32(255.0)
    assert embeddings.code_histogram.shape == (24, tiny_hyperparameters.num_embeddings)
    assert embeddings.latent_map.shape == (24, 4 * 4 * tiny_hyperparameters.latent_dim)
    np.testing.assert_allclose(embeddings.code_histogram.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        embeddings.code_maps, modules.encode_code_maps(vqvae, unit_images)
    )
    # The tiny map is 8x8: block (u, v) of the 4x4 grid averages positions 2u..2u+1, 2v..2v+1.
    latents = np.asarray(vqvae.encode(unit_images))
    block_1_2 = latents[:, 2:4, 4:6].mean(axis=(1, 2))
    grid = embeddings.latent_map.reshape(24, 4, 4, tiny_hyperparameters.latent_dim)
    np.testing.assert_allclose(grid[:, 1, 2], block_1_2, rtol=1e-5, atol=1e-6)


def test_the_latent_map_keeps_where_things_are():
    """Two slices whose vectors have the same mean over all positions but sit in different
    places get different latent maps."""
    latents = np.zeros((2, 8, 8, 1), np.float32)
    latents[0, :4, :4] = 1.0  # top-left quarter
    latents[1, 4:, 4:] = 1.0  # bottom-right quarter
    maps = latent_space.pooled_latent_map(latents).reshape(2, 4, 4)
    assert latents[0].mean() == latents[1].mean()
    np.testing.assert_array_equal(maps[0, :2, :2], 1.0)
    np.testing.assert_array_equal(maps[0, 2:, 2:], 0.0)
    np.testing.assert_array_equal(maps[1], maps[0][::-1, ::-1])


def test_confidence_ellipse_axes_of_a_known_covariance():
    ellipse = latent_space.confidence_ellipse(np.array([1.0, 2.0]), np.diag([4.0, 1.0]))
    assert ellipse.center == (1.0, 2.0)
    assert ellipse.width == pytest.approx(2 * math.sqrt(5.991 * 4))
    assert ellipse.height == pytest.approx(2 * math.sqrt(5.991))
    assert ellipse.angle % 180 == pytest.approx(0.0, abs=1e-9)

    turn = math.radians(30)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    ellipse = latent_space.confidence_ellipse(
        np.zeros(2), rotation @ np.diag([9.0, 1.0]) @ rotation.T
    )
    assert ellipse.width == pytest.approx(2 * math.sqrt(5.991 * 9))
    assert ellipse.height == pytest.approx(2 * math.sqrt(5.991))
    assert ellipse.angle % 180 == pytest.approx(30.0)


def test_confidence_ellipse_holds_95_percent_of_gaussian_points():
    covariance = np.array([[3.0, 1.2], [1.2, 1.0]])
    points = np.random.default_rng(0).multivariate_normal([5.0, -1.0], covariance, 40_000)
    ellipse = latent_space.confidence_ellipse(points.mean(axis=0), np.cov(points.T))
    turn = math.radians(ellipse.angle)
    offsets = points - np.asarray(ellipse.center)
    along = offsets @ [math.cos(turn), math.sin(turn)]
    across = offsets @ [-math.sin(turn), math.cos(turn)]
    inside = (along / (ellipse.width / 2)) ** 2 + (across / (ellipse.height / 2)) ** 2 <= 1
    assert inside.mean() == pytest.approx(0.95, abs=0.005)


def test_projections_are_two_dimensional_for_few_slices():
    features = np.random.default_rng(0).random((7, 5))
    for method in ("pca", "tsne"):
        assert latent_space.project(features, method, seed=0).points.shape == (7, 2)
    assert "of variance" in latent_space.project(features, "pca", seed=0).axis_labels[0]
    identical = latent_space.project(np.ones((7, 5)), "tsne", seed=0)
    np.testing.assert_array_equal(identical.points, np.zeros((7, 2)))
    with pytest.raises(ValueError, match="at least 3"):
        latent_space.project(features[:2], "pca", seed=0)
    with pytest.raises(ValueError, match="umap"):
        latent_space.project(features, "umap", seed=0)


def test_slice_position_and_subject_groupings():
    indices = np.concatenate([np.arange(32), np.arange(6), [0, 0]])
    datasets = np.array(["oasis"] * 32 + ["png"] * 6 + ["npz"] * 2)
    positions = latent_space.slice_position_grouping(indices, datasets)
    thirds = ["inferior third", "middle third", "superior third"]
    assert positions.groups == tuple(thirds)
    assert [positions.labels[index] for index in (10, 11, 21, 22, 31)] == [
        thirds[0],
        thirds[1],
        thirds[1],
        thirds[2],
        thirds[2],
    ]
    assert list(positions.labels[32:]) == [*np.repeat(thirds, 2), "unknown", "unknown"]
    assert latent_space.slice_position_grouping(np.array([0, 1, 0]), np.array(["a"] * 3)) is None

    subjects = np.array(["b", "b", "b", "a", "a", "c", "d", "d"])
    grouping = latent_space.subject_grouping(subjects, top=2)
    assert grouping.groups == ("a", "b")
    assert list(grouping.labels) == ["b", "b", "b", "a", "a", "other", "other", "other"]


def test_demographic_groupings_from_demographics_dicts():
    demographics = {
        "OAS1_0001_MR1": {"age": 23.0, "sex": "F", "cdr": None, "mmse": None},
        "OAS1_0002_MR1": {"age": 74.0, "sex": "M", "cdr": 0.5, "mmse": 27.0},
        "OAS1_0003_MR1": {"age": 81.0, "sex": "F", "cdr": 1.0, "mmse": 20.0},
    }
    subjects = np.array(["OAS1_0001_MR1", "OAS1_0002_MR1", "OAS1_0003_MR1", "OAS1_0009_MR1"])
    columns = latent_space.demographic_columns(subjects, demographics)
    cdr = latent_space.cdr_grouping(columns["cdr"])
    assert cdr.groups == ("CDR 0.5", "CDR 1")
    assert list(cdr.labels) == ["unknown", "CDR 0.5", "CDR 1", "unknown"]
    ages = latent_space.age_grouping(columns["age"])
    assert list(ages.labels) == ["age < 40", "age 60-74", "75+", "unknown"]
    sexes = latent_space.categorical_grouping("sex", "sex", columns["sex"])
    assert sexes.groups == ("F", "M")
    assert list(sexes.labels) == ["F", "M", "F", "unknown"]


def test_distinctive_codes_find_the_codes_that_differ_between_groups():
    rng = np.random.default_rng(0)
    histograms = rng.dirichlet(np.ones(6), size=40) * 0.2
    histograms[:20, 4] += 0.8  # group "a" leans on code 4
    histograms[20:, 1] += 0.8  # group "b" on code 1
    labels = np.array(["a"] * 20 + ["b"] * 20)
    grouping = latent_space.Grouping("test", "test", labels, ("a", "b"))
    codes = latent_space.distinctive_codes(histograms, grouping, count=2)
    assert {entry["code"] for entry in codes} == {1, 4}
    assert codes[0]["mean_share"]["a"] != pytest.approx(codes[0]["mean_share"]["b"], abs=0.5)
    separated = latent_space.silhouette(histograms, grouping)
    assert separated > 0.5
    mixed = latent_space.Grouping("mixed", "mixed", labels[rng.permutation(40)], ("a", "b"))
    assert latent_space.silhouette(histograms, mixed) < separated


def test_command_writes_figures_and_scores_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "latent"
    assert run_latent("--run", run, "--out", out) == 0
    report = json.loads((out / "latent.json").read_text())
    assert report["slices"] == 36 and report["methods"] == ["pca", "tsne"]
    assert sum(report["code_share"]) == pytest.approx(1.0)
    assert set(report["groupings"]) == {"split", "slice_position", "subject"}
    assert report["groupings"]["split"]["groups"] == {"test": 6, "train": 24, "validate": 6}
    assert report["groupings"]["subject"]["groups"] == {f"00{case}": 6 for case in range(1, 7)}
    for entry in report["groupings"].values():
        for scores in entry["silhouette"].values():
            assert set(scores) == {"full", "pca", "tsne"}
            assert all(score is None or -1 <= score <= 1 for score in scores.values())
    for name in ("split", "slice_position", "subject"):
        assert png_size(out / f"latent_{name}.png") == (1320, 920)
    assert png_size(out / "codebook.png") == (1190, 590)

    assert run_latent("--run", run, "--out", out, "--method", "pca") == 2
    assert "already holds files" in capsys.readouterr().err


def test_several_datasets_are_labelled_by_dataset(tiny_run, tiny_png_tree, tmp_path):
    run, _ = tiny_run
    rng = np.random.default_rng(0)
    npz = tmp_path / "organmnist.npz"
    np.savez(
        npz,
        **{
            f"{key}_images": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
            for key, count in (("train", 8), ("val", 3), ("test", 3))
        },
        **{
            f"{key}_labels": np.arange(count)[:, None] % 2
            for key, count in (("train", 8), ("val", 3), ("test", 3))
        },
    )
    out = tmp_path / "latent"
    arguments = ("--data", tiny_png_tree, "--data", npz, "--method", "pca", "--out", out)
    assert run_latent("--run", run, *arguments) == 0
    groupings = json.loads((out / "latent.json").read_text())["groupings"]
    assert groupings["dataset"]["groups"] == {"keras_png_slices_data": 36, "organmnist.npz": 14}
    assert groupings["class_label"]["groups"] == {"0": 8, "1": 6, "unknown": 36}
    assert "keras_png_slices_data:001" in groupings["subject"]["groups"]
    assert png_size(out / "latent_dataset.png") == (800, 920)


def test_demographics_from_an_oasis_table_colour_the_latent_space(tiny_run, tmp_path):
    run, _ = tiny_run
    disc = tmp_path / "disc1"
    rows = [
        {"ID": "OAS1_0001_MR1", "M/F": "F", "Hand": "R", "Age": "23", "Delay": "N/A"},
        {"ID": "OAS1_0002_MR1", "M/F": "M", "Hand": "R", "Age": "74", "CDR": "0.5", "MMSE": "27"},
        {"ID": "OAS1_0003_MR1", "M/F": "F", "Hand": "R", "Age": "81", "CDR": "1", "MMSE": "20"},
    ]
    for seed, row in enumerate(rows):
        write_oasis1_session(disc, row["ID"], shape=(32, 36, 30), seed=seed)
    table = write_csv(tmp_path / "oasis_cross-sectional.csv", OASIS1_COLUMNS, rows)
    out = tmp_path / "latent"
    arguments = ("--data", disc, "--csv", table, "--max-slices", 60, "--out", out)
    assert run_latent("--run", run, *arguments, "--method", "pca") == 0

    report = json.loads((out / "latent.json").read_text())
    assert report["slices"] == 60
    groupings = report["groupings"]
    assert set(groupings["cdr"]["groups"]) == {"CDR 0.5", "CDR 1", "unknown"}
    assert set(groupings["sex"]["groups"]) == {"F", "M"}
    assert set(groupings["age_band"]["groups"]) == {"age < 40", "age 60-74", "75+"}
    assert sum(groupings["age_band"]["groups"].values()) == 60
    assert groupings["cdr"]["silhouette"]["latent_map"]["full"] is not None
    for name in ("cdr", "sex", "age_band"):
        assert (out / f"latent_{name}.png").is_file()


def test_capped_indices_are_a_fixed_sorted_sample():
    first = capped_indices(100, 10, seed=4)
    assert len(first) == len(set(first)) == 10
    assert list(first) == sorted(first)
    np.testing.assert_array_equal(first, capped_indices(100, 10, seed=4))
    np.testing.assert_array_equal(capped_indices(5, 10, seed=4), np.arange(5))


def test_codebook_figure_of_a_large_codebook_shows_only_the_most_used_codes(
    tiny_hyperparameters,
):
    settings = tiny_hyperparameters.replace(num_embeddings=100)
    vqvae = modules.build_vqvae(settings, data_variance=0.05)
    share = np.zeros(100)
    share[[7, 42, 99]] = [0.2, 0.5, 0.3]
    examples = np.zeros((2, 32, 32), dtype=np.uint8)
    code_maps = np.zeros((2, 8, 8), dtype=np.int32)
    figure = latent_space.plot_codebook(vqvae, 100, share, examples, code_maps, ["a", "b"], "big")
    top = figure.subfigs[0]
    titled = [axis.get_title() for axis in top.axes if axis.get_title()]
    assert len(titled) == latent_space.CODEBOOK_CODES_SHOWN
    assert titled[:3] == ["code 42\n50.0%", "code 99\n30.0%", "code 7\n20.0%"]
    assert "64 most used of 100" in top.get_suptitle()
