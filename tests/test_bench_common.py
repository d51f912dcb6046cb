"""The benchmarks' shared helpers (bench/common.py): the OASIS-shaped tree and the table."""

from __future__ import annotations

from bench import common
from dataset import load_slices


def test_split_sizes_are_oasis_in_whole_cases():
    assert common.split_sizes() == {"train": 9664, "validate": 1120, "test": 544}
    assert common.split_sizes(1 / 16) == {"train": 608, "validate": 64, "test": 32}
    assert all(size % 32 == 0 for size in common.split_sizes(0.001).values())


def test_tree_loads_with_its_sizes_and_is_reused(tiny_png_tree, tmp_path):
    scale = 1 / 302  # one case of 32 slices per split
    tree = common.build_oasis_tree(tmp_path / "tree", scale, source=tiny_png_tree)
    slices = load_slices(tree, image_size=32, cache_dir=tmp_path / "cache")
    assert {split: len(s) for split, s in slices.splits.items()} == common.split_sizes(scale)
    assert sorted(slices.splits["validate"].slice_indices) == list(range(32))
    first = next((tree / "keras_png_slices_train").iterdir()).stat().st_ino
    common.build_oasis_tree(tree, scale, source=tiny_png_tree)
    assert next((tree / "keras_png_slices_train").iterdir()).stat().st_ino == first


def test_print_table_aligns_and_shows_missing_values(capsys):
    common.print_table(
        [{"name": "a", "value": 1.234}, {"name": "longer", "value": None}],
        [("name", "name", "<"), ("value", "value", ".1f")],
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["name    value", "a         1.2", "longer      -"]


def test_interleaved_rounds_alternate_the_order_and_time_every_call():
    order = []
    calls = {name: (lambda index, name=name: order.append((index, name))) for name in "ab"}
    rounds = common.interleaved_rounds(calls, repeats=3)
    assert order == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert [len(seconds) for seconds in rounds.values()] == [3, 3]
    assert all(second >= 0 for seconds in rounds.values() for second in seconds)
    assert common.median_speedup([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_generation_targets_are_judged_against_their_floors():
    from bench.generation import targets_met

    near = {
        "c2st_reconstructions_vs_samples": 0.58,
        "ms_ssim_samples": 0.52,
        "ms_ssim_real": 0.50,
        "fd_samples": 0.29,
        "fd_real_floor": 0.10,
    }
    assert targets_met(near) == "C2ST diversity FD"
    far = {**near, "c2st_reconstructions_vs_samples": 0.61, "ms_ssim_samples": 0.54}
    assert targets_met({**far, "fd_samples": 0.31}) == "none"


def test_the_device_check_trains_whole_epochs_of_about_the_steps_asked():
    from bench.gpu import epochs_for
    from brain_vqvae.training import steps_per_epoch
    from hyperparameters import preset

    assert epochs_for(300, 8) == 38  # 37.5 epochs, rounded
    assert epochs_for(300, 1024) == 2  # one epoch is enough steps, but two to time one
    batch_32 = preset("card").replace(batch_size=32)
    assert steps_per_epoch(100, batch_32) == 4  # the last batch of 4 is a step too
    assert epochs_for(100, steps_per_epoch(100, batch_32)) == 25


def test_the_whole_run_summary_takes_medians_ratios_by_round_and_the_rest_of_the_phases():
    from bench.whole_run import STARTUP_AND_REST, summarise

    ours = [
        {"wall": 30.0, "cpu": 50.0, "phases": {"load data": 2.0, "vqvae": 20.0}},
        {"wall": 40.0, "cpu": 70.0, "phases": {"load data": 4.0, "vqvae": 30.0}},
        {"wall": 36.0, "cpu": 60.0, "phases": {"load data": 3.0, "vqvae": 25.0}},
    ]
    reference = [
        {"wall": 60.0, "cpu": 100.0},
        {"wall": 40.0, "cpu": 80.0},
        {"wall": 45.0, "cpu": 60.0},
    ]
    summary = summarise({"ours": ours, "reference": reference})
    assert summary["rows"] == [
        {
            "arm": "ours",
            "wall_s": 36.0,
            "wall_range": "30.0-40.0",
            "cpu_s": 60.0,
            "cpu_range": "50.0-70.0",
        },
        {
            "arm": "reference",
            "wall_s": 45.0,
            "wall_range": "40.0-60.0",
            "cpu_s": 80.0,
            "cpu_range": "60.0-100.0",
        },
    ]
    assert summary["wall_ratio"] == 0.8  # rounds: 30/60, 40/40, 36/45
    assert summary["cpu_ratio"] == 0.875  # rounds: 50/100, 70/80, 60/60
    assert summary["phases"] == [
        {"phase": "load data", "seconds": 3.0},
        {"phase": "vqvae", "seconds": 25.0},
        {"phase": STARTUP_AND_REST, "seconds": 8.0},  # rounds: 30 - 22, 40 - 34, 36 - 28
    ]
    ours[1]["phases"] = None  # a metrics.json without "seconds"
    assert summarise({"ours": ours, "reference": reference})["phases"] == []


def _profile(*planes):
    """A stand-in for `jax.profiler.ProfileData`: planes of (name, {line: [(event, ns, stats)]})."""
    from types import SimpleNamespace

    def event(name, nanoseconds, stats):
        return SimpleNamespace(name=name, duration_ns=nanoseconds, stats=list(stats.items()))

    return SimpleNamespace(
        planes=[
            SimpleNamespace(
                name=plane,
                lines=[
                    SimpleNamespace(name=line, events=[event(*item) for item in events])
                    for line, events in lines.items()
                ],
            )
            for plane, lines in planes
        ]
    )


def test_the_device_check_sums_the_device_time_of_each_operation_over_the_streams():
    from bench.gpu import device_time_by_operation

    conv = {"hlo_op": "convolution.3", "tf_op": "encoder/conv"}
    profile = _profile(
        ("/host:CPU", {"tf_XLAEigen": [("fusion.1", 9_000_000, {})]}),
        (
            "/device:GPU:0",
            {
                "Stream #13": [("wgrad_kernel", 3_000_000, conv), ("gemm", 1_000_000, {})],
                "Stream #14": [("wgrad_kernel", 2_000_000, conv)],
                "XLA Ops": [("convolution.3", 5_000_000, {})],  # derived: not counted again
            },
        ),
    )
    summary = device_time_by_operation(profile, steps=2)
    assert summary["ms_per_step"] == 3.0  # 6 ms of kernels over 2 steps; the host not counted
    assert summary["lines"] == {
        "/device:GPU:0 Stream #13": 2.0,
        "/device:GPU:0 Stream #14": 1.0,
        "/device:GPU:0 XLA Ops": 2.5,
    }
    assert summary["operations"] == [
        {"operation": "convolution.3 encoder/conv", "ms_per_step": 2.5, "share": 5 / 6},
        {"operation": "gemm", "ms_per_step": 0.5, "share": 1 / 6},
    ]


def test_the_device_check_reads_xla_operations_on_the_host_without_a_device():
    from bench.gpu import device_time_by_operation

    profile = _profile(
        (
            "/host:CPU",
            {
                "python": [("train_step", 9_000_000, {})],
                "tf_XLAPjRtCpuClient/1": [
                    ("ThunkExecutor::Execute", 4_000_000, {}),
                    ("convolution.6", 3_000_000, {}),
                    ("fusion.2", 1_000_000, {}),
                ],
            },
        )
    )
    operations = device_time_by_operation(profile, steps=1)["operations"]
    assert [operation["operation"] for operation in operations] == ["convolution.6", "fusion.2"]
    assert operations[0]["share"] == 0.75
