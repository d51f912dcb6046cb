"""Training under `tf.distribute`: two replicas on two logical CPU devices give the losses of one
device (two_replicas.py, in its own process); two worker processes of a local cluster train one
run, which only the chief writes."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_argv

import train
from brain_vqvae import training

HELPER = Path(__file__).with_name("two_replicas.py")
PROJECT_DIR = Path(__file__).resolve().parents[1]
RELATIVE_TOLERANCE = 1e-5  # measured: about 1e-7, float rounding of the split batch


@pytest.fixture(scope="module")
def two_replicas(tiny_hyperparameters, tiny_png_tree, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("two_replicas")
    settings = work / "hyperparameters.json"
    tiny_hyperparameters.save(settings)
    completed = subprocess.run(
        [sys.executable, str(HELPER), str(settings), str(tiny_png_tree), str(work)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "BRAIN_VQVAE_CACHE": str(work / "cache")},
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads((work / "result.json").read_text())


@pytest.mark.parametrize("variant", ["plain", "ema"])
def test_two_replicas_train_like_one_device(two_replicas, variant):
    assert two_replicas["replicas"] == 2
    steps = two_replicas["steps"][variant]
    for name in ("loss", "perplexity"):
        one_device = np.array(steps["one_device"][name])
        mirrored = np.array(steps["mirrored"][name])
        assert len(one_device) == 6 and np.isfinite(one_device).all()
        np.testing.assert_allclose(mirrored, one_device, rtol=RELATIVE_TOLERANCE, err_msg=name)
    assert steps["one_device"]["loss"][-1] < steps["one_device"]["loss"][0]  # it did train
    assert two_replicas["weights_difference"][variant] < 1e-5


def test_a_run_trained_mirrored_resumes_on_one_device(two_replicas):
    assert two_replicas["resumed_epochs"] == [0, 1]


def test_only_the_chief_of_a_cluster_writes_the_run_folder(tmp_path):
    def strategy(task_type, task_id, jobs):
        spec = SimpleNamespace(as_dict=lambda: {job: ["localhost:0"] for job in jobs})
        resolver = SimpleNamespace(task_type=task_type, task_id=task_id, cluster_spec=lambda: spec)
        return SimpleNamespace(cluster_resolver=resolver)

    assert training.is_chief(SimpleNamespace(cluster_resolver=None))
    assert training.is_chief(strategy("worker", 0, ["worker"]))
    assert not training.is_chief(strategy("worker", 1, ["worker"]))
    assert training.is_chief(strategy("chief", 0, ["chief", "worker"]))
    assert not training.is_chief(strategy("worker", 0, ["chief", "worker"]))

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "hyperparameters.json").write_text("{}")
    (out / "checkpoints" / "vqvae_last.keras").write_text("checkpoint")
    (out / "loss.png").write_text("not needed")
    with training.worker_folder(out, strategy("worker", 1, ["worker"])) as scratch:
        assert scratch != out
        assert (scratch / "hyperparameters.json").read_text() == "{}"
        assert (scratch / "checkpoints" / "vqvae_last.keras").read_text() == "checkpoint"
        assert not (scratch / "loss.png").exists()
    assert not scratch.exists()
    with training.worker_folder(out, strategy("worker", 0, ["worker"])) as folder:
        assert folder == out


def test_a_batch_smaller_than_the_replicas_is_refused(tiny_hyperparameters, tmp_path, monkeypatch):
    from conftest import tiny_arguments

    sixteen = SimpleNamespace(
        num_replicas_in_sync=16, scope=contextlib.nullcontext, cluster_resolver=None
    )
    monkeypatch.setattr(training, "make_strategy", lambda name: sixteen)
    arguments = tiny_arguments(tiny_hyperparameters, tmp_path, tmp_path / "run")
    with pytest.raises(training.RunError, match="smaller than the 16 replicas"):
        train.run_training(arguments, verbose=0)
    assert not (tmp_path / "run").exists()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for open_socket in sockets:
        open_socket.bind(("localhost", 0))
    ports = [open_socket.getsockname()[1] for open_socket in sockets]
    for open_socket in sockets:
        open_socket.close()
    return ports


def test_two_workers_of_a_cluster_train_one_run(tiny_hyperparameters, tiny_png_tree, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    short = tiny_hyperparameters.replace(epochs_vqvae=2, epochs_pixelcnn=1)
    argv = [sys.executable, str(PROJECT_DIR / "train.py")]
    argv += tiny_argv(
        short, tiny_png_tree, out, "--strategy", "multiworker", "--cache-dir", str(cache)
    )
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    workers, logs = [], [tmp_path / f"worker_{index}.log" for index in range(2)]
    for index, log in enumerate(logs):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        with open(log, "w") as file:  # files, not pipes: a full pipe would stall the cluster
            workers.append(
                subprocess.Popen(
                    argv,
                    cwd=PROJECT_DIR,
                    env={**os.environ, "TF_CONFIG": json.dumps(task)},
                    stdout=file,
                    stderr=subprocess.STDOUT,
                )
            )
    for worker in workers:
        worker.wait(timeout=900)
    outputs = [log.read_text() for log in logs]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
        assert "--strategy multiworker: 2 replicas" in output
    # Both trained the same models: the same test scores. (Not simply the last lines: a worker
    # still shutting down when the chief has gone may log a failed heartbeat after them.)
    scores = [
        [line for line in output.splitlines() if line.startswith(("test SSIM", "PixelCNN:"))]
        for output in outputs
    ]
    assert len(scores[0]) == 2 and scores[0] == scores[1]
    assert json.loads((out / "metrics.json").read_text())["prior_bits_per_code"] > 0
    with open(out / "history_vqvae.csv") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]
