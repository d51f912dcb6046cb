"""The feature network's proxy tasks, and networks saved while they had an age head (before
`age_reader`) still load."""

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


def slices_with_a_front(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` 32x32 slices (N, 32, 32, 1) in [0, 1]: an ellipse as bright as the slice's
    level (N,) in [0, 1], noise inside it, and a bright bar at the top, so that which way is up
    can be told (a brain has a front and a back; a centred ellipse alone has not)."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:32, 0:32]
    inside = ((rows - 17) / 11.0) ** 2 + ((columns - 16) / 9.0) ** 2 < 1
    levels = rng.uniform(0, 1, count)
    images = np.zeros((count, 32, 32, 1), np.float32)
    for image, level in zip(images, levels, strict=True):
        image[inside, 0] = 0.3 + 0.5 * level + rng.normal(0, 0.03, inside.sum())
        image[3:8, 12:20, 0] = 1.0
    return np.clip(images, 0, 1), levels


def test_the_network_learns_its_proxy_tasks():
    """Six epochs on 64 slices with a front: the summed loss falls by more than 0.15 (from
    about 2.2, ln 4 + ln 2 + the level's variance at chance) and the rotation is told better
    than at the start."""
    images, levels = slices_with_a_front(64, seed=0)
    network = feature_network.train_feature_network(
        images, levels, epochs=6, batch_size=16, widths=(8, 16)
    )
    history = network.history.history
    assert history["loss"][-1] < history["loss"][0] - 0.15
    assert history["rotation_accuracy"][-1] > history["rotation_accuracy"][0]


def test_proxy_tasks_rotate_every_slice_and_break_a_piece_of_the_corrupted_ones():
    """Rotated back by its label (k x 90° anticlockwise), an uncorrupted slice is the slice
    itself, and a corrupted one differs from it only inside the ellipse's reach: centres in
    the middle half, radii up to s/6."""
    size = 32
    rng = np.random.default_rng(0)
    images = rng.uniform(0.2, 1.0, (64, size, size, 1)).astype(np.float32)
    network = feature_network.FeatureNetwork(size, widths=(4,))
    network.build(images.shape)
    inputs, rotation, corrupted = (np.asarray(x) for x in network.proxy_tasks(images))

    assert inputs.shape == images.shape and set(rotation.tolist()) == {0, 1, 2, 3}
    assert 16 < corrupted.sum() < 48
    unrotated = np.stack(
        [np.rot90(x, -k, axes=(0, 1)) for x, k in zip(inputs, rotation, strict=True)]
    )
    changed = np.any(unrotated != images, axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, corrupted > 0.5)
    reach = size // 4 - size // 6  # no piece reaches nearer the border than this
    border = np.ones((size, size), bool)
    border[reach:-reach, reach:-reach] = False
    assert not np.any((unrotated != images)[:, border])
    # drawn again, other tasks: the seed generator moves on
    again = np.asarray(network.proxy_tasks(images)[1])
    assert not np.array_equal(again, rotation)
