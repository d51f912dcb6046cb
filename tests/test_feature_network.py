"""Feature networks saved while they had an age head (before `age_reader`) still load."""

from __future__ import annotations

import numpy as np
from fixtures import write_as_saved_before

from brain_vqvae import feature_network


def test_a_network_saved_with_the_age_head_configuration_still_loads(tmp_path):
    """A `.keras` file whose configuration names with_ages, age_mean and age_std (as networks
    saved with the former age head did) loads, with the same features and positions."""
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (8, 32, 32, 1)).astype(np.float32)
    network = feature_network.train_feature_network(
        images, np.linspace(0, 1, 8), epochs=1, batch_size=4, widths=(4,)
    )
    network.save(tmp_path / "new.keras")

    def with_age_head(config: dict) -> None:
        config["config"] |= {"with_ages": True, "age_mean": 50.0, "age_std": 20.0}

    write_as_saved_before(tmp_path / "new.keras", tmp_path / "old.keras", with_age_head)
    reloaded = feature_network.load_feature_network(tmp_path / "old.keras")
    np.testing.assert_allclose(
        feature_network.image_features(reloaded, images),
        feature_network.image_features(network, images),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        feature_network.predict_positions(reloaded, images),
        feature_network.predict_positions(network, images),
        atol=1e-5,
    )
