"""The two-level prior (`pixelcnn_coarse_codes`): the coarse map, causality given it, the
loss of both levels, what sampling draws, saved models and the settings it refuses."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from brain_vqvae.model import build_pixelcnn, sample_code_maps, sampler
from brain_vqvae.model.coarse import CoarseMap
from brain_vqvae.model.conditions import condition_batch
from brain_vqvae.model.prior import pack_prior_inputs
from hyperparameters import Hyperparameters, coarse_prior_hyperparameters

CODES, MAP_SIZE, COARSE_CODES, LATENT = 8, 8, 3, 4
TWO_LEVEL = Hyperparameters(
    image_size=32,
    downsample_stages=2,
    encoder_filters=(8, 8),
    num_embeddings=CODES,
    latent_dim=LATENT,
    pixelcnn_filters=16,
    pixelcnn_gated_layers=3,
    pixelcnn_coarse_codes=COARSE_CODES,
    prior_conditions="none",
    batch_size=8,
)
# Code vectors: codes 0-3 near the origin, 4-7 far out along the first axis.
CODE_VECTORS = np.zeros((CODES, LATENT), "float32")
CODE_VECTORS[4:, 0] = 10.0
CODE_VECTORS[:, 1] = np.arange(CODES) * 0.01


def layouts(count: int) -> np.ndarray:
    """Maps [count, 8, 8] of two layouts, alternating: far codes (5) in the top half and near
    ones (1) below, or the other way round; every block of 4x4 codes is all near or all far."""
    maps = np.ones((count, MAP_SIZE, MAP_SIZE), "int32")
    maps[0::2, :4] = 5
    maps[1::2, 4:] = 5
    return maps


def two_level_prior(**changes):
    keras.utils.set_random_seed(0)
    settings = TWO_LEVEL.replace(**changes)
    ranges = {"slice_position": [0.0, 1.0]} if settings.prior_conditions != "none" else None
    return build_pixelcnn(settings, ranges, layouts(16), CODE_VECTORS)


def test_coarse_codes_are_the_nearest_centroid_of_each_blocks_mean_code_vector():
    coarse = CoarseMap(CODES, LATENT, 2, factor=2)
    coarse.build()
    coarse.code_vectors.assign(CODE_VECTORS)
    coarse.centroids.assign(np.array([[0.0, 0.0, 0, 0], [6.0, 0.0, 0, 0]], "float32"))
    code_map = np.zeros((1, 4, 4), "int32")
    code_map[0, :2, :2] = [[4, 4], [4, 0]]  # block mean 7.5 along the first axis: centroid 1
    code_map[0, :2, 2:] = [[4, 0], [0, 0]]  # block mean 2.5: nearer 0 than 6, centroid 0
    code_map[0, 2:, :2] = 7  # 10: centroid 1
    assert keras.ops.convert_to_numpy(coarse(code_map)).tolist() == [[[1, 0], [1, 0]]]


def test_fitted_coarse_map_gives_each_layout_its_own_codes():
    prior = two_level_prior()
    coarse = keras.ops.convert_to_numpy(prior.coarse_map(layouts(4)))
    assert coarse.shape == (4, 2, 2)
    near, far = coarse[0, 1, 0], coarse[0, 0, 0]
    assert near != far
    np.testing.assert_array_equal(coarse[0], [[far, far], [near, near]])
    np.testing.assert_array_equal(coarse[1], [[near, near], [far, far]])
    np.testing.assert_array_equal(prior.coarse_map.code_vectors.numpy(), CODE_VECTORS)


def test_coarse_map_refuses_code_vectors_of_the_wrong_shape():
    coarse = CoarseMap(CODES, LATENT, 2)
    coarse.build()
    with pytest.raises(ValueError, match=r"code_vectors must be \[8, 4\]"):
        coarse.fit(layouts(2), np.zeros((CODES, LATENT + 1)))


def test_fine_logits_see_only_earlier_codes_and_the_whole_coarse_map():
    prior = two_level_prior()
    rng = np.random.default_rng(3)
    base = rng.integers(0, CODES, (MAP_SIZE, MAP_SIZE)).astype("int32")
    coarse = rng.integers(0, COARSE_CODES, (1, 2, 2)).astype("int32")
    positions = MAP_SIZE * MAP_SIZE
    perturbed = np.repeat(base[None], positions, axis=0)
    rows, columns = np.divmod(np.arange(positions), MAP_SIZE)
    perturbed[np.arange(positions), rows, columns] = (base[rows, columns] + 1) % CODES
    maps = np.concatenate([base[None], perturbed])

    def logits(code_maps, coarse_maps):
        unknown = np.zeros((len(code_maps), 0), "float32")
        inputs = {"codes": code_maps, "values": unknown, "known": unknown}
        inputs["coarse"] = np.repeat(coarse_maps, len(code_maps), axis=0)
        return np.asarray(prior(inputs)).reshape(len(code_maps), positions, CODES)

    given = logits(maps, coarse)
    change = np.abs(given[1:] - given[:1]).max(axis=-1)  # [changed position, position]
    assert change[np.triu(np.ones((positions, positions), bool)).T].max() < 1e-5
    other_coarse = (coarse + 1) % COARSE_CODES
    moved = np.abs(logits(base[None], other_coarse) - given[:1]).max(axis=-1)
    assert moved.min() > 1e-4  # every position, the first included, reads the coarse map


def test_loss_is_fine_plus_coarse_cross_entropy_per_fine_code():
    prior = two_level_prior()
    prior.compile(optimizer=keras.optimizers.Adam(1e-3))
    maps = np.random.default_rng(5).integers(0, CODES, (6, MAP_SIZE, MAP_SIZE)).astype("int32")
    coarse = keras.ops.convert_to_numpy(prior.coarse_map(maps))

    def mean_cross_entropy(logits, codes):
        logits = np.asarray(logits, np.float64)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return -np.take_along_axis(log_softmax, codes[..., None], axis=-1).mean()

    fine = mean_cross_entropy(prior(maps), maps)
    coarse_loss = mean_cross_entropy(prior.coarse_prior(coarse), coarse)
    report = prior.evaluate(maps, batch_size=6, verbose=0, return_dict=True)
    assert set(report) == {"loss", "accuracy", "coarse_loss", "coarse_accuracy"}
    np.testing.assert_allclose(report["coarse_loss"], coarse_loss, rtol=1e-5)
    np.testing.assert_allclose(report["loss"], fine + coarse_loss / 16, rtol=1e-5)


@pytest.fixture(scope="module")
def trained_two_level():
    """A two-level prior trained on the two layouts, and its training history; tests must not
    change it."""
    prior = two_level_prior()
    prior.compile(optimizer=keras.optimizers.Adam(1e-2))
    return prior, prior.fit(layouts(64), batch_size=8, epochs=12, verbose=0).history


def test_trained_two_level_prior_draws_whole_training_layouts_and_reloads(
    trained_two_level, tmp_path
):
    """Trained on two layouts, each sample is one of them entirely: its coarse map is drawn
    first, and the fine codes follow it; the saved prior draws the same maps."""
    prior, history = trained_two_level
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert history["coarse_loss"][-1] < history["coarse_loss"][0]

    samples = sample_code_maps(prior, 16, seed=4)
    top_far = np.all(samples == layouts(2)[0], axis=(1, 2))
    bottom_far = np.all(samples == layouts(2)[1], axis=(1, 2))
    assert np.mean(top_far | bottom_far) >= 0.9
    assert top_far.any() and bottom_far.any()

    prior.save(tmp_path / "prior.keras")
    loaded = keras.saving.load_model(tmp_path / "prior.keras")
    np.testing.assert_array_equal(sample_code_maps(loaded, 16, seed=4), samples)
    np.testing.assert_array_equal(loaded.coarse_map.centroids, prior.coarse_map.centroids)


def test_fine_level_drawn_on_given_coarse_maps_follows_each_one(trained_two_level, monkeypatch):
    """Given coarse maps (`coarse_maps`), only the fine level is drawn, each map on its own
    coarse map, also in chunks; given the maps the coarse level draws with the same seed, the
    draw is the plain one. Wrong coarse maps are refused by name."""
    prior, _ = trained_two_level
    drawn_coarse = sample_code_maps(prior.coarse_prior, 6, seed=2)
    np.testing.assert_array_equal(
        sample_code_maps(prior, 6, seed=2, coarse_maps=drawn_coarse),
        sample_code_maps(prior, 6, seed=2),
    )
    monkeypatch.setattr(sampler, "MAX_CODES_PER_SCAN", 3 * MAP_SIZE**2)  # 3 maps a scan
    wanted = layouts(8)[[0, 0, 0, 0, 0, 0, 1, 1]]  # six of one layout, two of the other
    given = keras.ops.convert_to_numpy(prior.coarse_map(wanted))
    drawn = sample_code_maps(prior, 8, seed=5, coarse_maps=given)
    assert np.mean(np.all(drawn == wanted, axis=(1, 2))) >= 0.75
    flipped = sample_code_maps(prior, 8, seed=5, coarse_maps=given[::-1])
    assert np.mean(np.all(flipped == wanted[::-1], axis=(1, 2))) >= 0.75

    with pytest.raises(ValueError, match=r"coarse_maps must have shape \(N, 2, 2\)"):
        sample_code_maps(prior, 8, coarse_maps=wanted)
    with pytest.raises(ValueError, match=r"coarse_maps values must be in \[0, 3\)"):
        sample_code_maps(prior, 8, coarse_maps=np.full((8, 2, 2), 3))
    with pytest.raises(ValueError, match=r"one map per map drawn \(4\), got 8"):
        sample_code_maps(prior, 4, coarse_maps=given)
    with pytest.raises(ValueError, match="this prior is flat"):
        sample_code_maps(prior.coarse_prior, 8, coarse_maps=given)


def test_the_coarse_level_is_drawn_from_its_own_nucleus(trained_two_level):
    """`coarse_top_p` cuts the coarse level's codes, `top_p` the fine level's: a greedy coarse
    level lays out every map alike whatever the fine level draws, and every coarse code with a
    greedy fine level still gives both layouts, each drawn whole."""
    prior, _ = trained_two_level
    one_layout = sample_code_maps(prior, 16, seed=4, coarse_top_p=1e-6)
    first, second = (np.all(one_layout == layout, axis=(1, 2)) for layout in layouts(2))
    assert max(first.mean(), second.mean()) >= 0.9
    both = sample_code_maps(prior, 16, seed=4, top_p=1e-6, coarse_top_p=1.0)
    first, second = (np.all(both == layout, axis=(1, 2)) for layout in layouts(2))
    assert first.any() and second.any() and np.mean(first | second) >= 0.9

    with pytest.raises(ValueError, match=r"coarse_top_p must be None or in range \(0, 1\]"):
        sample_code_maps(prior, 2, coarse_top_p=1.5)
    with pytest.raises(ValueError, match="coarse_top_p .* this prior is flat"):
        sample_code_maps(prior.coarse_prior, 2, coarse_top_p=0.9)


def test_both_levels_follow_the_slice_below_when_nothing_else_is_asked(monkeypatch):
    """Trained on maps whose slice below is the map itself (a volume of one layout), a prior
    given only the slice below draws that layout at both levels: the coarse level reads the
    slice below coarsened, as in training, or the coarse level's own slice below when one is
    given (`coarse_slice_below`), also when the maps are drawn in chunks, each map with its own
    slices below. A coarse level drawn without it picks either layout, and the fine level
    cannot fit both its coarse map and the slice below."""
    prior = two_level_prior(prior_conditions="previous_slice")
    maps = layouts(64)
    conditions = condition_batch(("previous_slice",), {}, 64, {"previous_slice": maps}, MAP_SIZE)
    prior.compile(optimizer=keras.optimizers.Adam(1e-2))
    prior.fit(pack_prior_inputs(maps, conditions), batch_size=8, epochs=15, verbose=0)
    for layout in (0, 1):
        below = np.repeat(maps[layout : layout + 1], 8, axis=0)
        coarse = sampler._coarse_maps(
            prior, 8, 1.0, 3, None, None, {"previous_slice": below}, 1.0, below
        )
        expected = keras.ops.convert_to_numpy(prior.coarse_map(maps[layout : layout + 1]))
        assert np.mean(np.all(coarse == expected, axis=(1, 2))) >= 0.75, layout
        drawn = sample_code_maps(prior, 8, seed=3, conditions={"previous_slice": maps[layout]})
        assert np.mean(np.all(drawn == maps[layout], axis=(1, 2))) >= 0.75, layout
        given = {"previous_slice": maps[layout]}
        alike = sample_code_maps(prior, 8, seed=3, conditions=given, coarse_slice_below=below)
        np.testing.assert_array_equal(alike, drawn)
        # the coarse level given the other layout's slice below lays that layout out
        other = np.repeat(maps[1 - layout : 2 - layout], 8, axis=0)
        moved = sample_code_maps(prior, 8, seed=3, conditions=given, coarse_slice_below=other)
        assert np.mean(moved[:, :4, :] == maps[1 - layout, 0, 0]) >= 0.75, layout
    monkeypatch.setattr(sampler, "MAX_CODES_PER_SCAN", 3 * MAP_SIZE**2)  # 3 maps a scan
    mixed = maps[[0, 0, 0, 0, 1, 1, 1, 1]]  # four maps of each layout, each its own slice below
    given = {"previous_slice": mixed}
    drawn = sample_code_maps(prior, 8, seed=3, conditions=given, coarse_slice_below=mixed)
    assert np.mean(np.all(drawn == mixed, axis=(1, 2))) >= 0.75
    swapped = sample_code_maps(prior, 8, seed=3, conditions=given, coarse_slice_below=mixed[::-1])
    assert np.mean(swapped[:, :4, :] == mixed[::-1, :1, :1]) >= 0.75
    with pytest.raises(ValueError, match="needs a two-level prior and a previous_slice"):
        sample_code_maps(prior, 8, seed=3, coarse_slice_below=maps[:8])
    coarse = keras.ops.convert_to_numpy(prior.coarse_map(mixed))
    with pytest.raises(ValueError, match="give one or the other"):
        sample_code_maps(prior, 8, conditions=given, coarse_slice_below=mixed, coarse_maps=coarse)


def test_the_fine_level_reads_the_slice_below_blurred_with_its_own_noise(monkeypatch):
    """In training the coarse level reads the coarse map of the slice below with a quarter of
    its codes random (`previous_slice_noise`), the fine level the slice below as blurred by
    `fine_previous_slice_noise`: clean at 0. A prior configured alike for both levels (as
    every run saved before the field) blurs one map for both, coarsened afterwards."""
    maps = np.random.default_rng(0).integers(0, CODES, (500, MAP_SIZE, MAP_SIZE), dtype="int32")
    batch = condition_batch(("previous_slice",), {}, 500, {"previous_slice": maps}, MAP_SIZE)
    inputs = {"codes": maps, **batch}
    replaced = pytest.approx(0.25 * (CODES - 1) / CODES, abs=0.02)
    for fine_noise in (0.0, 0.25):
        prior = two_level_prior(
            prior_conditions="previous_slice", fine_previous_slice_noise=fine_noise
        )
        coarse_map, coarsened = prior.coarse_map, []

        def recording(code_maps, coarse_map=coarse_map, coarsened=coarsened):
            coarsened.append(np.asarray(code_maps))
            return coarse_map(code_maps)

        monkeypatch.setattr(prior, "coarse_map", recording)
        hidden = prior._hide_conditions(inputs)
        fine_below = np.asarray(hidden["previous"])
        if fine_noise == 0.0:
            np.testing.assert_array_equal(fine_below, maps)
            assert (coarsened[0] != maps).mean() == replaced
            np.testing.assert_array_equal(hidden["coarse_previous"], coarse_map(coarsened[0]))
        else:
            assert (fine_below != maps).mean() == replaced
            assert "coarse_previous" not in hidden and not coarsened


def test_both_levels_follow_the_asked_level_with_or_without_the_slice_below():
    """Level 0 maps have the far codes on top, level 1 maps below; the slice below is the map
    itself. Asked for a level, both levels draw its layout, guided or not, given the slice below
    or not."""
    prior = two_level_prior(prior_conditions="slice_position,previous_slice")
    maps = layouts(64)
    levels = np.arange(64) % 2
    conditions = condition_batch(
        ("slice_position", "previous_slice"),
        {"slice_position": [0.0, 1.0]},
        64,
        {"slice_position": levels.astype("float32"), "previous_slice": maps},
        MAP_SIZE,
    )
    prior.compile(optimizer=keras.optimizers.Adam(1e-2))
    prior.fit(pack_prior_inputs(maps, conditions), batch_size=8, epochs=30, verbose=0)
    for level in (0, 1):
        for guidance in (1.0, 2.0):
            drawn = sample_code_maps(
                prior, 8, seed=1, conditions={"slice_position": level}, guidance=guidance
            )
            assert np.mean(np.all(drawn == maps[level], axis=(1, 2))) >= 0.75, (level, guidance)
        asked = {"slice_position": level, "previous_slice": maps[level]}
        below = sample_code_maps(prior, 8, seed=2, conditions=asked)
        assert np.mean(np.all(below == maps[level], axis=(1, 2))) >= 0.75, level


def test_coarse_prior_is_the_card_prior_over_smaller_maps_of_the_coarse_codes():
    hifi_like = TWO_LEVEL.replace(
        image_size=128, pixelcnn_filters=64, pixelcnn_gated_layers=5, pixelcnn_embedding_dim=16
    )
    coarse = coarse_prior_hyperparameters(hifi_like.replace(prior_conditions="slice_position"))
    assert (coarse.code_map_size, coarse.num_embeddings) == (8, COARSE_CODES)
    assert (coarse.pixelcnn_filters, coarse.pixelcnn_gated_layers) == (128, 6)
    assert (coarse.pixelcnn_embedding_dim, coarse.pixelcnn_coarse_codes) == (0, 0)
    assert coarse.condition_names == ("slice_position",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pixelcnn_coarse_codes": 1}, "pixelcnn_coarse_codes must be at least 2"),
        ({"pixelcnn_architecture": "masked"}, "needs pixelcnn_architecture 'gated'"),
        ({"image_size": 16}, "a multiple of 8"),
    ],
)
def test_settings_a_two_level_prior_cannot_take_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TWO_LEVEL.replace(**changes)
