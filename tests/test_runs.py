"""Loading a run folder: every missing or mismatched piece is named."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from brain_vqvae.runs import (
    RunError,
    RunFolder,
    load_run,
    training_data_path,
    write_atomically,
)
from hyperparameters import Hyperparameters


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run, _ = tiny_run
    return shutil.copytree(run, tmp_path / "run")


def test_a_run_loads_with_its_configuration(run_copy, tiny_hyperparameters):
    run = load_run(run_copy)
    resolved = tiny_hyperparameters.replace(prior_conditions="slice_position,previous_slice")
    assert run.hyperparameters == resolved
    assert run.pixelcnn.condition_ranges == {"slice_position": [0.0, 1.0]}
    images = np.zeros((2, 32, 32, 1), np.float32)
    assert run.vqvae(images).shape == (2, 32, 32, 1)
    assert run.pixelcnn(np.zeros((2, 8, 8), np.int32)).shape == (2, 8, 8, 8)


def test_missing_pieces_are_named(run_copy, tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        load_run(tmp_path / "nowhere")
    (run_copy / "pixelcnn.keras").unlink()
    with pytest.raises(RunError, match=r"no pixelcnn\.keras"):
        load_run(run_copy)
    assert load_run(run_copy, prior="skip").pixelcnn is None
    assert load_run(run_copy, prior="optional").pixelcnn is None
    (run_copy / "hyperparameters.json").unlink()
    with pytest.raises(RunError, match=r"hyperparameters\.json is missing"):
        load_run(run_copy)


def test_a_model_from_another_run_is_detected(run_copy):
    path = run_copy / "hyperparameters.json"
    Hyperparameters.load(path).replace(num_embeddings=4).save(path)
    with pytest.raises(RunError, match="num_embeddings.*mixes files"):
        load_run(run_copy)


def test_state_is_written_atomically_and_merged(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    run.write_state("vqvae", epochs_done=2)
    run.write_state("vqvae", best=0.5)
    assert run.read_state() == {"vqvae": {"epochs_done": 2, "best": 0.5}}
    write_atomically(tmp_path / "note.txt", "done")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints", "note.txt"]


def test_the_training_data_is_found_from_the_start_of_a_training(tmp_path):
    folder = RunFolder(tmp_path / "run")
    (folder.path / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match=r"run does not name its training data.*pass --data"):
        training_data_path(folder)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    # a run from before the state named its data: metrics.json's, written when it finished
    folder.metrics.write_text(f'{{"data": "{old}"}}')
    assert training_data_path(folder) == old
    # a training begun since (a stage retrained on other data) names its own in the state,
    # which stage records keep
    folder.record_training_data(new)
    folder.write_state("pixelcnn", epochs_done=1)
    assert folder.read_state() == {"data": str(new), "pixelcnn": {"epochs_done": 1}}
    assert training_data_path(folder) == new
    assert training_data_path(folder, old) == old  # given: that one
    new.rmdir()
    with pytest.raises(RunError, match=f"trained on {re.escape(str(new))}, which does not exist"):
        training_data_path(folder)
