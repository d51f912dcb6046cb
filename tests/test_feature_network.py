"""The feature network's age head: it learns an age that the image shows, and old networks load."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from brain_vqvae import feature_network

SIZE = 32


def aged_discs(ages: np.ndarray, seed: int) -> np.ndarray:
    """(N, 32, 32, 1) in [0, 1]: a bright disc whose radius grows with age (5 pixels at 20 years
    to 13 at 90), at a random centre near the middle, over faint noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    images = []
    for age in ages:
        radius = 5.0 + 8.0 * (age - 20.0) / 70.0
        centre_row, centre_column = rng.uniform(13, 19, size=2)
        inside = (rows - centre_row) ** 2 + (columns - centre_column) ** 2 < radius**2
        images.append(0.8 * inside + rng.uniform(0, 0.1, (SIZE, SIZE)))
    return np.stack(images).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def aged_network():
    ages = np.random.default_rng(0).uniform(20, 90, 128)
    network = feature_network.train_feature_network(
        aged_discs(ages, seed=1), ages=ages, epochs=12, batch_size=16, widths=(8, 16)
    )
    return network, ages


def test_the_age_head_reads_an_age_the_image_shows(aged_network):
    network, training_ages = aged_network
    assert network.age_mean == pytest.approx(training_ages.mean())
    assert network.age_std == pytest.approx(training_ages.std())
    held_out_ages = np.random.default_rng(2).uniform(20, 90, 48)
    predicted = feature_network.predict_ages(network, aged_discs(held_out_ages, seed=3))
    assert predicted.shape == (48,) and predicted.dtype == np.float64
    assert np.corrcoef(held_out_ages, predicted)[0, 1] > 0.8
    # Trained without positions: the position head is not, and says so.
    assert feature_network.predict_positions(network, aged_discs(held_out_ages, seed=3)) is None


def test_the_age_head_is_saved_with_its_scale(aged_network, tmp_path):
    network, ages = aged_network
    images = aged_discs(ages[:8], seed=4)
    network.save(tmp_path / "aged.keras")
    reloaded = feature_network.load_feature_network(tmp_path / "aged.keras")
    np.testing.assert_allclose(
        feature_network.predict_ages(reloaded, images),
        feature_network.predict_ages(network, images),
        atol=1e-4,
    )


def test_unknown_ages_are_left_out_and_too_few_known_ages_are_refused():
    ages = np.array([30.0, np.nan, 50.0, 70.0, np.nan, 40.0, 60.0, 80.0])
    images = aged_discs(np.nan_to_num(ages, nan=50.0), seed=5)
    network = feature_network.train_feature_network(
        images, ages=ages, epochs=1, batch_size=4, widths=(4,)
    )
    known = ages[np.isfinite(ages)]
    assert network.age_mean == pytest.approx(known.mean())
    assert np.isfinite(network.history.history["age_loss"]).all()
    with pytest.raises(ValueError, match="ages has 3 values"):
        feature_network.train_feature_network(images, ages=np.arange(3.0), epochs=1)
    with pytest.raises(ValueError, match="at least 2 known"):
        feature_network.train_feature_network(
            images, ages=np.full(8, np.nan), epochs=1, batch_size=4
        )


def test_a_network_saved_before_the_age_head_still_loads(tmp_path):
    """A `.keras` file whose configuration lacks with_ages, age_mean and age_std (as every
    network saved before the age head) loads, with the same features and no age head."""
    images = aged_discs(np.linspace(20, 90, 8), seed=6)
    network = feature_network.train_feature_network(
        images, np.linspace(0, 1, 8), epochs=1, batch_size=4, widths=(4,)
    )
    network.save(tmp_path / "new.keras")
    with (
        zipfile.ZipFile(tmp_path / "new.keras") as new,
        zipfile.ZipFile(tmp_path / "old.keras", "w") as old,
    ):
        for item in new.infolist():
            content = new.read(item)
            if item.filename == "config.json":
                config = json.loads(content)
                for key in ("with_ages", "age_mean", "age_std"):
                    del config["config"][key]
                content = json.dumps(config).encode()
            old.writestr(item, content)
    reloaded = feature_network.load_feature_network(tmp_path / "old.keras")
    assert not reloaded.with_ages and reloaded.age_head is None
    assert feature_network.predict_ages(reloaded, images) is None
    np.testing.assert_allclose(
        feature_network.predict_positions(reloaded, images),
        feature_network.predict_positions(network, images),
        atol=1e-5,
    )
