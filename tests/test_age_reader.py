"""The age reader: it reads an age that the anatomy shows, in new people, and refuses what it
cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from brain_vqvae.age_reader import READ_LEVELS, AgeReader, readable_levels, tissue_features

SIZE = 64


def ageing_slices(ages: np.ndarray, positions: np.ndarray, seed: int) -> np.ndarray:
    """(N, 64, 64) in [0, 1]: a disc of brain (0.75, a darker rim of cortex) that shrinks with age
    (radius 26 pixels at 20 years to 22 at 90) around a dark ventricle that widens with it
    (radius 3 to 9), both smaller away from the middle level, at a random centre and scanner
    gain (0.6-1.0), over noise; the background is 0."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:SIZE, 0:SIZE]
    slices = []
    for age, position in zip(ages, positions, strict=True):
        ageing = (age - 20.0) / 70.0
        level = 1.0 - abs(position - 0.5)
        brain_radius = (26.0 - 4.0 * ageing) * level
        ventricle_radius = (3.0 + 6.0 * ageing) * level
        centre = rng.uniform(28, 36, size=2)
        distance = np.hypot(rows - centre[0], columns - centre[1])
        image = np.where(distance < brain_radius, 0.75, 0.0)
        image = np.where((distance > brain_radius - 4) & (distance < brain_radius), 0.5, image)
        image = np.where(distance < ventricle_radius, 0.2, image)
        image = image * rng.uniform(0.6, 1.0) + (image > 0) * rng.normal(0, 0.02, image.shape)
        slices.append(np.clip(image, 0, 1))
    return np.stack(slices).astype(np.float32)


def people(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(20, 90, count), rng.uniform(*READ_LEVELS, count)


def test_the_reader_reads_the_age_of_people_it_never_saw():
    ages, positions = people(120, seed=0)
    reader = AgeReader.fit(ageing_slices(ages, positions, seed=1), positions, ages)
    new_ages, new_positions = people(60, seed=2)
    read = reader.predict(ageing_slices(new_ages, new_positions, seed=3), new_positions)
    assert read.shape == (60,) and read.dtype == np.float64
    assert np.corrcoef(new_ages, read)[0, 1] > 0.9
    assert np.mean(np.abs(read - new_ages)) < 10.0


def test_the_features_do_not_depend_on_the_scanner_gain():
    # Halving is exact in floating point, and keeps every brain pixel above the brain level.
    ages, positions = people(4, seed=4)
    slices = ageing_slices(ages, positions, seed=5)
    np.testing.assert_allclose(
        tissue_features(0.5 * slices, positions), tissue_features(slices, positions), atol=1e-9
    )
    assert (
        tissue_features(slices[..., None], positions).shape
        == tissue_features(slices, positions).shape
    )


def test_slices_out_of_the_levels_and_of_unknown_age_are_left_out_of_training():
    ages, positions = people(40, seed=6)
    slices = ageing_slices(ages, positions, seed=7)
    unread = ageing_slices(np.full(10, 20.0), np.full(10, 0.5), seed=8)
    # Ten more slices the reader must ignore: at the lowest level, or of unknown age, and
    # labelled with an age their anatomy contradicts.
    with_ignored = AgeReader.fit(
        np.concatenate([slices, unread]),
        np.concatenate([positions, np.full(5, 0.05), np.full(5, 0.5)]),
        np.concatenate([ages, np.full(5, 90.0), np.full(5, np.nan)]),
    )
    alone = AgeReader.fit(slices, positions, ages)
    np.testing.assert_allclose(
        with_ignored.predict(slices, positions), alone.predict(slices, positions)
    )


def people_of_several_slices(count: int, slices: int, seed: int):
    """(ages, positions, people) of `count` people with `slices` slices each."""
    ages, _ = people(count, seed)
    positions = np.random.default_rng(seed + 1).uniform(*READ_LEVELS, count * slices)
    return np.repeat(ages, slices), positions, np.repeat(np.arange(count), slices)


def test_cross_validation_reads_each_person_by_a_reader_that_never_saw_them():
    ages, positions, persons = people_of_several_slices(24, 5, seed=11)
    slices = ageing_slices(ages, positions, seed=12)
    truth, reads = AgeReader.cross_validate(slices, positions, ages, persons)
    np.testing.assert_array_equal(truth, ages)
    assert np.corrcoef(truth, reads)[0, 1] > 0.9
    # Each person's anatomy labelled with another person's age: what the slices show says
    # nothing of the label, and readers that never saw the person read nothing of it.
    shuffled = np.repeat(np.random.default_rng(13).permutation(ages[::5]), 5)
    _, reads = AgeReader.cross_validate(slices, positions, shuffled, persons)
    assert np.corrcoef(shuffled, reads)[0, 1] < 0.3
    with pytest.raises(ValueError, match="at least 8 people, got 6"):
        AgeReader.cross_validate(slices[:30], positions[:30], ages[:30], persons[:30])
    with pytest.raises(ValueError, match="people has 3 values for 120 images"):
        AgeReader.cross_validate(slices, positions, ages, persons[:3])


def test_bad_input_is_refused_with_what_is_wrong():
    ages, positions = people(12, seed=9)
    slices = ageing_slices(ages, positions, seed=10)
    reader = AgeReader.fit(slices, positions, ages)
    with pytest.raises(ValueError, match="levels 0.25-0.75 only"):
        reader.predict(slices[:2], np.array([0.5, 0.9]))
    with pytest.raises(ValueError, match="positions has 3 values for 12 images"):
        reader.predict(slices, positions[:3])
    with pytest.raises(ValueError, match="at least 8 slices of known age"):
        AgeReader.fit(slices, np.full(12, 0.1), ages)
    with pytest.raises(ValueError, match="different ages"):
        AgeReader.fit(slices, positions, np.full(12, 50.0))
    with pytest.raises(ValueError, match=r"shaped \(N, S, S\)"):
        reader.predict(slices[:, :, :10], positions)
    assert readable_levels(np.array([0.2, 0.25, 0.75, 0.8])).tolist() == [
        False,
        True,
        True,
        False,
    ]


def test_a_slice_unlike_any_it_trained_on_reads_within_the_ages_it_saw():
    ages, positions = people(60, seed=11)
    reader = AgeReader.fit(ageing_slices(ages, positions, seed=12), positions, ages)
    # Anatomy past the oldest (ventricles wider, brains smaller than any seen) and before the
    # youngest (no ventricle at all): read at the oldest and the youngest age seen, not beyond.
    strange_ages, strange_positions = np.array([110.0, 120.0, -20.0]), np.full(3, 0.5)
    read = reader.predict(
        ageing_slices(strange_ages, strange_positions, seed=13), strange_positions
    )
    np.testing.assert_allclose(read, [ages.max(), ages.max(), ages.min()])
