"""The conditional prior: conditions from the data, causality, the cached sampler, obedience
after training, saved models, and the messages for conditions a run cannot take."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from fixtures import write_as_saved_before

from brain_vqvae.conditioning import (
    available_conditions,
    condition_ranges,
    previous_slice_rows,
    resolve_prior_conditions,
    slice_conditions,
)
from brain_vqvae.data import code_map_dataset
from brain_vqvae.data.slices import make_slice_set
from brain_vqvae.generation import with_drawn_levels
from brain_vqvae.model import (
    PixelCNN,
    build_pixelcnn,
    build_vqvae,
    encode_code_maps,
    sample_code_maps,
    sampler,
)
from brain_vqvae.model import prior as prior_module
from brain_vqvae.model.conditions import condition_batch, guidance_stages
from brain_vqvae.model.prior import pack_prior_inputs
from brain_vqvae.model.sampler import guided_logits, raster_scan
from brain_vqvae.training import with_mirror_images
from hyperparameters import Hyperparameters

CODES, MAP_SIZE = 8, 8
ALL_CONDITIONS = "slice_position,age,sex,cdr,previous_slice"


def tiny_conditional_hyperparameters(conditions: str, **changes) -> Hyperparameters:
    """8x8 maps of 8 codes, a gated prior of 3 layers of 16 filters with `conditions`."""
    return Hyperparameters(
        image_size=32,
        downsample_stages=2,
        encoder_filters=(8, 8),
        num_embeddings=CODES,
        pixelcnn_filters=16,
        pixelcnn_gated_layers=3,
        prior_conditions=conditions,
    ).replace(**changes)


def tiny_conditional_prior(conditions: str = ALL_CONDITIONS, **changes) -> PixelCNN:
    hyperparameters = tiny_conditional_hyperparameters(conditions, **changes)
    ranges = {"slice_position": [0.0, 1.0], "age": [20.0, 90.0], "sex": ["F", "M"]}
    ranges["cdr"] = [0.0, 2.0]
    keras.utils.set_random_seed(0)
    prior = build_pixelcnn(hyperparameters, ranges)
    rng = np.random.default_rng(1)
    for weight in prior.weights:  # random biases too, so that no path is zero by chance
        if weight.trainable:
            weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    return prior


def some_conditions(
    count: int, seed: int = 2, names=("slice_position", "age", "sex", "cdr", "previous_slice")
) -> dict:
    rng = np.random.default_rng(seed)
    values = {
        "slice_position": rng.uniform(0, 1, count),
        "age": rng.uniform(20, 90, count),
        "sex": "F",
        "cdr": 0.5,
        "previous_slice": rng.integers(0, CODES, (count, MAP_SIZE, MAP_SIZE)),
    }
    asked = {name: value for name, value in values.items() if name in names}
    return condition_batch(tuple(names), {}, count, asked, MAP_SIZE)


# Conditions from the data ---------------------------------------------------------------------


def slice_set_of(subjects, slice_indices):
    images = [np.zeros((4, 4), np.uint8)] * len(subjects)
    return make_slice_set(images, subjects, slice_indices, 4)


def test_previous_slice_is_the_next_lower_loaded_slice_of_the_same_subject():
    slice_set = slice_set_of(["b", "a", "a", "b", "a", "c"], [5, 2, 0, 1, 7, 3])
    np.testing.assert_array_equal(previous_slice_rows(slice_set), [3, 2, -1, -1, 1, -1])


def test_conditions_from_levels_and_a_demographics_table():
    slice_set = slice_set_of(["a", "a", "b", "b"], [0, 2, 0, 1])
    demographics = {"a": {"age": 70.0, "sex": "F", "cdr": None}, "b": {"age": None, "sex": "M"}}
    assert available_conditions(slice_set, demographics) == (
        "slice_position",
        "age",
        "sex",
        "previous_slice",
    )
    names = ("slice_position", "age", "sex", "previous_slice")
    codes = np.arange(4 * 2 * 2).reshape(4, 2, 2)
    inputs = slice_conditions(names, slice_set, demographics, codes)
    # levels 0/2 -> 0, 1; 0/1 -> 0, 1; age 70 -> 0.7 for a, unknown for b; F = 1, M = 0
    np.testing.assert_allclose(
        inputs["values"][:, :3], [[0, 0.7, 1], [1, 0.7, 1], [0, 0, 0], [1, 0, 0]]
    )
    np.testing.assert_array_equal(
        inputs["known"], [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 1]]
    )
    np.testing.assert_array_equal(inputs["previous"][1], codes[0])
    np.testing.assert_array_equal(inputs["previous"][3], codes[2])
    assert condition_ranges(names, slice_set, demographics) == {
        "slice_position": [0.0, 1.0],
        "age": [70.0, 70.0],
        "sex": ["F", "M"],
    }


def test_mirror_images_double_the_prior_maps_with_their_own_slice_below():
    """`prior_mirror_images`: after the N training maps come the code maps of the slices
    flipped left to right, with the same people's values, and each mirrored slice's slice below
    is the mirrored map of the real one's."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    images = rng.integers(0, 256, (4, 32, 32)).astype(np.uint8)
    slice_set = make_slice_set(list(images), ["a", "a", "b", "b"], [0, 2, 0, 1], 32)
    vqvae = build_vqvae(tiny_conditional_hyperparameters("none"), data_variance=0.05)
    maps = encode_code_maps(vqvae, images[..., None] / np.float32(255.0))
    flipped = encode_code_maps(vqvae, np.flip(images, axis=2)[..., None] / np.float32(255.0))
    assert not np.array_equal(maps, flipped)
    demographics = {"a": {"age": 70.0}, "b": {"age": 30.0}}
    names = ("slice_position", "age", "previous_slice")
    conditions = slice_conditions(names, slice_set, demographics, maps)

    both, both_conditions = with_mirror_images(
        vqvae, slice_set, maps, conditions, names, demographics, batch_size=2
    )
    np.testing.assert_array_equal(both, np.concatenate([maps, flipped]))
    np.testing.assert_allclose(
        both_conditions["values"][:, :2], [[0, 0.7], [1, 0.7], [0, 0.3], [1, 0.3]] * 2
    )
    np.testing.assert_array_equal(both_conditions["known"][:, 2], [0, 1, 0, 1] * 2)
    np.testing.assert_array_equal(both_conditions["previous"][5], flipped[0])
    np.testing.assert_array_equal(both_conditions["previous"][7], flipped[2])
    alone, none = with_mirror_images(vqvae, slice_set, maps, None, (), {}, batch_size=2)
    np.testing.assert_array_equal(alone, both)
    assert none is None


def test_auto_conditions_resolve_to_what_the_data_provides():
    slice_set = slice_set_of(["a", "a"], [0, 1])
    resolved = resolve_prior_conditions(Hyperparameters(), slice_set, {})
    assert resolved.prior_conditions == "slice_position,previous_slice"
    masked = Hyperparameters(pixelcnn_architecture="masked")
    assert resolve_prior_conditions(masked, slice_set, {}).prior_conditions == "none"
    single = slice_set_of(["a", "b"], [0, 0])
    assert resolve_prior_conditions(Hyperparameters(), single, {}).condition_names == ()
    with pytest.raises(ValueError, match="asks for age, which the training data does not"):
        resolve_prior_conditions(Hyperparameters(prior_conditions="age"), slice_set, {})


def test_a_configuration_without_conditions_is_an_unconditional_prior():
    assert Hyperparameters.from_dict({}).condition_names == ()
    with pytest.raises(ValueError, match="need pixelcnn_architecture 'gated'"):
        Hyperparameters(pixelcnn_architecture="masked", prior_conditions="age")
    with pytest.raises(ValueError, match="distinct comma-separated names"):
        Hyperparameters(prior_conditions="age,height")
    with pytest.raises(ValueError, match='still "auto"'):
        _ = Hyperparameters().condition_names


# The model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("places", [False, True], ids=["plain", "places"])
def test_conditioned_logits_depend_only_on_earlier_codes_and_everywhere_on_the_conditions(places):
    prior = tiny_conditional_prior(pixelcnn_position_features=places)
    positions = MAP_SIZE * MAP_SIZE
    conditions = some_conditions(1)
    base = np.random.default_rng(9).integers(0, CODES, (MAP_SIZE, MAP_SIZE))
    perturbed = np.repeat(base[None], positions, axis=0)
    rows, columns = np.divmod(np.arange(positions), MAP_SIZE)
    perturbed[np.arange(positions), rows, columns] = (base[rows, columns] + 1) % CODES
    maps = np.concatenate([base[None], perturbed]).astype("int32")
    repeated = {name: np.repeat(value, len(maps), axis=0) for name, value in conditions.items()}
    logits = np.asarray(prior({"codes": maps, **repeated})).reshape(positions + 1, positions, -1)
    change = np.abs(logits[1:] - logits[:1]).max(axis=-1)  # [changed p, position t]
    assert change[np.triu(np.ones((positions, positions), dtype=bool)).T].max() < 1e-5
    assert all(change[:target, target].max() > 1e-3 for target in range(1, positions))

    for name_column in range(5):  # hiding any one condition moves the logits at (0, 0)
        hidden = {**conditions, "known": conditions["known"].copy()}
        hidden["known"][:, name_column] = 0.0
        moved = np.asarray(prior({"codes": maps[:1], **hidden}))[0, 0, 0]
        assert np.abs(moved - logits[0, 0]).max() > 1e-3, name_column


def test_code_maps_alone_read_as_every_condition_unknown():
    prior = tiny_conditional_prior()
    maps = np.random.default_rng(3).integers(0, CODES, (2, MAP_SIZE, MAP_SIZE)).astype("int32")
    unknown = condition_batch(prior.condition_names, {}, 2, None, MAP_SIZE)
    np.testing.assert_allclose(prior(maps), prior({"codes": maps, **unknown}), atol=1e-6)


@pytest.mark.parametrize("places", [False, True], ids=["plain", "places"])
def test_conditioned_raster_scan_replays_the_whole_map_logits(places):
    prior = tiny_conditional_prior(pixelcnn_position_features=places)
    conditions = some_conditions(3)
    code_maps = np.random.default_rng(11).integers(0, CODES, (3, MAP_SIZE, MAP_SIZE))
    code_maps = code_maps.astype("int32")
    whole = np.asarray(prior({"codes": code_maps, **conditions})).reshape(3, -1, CODES)
    seen = {}

    def replay(position, logits):  # eager: tf.while_loop runs as a Python loop
        seen[int(position)] = np.asarray(logits)
        return code_maps.reshape(3, -1)[:, int(position)]

    features = prior.condition_features({name: np.asarray(v) for name, v in conditions.items()})
    np.testing.assert_array_equal(raster_scan(prior)(3, replay, features), code_maps)
    for position, logits in seen.items():
        np.testing.assert_allclose(logits, whole[:, position], atol=1e-5)


@pytest.mark.parametrize("places", [False, True], ids=["plain", "places"])
def test_saved_conditional_prior_reloads_with_its_ranges_and_samples_identically(tmp_path, places):
    prior = tiny_conditional_prior(pixelcnn_position_features=places)
    prior.save(tmp_path / "prior.keras")
    loaded = keras.saving.load_model(tmp_path / "prior.keras")
    assert loaded.condition_names == prior.condition_names
    assert loaded.condition_ranges == prior.condition_ranges
    asked = {"slice_position": 0.3, "age": 75, "sex": "M", "cdr": 1}
    np.testing.assert_array_equal(
        sample_code_maps(prior, 4, seed=5, conditions=asked),
        sample_code_maps(loaded, 4, seed=5, conditions=asked),
    )


def test_position_features_are_the_mlp_of_the_conditions_and_the_place():
    """With `pixelcnn_position_features` the condition features at (i, j) are the scalar MLP
    of [x * m, m, (i + 1/2) / h, (j + 1/2) / h], written out here in NumPy; without any
    condition the MLP reads the place alone, and the features differ from place to place."""

    def swish(x):
        return x / (1.0 + np.exp(-x))

    for conditions in ("slice_position,age", "none"):
        prior = tiny_conditional_prior(conditions, pixelcnn_position_features=True)
        encoder = prior.condition_encoder
        names = prior.condition_names
        asked = {"slice_position": [0.2, 0.9], "age": [30.0, 80.0]} if names else {}
        batch = condition_batch(names, {}, 2, asked, MAP_SIZE)
        features = np.asarray(prior.condition_features(batch))
        assert features.shape == (2, MAP_SIZE, MAP_SIZE, 16)
        hidden_kernel, hidden_bias = (np.asarray(w) for w in encoder.scalar_hidden.weights)
        out_kernel, out_bias = (np.asarray(w) for w in encoder.scalar_out.weights)
        scalars = np.array([[0.2, 0.3], [0.9, 0.8]])[:, : len(names)]  # age / 100
        known = np.ones_like(scalars)
        for n in range(2):
            for i, j in ((0, 0), (3, 5), (7, 7)):
                place = [(i + 0.5) / MAP_SIZE, (j + 0.5) / MAP_SIZE]
                x = np.concatenate([scalars[n] * known[n], known[n], place])
                expected = swish(x @ hidden_kernel + hidden_bias) @ out_kernel + out_bias
                np.testing.assert_allclose(features[n, i, j], expected, rtol=1e-4, atol=1e-5)
        assert np.abs(features[:, 0, 0] - features[:, 7, 7]).max() > 1e-2


def test_a_prior_without_position_features_has_features_that_do_not_vary_over_the_map():
    prior = tiny_conditional_prior("slice_position", pixelcnn_position_features=False)
    features = prior.condition_features(some_conditions(2, names=("slice_position",)))
    assert tuple(features.shape) == (2, 1, 1, 16)


def previous_slice_channels(prior: PixelCNN) -> int:
    """Input channels of the first convolution over the slice below (codes + its flag)."""
    return prior.condition_encoder.previous_hidden.kernel.shape[2]


def test_a_prior_that_embeds_its_codes_embeds_the_slice_below_and_reloads(tmp_path):
    prior = tiny_conditional_prior(pixelcnn_embedding_dim=4)
    assert previous_slice_channels(prior) == 4 + 1  # not CODES + 1 one-hot channels
    conditions = some_conditions(2)
    maps = np.random.default_rng(4).integers(0, CODES, (2, MAP_SIZE, MAP_SIZE)).astype("int32")
    other = {**conditions, "previous": (conditions["previous"] + 1) % CODES}
    moved = np.asarray(prior({"codes": maps, **other})) - prior({"codes": maps, **conditions})
    assert np.abs(moved).max() > 1e-3  # the slice below is read
    prior.save(tmp_path / "prior.keras")
    loaded = keras.saving.load_model(tmp_path / "prior.keras")
    assert previous_slice_channels(loaded) == 5
    asked = {"slice_position": 0.6, "previous_slice": conditions["previous"]}
    np.testing.assert_array_equal(
        sample_code_maps(prior, 2, seed=3, conditions=asked),
        sample_code_maps(loaded, 2, seed=3, conditions=asked),
    )


def test_a_prior_saved_before_the_slice_below_was_embedded_loads_with_one_hot_codes(tmp_path):
    prior = tiny_conditional_prior(pixelcnn_embedding_dim=4, pixelcnn_embed_previous_slice=False)
    assert previous_slice_channels(prior) == CODES + 1
    prior.save(tmp_path / "new.keras")

    def without_the_field(config: dict) -> None:
        hyperparameters = config["config"]["hyperparameters"]
        assert hyperparameters.pop("pixelcnn_embed_previous_slice") is False

    write_as_saved_before(tmp_path / "new.keras", tmp_path / "old.keras", without_the_field)
    loaded = keras.saving.load_model(tmp_path / "old.keras")
    assert previous_slice_channels(loaded) == CODES + 1
    conditions = some_conditions(2)
    maps = np.random.default_rng(6).integers(0, CODES, (2, MAP_SIZE, MAP_SIZE)).astype("int32")
    np.testing.assert_allclose(
        loaded({"codes": maps, **conditions}), prior({"codes": maps, **conditions}), atol=1e-6
    )


def test_a_level_not_asked_is_drawn_over_the_trained_levels():
    prior = tiny_conditional_prior()
    prior.condition_ranges["slice_position"] = [0.2, 0.8]
    drawn = with_drawn_levels(prior, 500, {"age": 70}, seed=3)
    levels = drawn["slice_position"]
    assert drawn["age"] == 70 and levels.shape == (500,)
    assert levels.min() >= 0.2 and levels.max() <= 0.8 and np.ptp(levels) > 0.55
    assert abs(np.mean(levels < 0.5) - 0.5) < 0.1  # spread evenly, not bunched
    again = with_drawn_levels(prior, 500, None, seed=3)["slice_position"]
    np.testing.assert_array_equal(again, levels)  # the seed reproduces them
    assert with_drawn_levels(prior, 5, {"slice_position": 0.0}, seed=3) == {"slice_position": 0.0}
    no_levels = tiny_conditional_prior("age,sex")
    assert with_drawn_levels(no_levels, 5, None, seed=3) == {}


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"age": 95}, "age 95 years is outside what the run was trained on: 20 to 90 years"),
        ({"slice_position": -0.1}, "slice_position -0.1 is outside"),
        ({"sex": "X"}, "sex must be one of M, F"),
        ({"height": 2}, r"not trained with condition\(s\) height"),
        ({"previous_slice": np.zeros((2, 2), int)}, "previous_slice must be integer code maps"),
        ({"age": [30, 40]}, "age needs one value or 3, got 2"),
        ({"previous_slice": np.full((8, 8), CODES)}, r"previous_slice codes must be in \[0, 8\)"),
    ],
)
def test_bad_conditions_are_refused_with_a_message(asked, message):
    prior = tiny_conditional_prior()
    with pytest.raises(ValueError, match=message):
        sample_code_maps(prior, 3, conditions=asked)


def test_an_unconditional_prior_refuses_conditions():
    prior = tiny_conditional_prior("none")
    with pytest.raises(ValueError, match=r"its conditions: none"):
        sample_code_maps(prior, 2, conditions={"slice_position": 0.5})


def prior_trained_on_levels(maps: np.ndarray, levels: np.ndarray, batch_size: int) -> PixelCNN:
    """A tiny gated prior conditioned on slice_position, trained for 6 epochs on `maps`
    [N, 8, 8] at their `levels` [N]."""
    return prior_trained_on(maps, {"slice_position": levels}, batch_size)


def prior_trained_on(maps: np.ndarray, conditions: dict, batch_size: int) -> PixelCNN:
    """A tiny gated prior conditioned on the scalar `conditions` ({name: [N] values}; slice
    level and age, which range over [0, 1] and [20, 90]), trained for 6 epochs on `maps`
    [N, 8, 8]."""
    names = tuple(conditions)
    ranges = {"slice_position": [0.0, 1.0], "age": [20.0, 90.0]}
    keras.utils.set_random_seed(0)
    prior = build_pixelcnn(
        tiny_conditional_hyperparameters(",".join(names)),
        {name: ranges[name] for name in names},
    )
    conditions = condition_batch(names, ranges, len(maps), conditions, MAP_SIZE)
    prior.compile(optimizer=keras.optimizers.Adam(1e-2))
    prior.fit(
        code_map_dataset(pack_prior_inputs(maps, conditions), batch_size, shuffle=True),
        epochs=6,
        verbose=0,
    )
    return prior


@pytest.fixture(scope="module")
def two_levels_prior() -> PixelCNN:
    """A prior trained on maps of level 0 that use codes 1 and 2, and maps of level 1 that use
    codes 5 and 6 (random mixtures)."""
    rng = np.random.default_rng(0)
    count = 256
    levels = np.repeat([0.0, 1.0], count // 2)
    maps = (
        rng.integers(0, 2, (count, MAP_SIZE, MAP_SIZE)) + np.where(levels > 0, 5, 1)[:, None, None]
    )
    return prior_trained_on_levels(maps, levels, batch_size=32)


def test_a_prior_trained_on_two_levels_draws_each_on_request(two_levels_prior):
    """The trained prior draws level-0 codes when asked for 0 and level-1 codes when asked
    for 1."""
    prior = two_levels_prior
    low = sample_code_maps(prior, 16, seed=1, conditions={"slice_position": 0.0})
    high = sample_code_maps(prior, 16, seed=1, conditions={"slice_position": 1.0})
    assert np.isin(low, (1, 2)).mean() > 0.95
    assert np.isin(high, (5, 6)).mean() > 0.95
    either = sample_code_maps(prior, 64, seed=2)  # unknown level: both kinds of map
    assert 0.2 < np.isin(either, (1, 2)).mean() < 0.8


def test_a_large_draw_runs_in_chunks_each_map_at_its_own_level(two_levels_prior, monkeypatch):
    """More maps than one scan may draw (here 3 maps of 64 codes, 1 when guided) are drawn in
    chunks of at most that many: each map at the level asked for it, the same maps for the same
    seed, and no chunk a copy of another (each has its own seed)."""
    prior = two_levels_prior
    monkeypatch.setattr(sampler, "MAX_CODES_PER_SCAN", 3 * MAP_SIZE**2)
    scans = []
    original = sampler._CodeMapSampler.sample

    def counted(self, count, *arguments):
        scans.append(count)
        return original(self, count, *arguments)

    monkeypatch.setattr(sampler._CodeMapSampler, "sample", counted)
    levels = np.arange(10) % 2
    drawn = sample_code_maps(prior, 10, seed=4, conditions={"slice_position": levels})
    assert scans == [3, 3, 2, 2]
    assert np.isin(drawn[levels == 0], (1, 2)).mean() > 0.95
    assert np.isin(drawn[levels == 1], (5, 6)).mean() > 0.95
    again = sample_code_maps(prior, 10, seed=4, conditions={"slice_position": levels})
    np.testing.assert_array_equal(again, drawn)
    low = sample_code_maps(prior, 9, seed=4, conditions={"slice_position": 0.0})
    assert not np.array_equal(low[:3], low[3:6]) and not np.array_equal(low[:3], low[6:])
    scans.clear()
    guided = sample_code_maps(
        prior, 4, seed=4, conditions={"slice_position": levels[:4]}, guidance=2.0
    )
    assert scans == [1, 1, 1, 1]
    assert np.isin(guided[levels[:4] == 0], (1, 2)).mean() > 0.95
    assert np.isin(guided[levels[:4] == 1], (5, 6)).mean() > 0.95


def test_guidance_zero_ignores_the_asked_values_but_keeps_the_slice_below():
    """w = 0 draws from the reference (asked values hidden, the slice below kept): the same
    maps, seed for seed, as asking for the slice below alone; w = 1 is the plain conditional."""
    prior = tiny_conditional_prior()
    below = np.random.default_rng(3).integers(0, CODES, (4, MAP_SIZE, MAP_SIZE))
    asked = {"slice_position": 0.9, "age": 85, "sex": "M", "cdr": 2, "previous_slice": below}
    only_below = sample_code_maps(prior, 4, seed=5, conditions={"previous_slice": below})
    ignored = sample_code_maps(prior, 4, seed=5, conditions=asked, guidance=0.0)
    np.testing.assert_array_equal(ignored, only_below)
    plain = sample_code_maps(prior, 4, seed=5, conditions=asked)
    np.testing.assert_array_equal(
        sample_code_maps(prior, 4, seed=5, conditions=asked, guidance=1.0), plain
    )
    assert not np.array_equal(plain, only_below)
    assert not np.array_equal(
        sample_code_maps(prior, 4, seed=5, conditions=asked, guidance=3.0), plain
    )


def test_guided_logits_move_away_from_the_reference():
    asked, reference = np.array([[1.0, 2.0, 0.0]]), np.array([[0.0, 1.0, 1.0]])
    passes = np.stack([reference, asked])
    np.testing.assert_allclose(guided_logits(passes, np.array([2.0])), [[2.0, 3.0, -1.0]])
    np.testing.assert_allclose(guided_logits(passes, np.array([0.0])), reference)


def test_guided_logits_weight_each_step_by_its_own():
    """l_0 + 2 (l_1 - l_0) + 3 (l_2 - l_1), by hand for one row of two codes."""
    passes = np.array([[[0.0, 1.0]], [[1.0, 1.0]], [[1.0, 3.0]]])
    expected = [[0.0 + 2 * 1.0 + 3 * 0.0, 1.0 + 2 * 0.0 + 3 * 2.0]]
    np.testing.assert_allclose(guided_logits(passes, np.array([2.0, 3.0])), expected)


def test_guided_logits_of_a_first_step_of_weight_one_start_from_its_pass():
    """l_0 + 1 (l_1 - l_0) + 2 (l_2 - l_1) + 3 (l_3 - l_2) = l_1 + 2 (l_2 - l_1) + 3 (l_3 - l_2):
    the pass that `guidance_stages` saves when the lowest weight is 1."""
    passes = np.random.default_rng(0).normal(size=(4, 5, 7))
    np.testing.assert_allclose(
        guided_logits(passes, np.array([1.0, 2.0, 3.0])),
        guided_logits(passes[1:], np.array([2.0, 3.0])),
        rtol=1e-6,
        atol=1e-6,
    )


def test_guidance_stages_show_the_conditions_in_order_of_their_weights():
    """Level, age and sex asked, the slice below given, CDR not asked: pass 0 hides every
    asked scalar, then each distinct weight in ascending order shows its conditions; a
    condition of weight 1 is shown from the first pass (one step fewer, the same logits)."""
    names = ("slice_position", "age", "sex", "cdr", "previous_slice")
    known = np.array([[1.0, 1.0, 1.0, 0.0, 1.0]] * 2, dtype="float32")
    passes, weights = guidance_stages(known, names, {"slice_position": 2.0, "age": 3.0})
    assert weights == [2.0, 3.0]  # sex, not named, takes 1: shown from pass 0
    np.testing.assert_array_equal(
        [p[0] for p in passes], [[0, 0, 1, 0, 1], [1, 0, 1, 0, 1], [1, 1, 1, 0, 1]]
    )
    passes, weights = guidance_stages(known, names, {"slice_position": 0.5, "age": 3.0})
    assert weights == [0.5, 1.0, 3.0]  # below 1, every step stays
    np.testing.assert_array_equal(
        [p[0] for p in passes],
        [[0, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 1, 1, 0, 1]],
    )
    passes, weights = guidance_stages(known, names, 2.0)
    assert weights == [2.0] and len(passes) == 2
    np.testing.assert_array_equal(passes[1], known)
    for plain in (1.0, {"cdr": 3.0}):  # every asked weight 1: one pass, unguided
        passes, weights = guidance_stages(known, names, plain)
        assert weights == [] and len(passes) == 1


def test_one_weight_per_condition_equals_one_weight_for_all():
    """{condition: w} with the same w for every asked condition draws the same maps as w,
    and a weight for a condition not asked changes nothing."""
    prior = tiny_conditional_prior()
    asked = {"slice_position": 0.3, "age": 70}
    same = {"slice_position": 2.5, "age": 2.5, "cdr": 0.0}
    np.testing.assert_array_equal(
        sample_code_maps(prior, 4, seed=3, conditions=asked, guidance=same),
        sample_code_maps(prior, 4, seed=3, conditions=asked, guidance=2.5),
    )


def test_a_condition_guided_harder_is_followed_more_closely_and_the_other_as_before():
    """Rows 0-3 of a map hold code 1 on 70 % of their positions at level 0 (30 % at level 1,
    code 2 elsewhere), rows 4-7 code 3 on 70 % for age 80 (30 % for age 30, code 4 elsewhere),
    level and age drawn independently. Asked for level 0 and age 80, guiding the age alone
    (age 3, level 1) sharpens the rows of age (by 0.22 when written) and leaves those of the
    level about as a plain draw draws them (0.02); guiding the level alone does the opposite
    (0.17 and 0.02)."""
    rng = np.random.default_rng(0)
    count = 512
    levels = rng.integers(0, 2, count).astype(float)
    ages = np.where(rng.integers(0, 2, count) > 0, 80.0, 30.0)
    level_chance = np.where(levels > 0, 0.3, 0.7)[:, None, None]
    age_chance = np.where(ages > 50, 0.7, 0.3)[:, None, None]
    draws = rng.uniform(size=(count, MAP_SIZE, MAP_SIZE))
    top = np.where(draws < level_chance, 1, 2)
    bottom = np.where(draws < age_chance, 3, 4)
    maps = np.concatenate([top[:, :4], bottom[:, 4:]], axis=1)
    prior = prior_trained_on(maps, {"slice_position": levels, "age": ages}, batch_size=64)
    asked = {"slice_position": 0.0, "age": 80.0}

    def shares(guidance) -> tuple[float, float]:
        drawn = sample_code_maps(prior, 128, seed=1, conditions=asked, guidance=guidance)
        return (drawn[:, :4] == 1).mean(), (drawn[:, 4:] == 3).mean()

    plain_level, plain_age = shares(1.0)
    assert 0.6 < plain_level < 0.8 and 0.6 < plain_age < 0.8
    level, age = shares({"slice_position": 1.0, "age": 3.0})
    assert age > plain_age + 0.1 and abs(level - plain_level) < 0.05
    level, age = shares({"slice_position": 3.0, "age": 1.0})
    assert level > plain_level + 0.1 and abs(age - plain_age) < 0.05


@pytest.mark.parametrize(
    ("guidance", "message"),
    [
        (-0.5, r"guidance must be a finite number >= 0"),
        (float("nan"), r"guidance must be a finite number >= 0"),
        (float("inf"), r"guidance must be a finite number >= 0"),
        ({"age": -1.0}, r"guidance for age must be a finite number >= 0"),
        ({"age": "3"}, r"guidance for age must be a number, got '3'"),
        ({"previous_slice": 2.0}, r"guidance for 'previous_slice': only slice_position, age"),
        ({"brain": 2.0}, r"guidance for 'brain': only slice_position, age, sex, cdr"),
    ],
)
def test_bad_guidance_is_refused(guidance, message):
    with pytest.raises(ValueError, match=message):
        sample_code_maps(tiny_conditional_prior(), 2, guidance=guidance)


def test_guidance_sharpens_a_weak_condition():
    """Level-0 maps hold code 1 on 70 % of their positions (code 2 elsewhere), level-1 maps on
    30 %, independently: the trained prior gives about 70 % code 1 when asked for level 0, and
    guidance w = 3 pushes that further, towards p_ref(1) (p(1 | level 0) / p_ref(1))^3. (The
    reference infers the level from the codes drawn so far, so the push fades along a map.)"""
    rng = np.random.default_rng(0)
    count = 512
    levels = np.repeat([0.0, 1.0], count // 2)
    chance = np.where(levels > 0, 0.3, 0.7)[:, None, None]
    maps = np.where(rng.uniform(size=(count, MAP_SIZE, MAP_SIZE)) < chance, 1, 2)
    prior = prior_trained_on_levels(maps, levels, batch_size=64)
    asked = {"slice_position": 0.0}
    plain = (sample_code_maps(prior, 64, seed=1, conditions=asked) == 1).mean()
    guided = (sample_code_maps(prior, 64, seed=1, conditions=asked, guidance=3.0) == 1).mean()
    assert 0.6 < plain < 0.8
    assert guided > plain + 0.03


def test_training_hides_whole_maps_and_single_conditions_and_blurs_the_slice_below():
    """With p = condition_dropout = 0.25 and q = previous_slice_dropout = 0.5: about p of the
    maps lose every condition, and of the others each scalar condition is hidden with p and
    the slice below with q; about `previous_slice_noise` of the slice-below codes are replaced
    (by a random code, itself equal to the old one 1 time in 8)."""
    prior = tiny_conditional_prior(previous_slice_dropout=0.5)
    count = 4000
    inputs = {name: np.asarray(value) for name, value in some_conditions(count).items()}
    hidden = prior._hide_conditions(inputs)
    known = np.asarray(hidden["known"])  # columns: level, age, sex, CDR, the slice below
    nothing_known = (known == 0).all(axis=1).mean()
    # all hidden: p + (1 - p) p^4 q
    assert nothing_known == pytest.approx(0.25 + 0.75 * 0.25**4 * 0.5, abs=0.03)
    # a scalar hidden: p + (1 - p) p; the slice below: p + (1 - p) q
    assert (known[:, :4] == 0).mean() == pytest.approx(0.25 + 0.75 * 0.25, abs=0.02)
    assert (known[:, 4] == 0).mean() == pytest.approx(0.25 + 0.75 * 0.5, abs=0.03)
    changed = (np.asarray(hidden["previous"]) != inputs["previous"]).mean()
    assert changed == pytest.approx(0.25 * 7 / 8, abs=0.02)
    np.testing.assert_array_equal(hidden["values"], inputs["values"])


def test_training_reads_the_prior_s_own_maps_blurred_and_predicts_them_clean(tmp_path, monkeypatch):
    """With r = `prior_input_noise` = 0.25 the maps the prior reads in training have about
    r (K - 1) / K of their codes replaced (a random code is the old one 1 time in K), while its
    loss is taken against the clean maps; evaluated (training=False) it reads them clean, and
    saved, it reloads and draws the same maps."""
    count = 2000
    inputs = {name: np.asarray(value) for name, value in some_conditions(count).items()}
    clean = np.random.default_rng(3).integers(0, CODES, (count, MAP_SIZE, MAP_SIZE))
    inputs["codes"] = clean.astype("int32")
    prior = tiny_conditional_prior(prior_input_noise=0.25)
    read, targets = [], []
    features = prior.code_features
    monkeypatch.setattr(prior, "code_features", lambda codes: features(read.append(codes) or codes))
    scored = prior_module.cross_entropy_and_accuracy
    monkeypatch.setattr(
        prior_module,
        "cross_entropy_and_accuracy",
        lambda maps, logits: scored(targets.append(maps) or maps, logits),
    )
    for training in (True, False):
        prior._loss_and_accuracy(inputs, training=training)
    blurred, evaluated = (np.asarray(codes) for codes in read)
    assert (blurred != clean).mean() == pytest.approx(0.25 * (CODES - 1) / CODES, abs=0.01)
    np.testing.assert_array_equal(evaluated, clean)
    for maps in targets:
        np.testing.assert_array_equal(np.asarray(maps), clean)
    monkeypatch.undo()
    prior.save(tmp_path / "prior.keras")
    loaded = keras.saving.load_model(tmp_path / "prior.keras")
    assert loaded.hyperparameters.prior_input_noise == 0.25
    asked = {"slice_position": 0.4, "previous_slice": inputs["previous"][:2]}
    np.testing.assert_array_equal(
        sample_code_maps(prior, 2, seed=3, conditions=asked),
        sample_code_maps(loaded, 2, seed=3, conditions=asked),
    )
