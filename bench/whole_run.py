"""A whole VQ-VAE training run of ours against the plain reference script, process against
process, start-up and data loading included.

    python -m bench.whole_run [--data data/demo] [--epochs 3] [--repeats 3] [--quick] [--json PATH]

The two contestants, each a fresh Python process started the way its user starts it, in the
project folder, on the same PNG tree (`--data`, by default the demo set that `python dataset.py
demo --out data/demo` builds):
  ours       `python train.py --data TREE --stage vqvae --epochs-vqvae E --out RUN --overwrite`:
             the card preset as shipped (batch 32, SSIM + L1 loss, cosine decay) and all that the
             stage does: reading the slices (through the slice cache, ~/.cache/brain-vqvae unless
             BRAIN_VQVAE_CACHE says otherwise: the first run on a new tree fills it), training
             with validation and checkpoints, encoding, the test report. RUN is a new temporary
             folder for every run, deleted after it.
  reference  `python -m bench.reference --data TREE --epochs E --batch-size 64`: the keras-io
             style script (bench/reference.py): Pillow reads the training PNGs into one NumPy
             array, `fit` at batch 64 with the example's MSE loss, nothing else.
Both inherit this process's environment unchanged; ours' package sets TF_ENABLE_ONEDNN_OPTS=1
when it is not set, the reference leaves oneDNN to TensorFlow. Whether oneDNN is on is read,
once and untimed, in a probe process started like each contestant (TensorFlow imported after
`brain_vqvae` for ours, plainly for the reference): the switch is fixed by the environment and
the CPU when TensorFlow starts, so it is the contestant's too.

How it is timed. The two run one after the other, never together, `--repeats` rounds of one
run each, the order alternated every round (`common.interleaved_rounds`), so both share the
machine's load of the same minutes. Each run's output (Keras' progress bars included) goes to a
log file, the same for both. Per run: wall seconds of the whole process (`time.perf_counter`
around `subprocess.run`) and CPU seconds (user + system of the process and its threads, from
`resource.getrusage(RUSAGE_CHILDREN)` before and after). Per contestant the table gives the
median of each with its range; then the median over the rounds of ours / reference, in wall and
in CPU time (below 1: ours is faster). When ours' metrics.json has "seconds" (phase name -> wall
seconds), the median of each phase is printed too, with "start-up and the rest" = the process's
wall seconds - the phases' sum. `--quick`: 1 epoch, 1 round (still whole processes).

Per-image training cost at equal batch and loss is `python -m bench.throughput --arms
"ours, MSE loss"`, epoch by epoch inside warm processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench.common import (
    DEMO_DATA_DIR,
    PROJECT_DIR,
    add_common_arguments,
    describe_machine,
    interleaved_rounds,
    machine_summary,
    median,
    median_speedup,
    print_table,
    write_json,
)

REFERENCE_BATCH_SIZE = 64  # the plain script's
STARTUP_AND_REST = "start-up and the rest"
ONEDNN_PROBES = {  # Python run in a probe process started like each contestant
    "ours": "import brain_vqvae; from bench.common import onednn_enabled; print(onednn_enabled())",
    "reference": "from bench.common import onednn_enabled; print(onednn_enabled())",
}
LOG_TAIL_LINES = 30


def ours_command(data: Path, epochs: int, run_folder: Path) -> list[str]:
    """The command line of ours: the card's VQ-VAE stage of `train.py` into `run_folder`."""
    return [
        sys.executable,
        "train.py",
        "--data",
        str(data),
        "--stage",
        "vqvae",
        "--epochs-vqvae",
        str(epochs),
        "--out",
        str(run_folder),
        "--overwrite",
    ]


def reference_command(data: Path, epochs: int) -> list[str]:
    """The command line of the plain reference script at the issue's batch of 64."""
    return [
        sys.executable,
        "-m",
        "bench.reference",
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(REFERENCE_BATCH_SIZE),
    ]


# ------------------------------------------------------------------------------ running


def run_process(command: list[str], log: Path) -> dict:
    """Run `command` in the project folder with its output in `log`; returns {"wall": seconds
    of the process, "cpu": its user + system seconds}. Raises `RuntimeError` with the end of the
    log when it fails. Only one child may run at a time (its CPU time is the change in
    RUSAGE_CHILDREN, which sums every child waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as output:
        start = time.perf_counter()
        finished = subprocess.run(
            command, cwd=PROJECT_DIR, stdout=output, stderr=subprocess.STDOUT, check=False
        )
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(f"{' '.join(command)} ended with code {finished.returncode}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def run_ours(data: Path, epochs: int, scratch: Path) -> dict:
    """One `train.py --stage vqvae` run into a new run folder, deleted after; `run_process`'s
    result plus "phases", its metrics.json's "seconds" (None where it has none)."""
    with tempfile.TemporaryDirectory(prefix="run-", dir=scratch) as folder:
        run_folder = Path(folder) / "run"
        result = run_process(ours_command(data, epochs, run_folder), scratch / "ours.log")
        metrics = json.loads((run_folder / "metrics.json").read_text())
    return {**result, "phases": metrics.get("seconds")}


def run_reference(data: Path, epochs: int, scratch: Path) -> dict:
    """One run of the plain reference script; `run_process`'s result."""
    return run_process(reference_command(data, epochs), scratch / "reference.log")


def probe_onednn(arm: str) -> bool:
    """Whether TensorFlow runs its oneDNN kernels in a process started like `arm`'s."""
    probe = subprocess.run(
        [sys.executable, "-c", ONEDNN_PROBES[arm]],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip().splitlines()[-1] == "True"


def run_rounds(data: Path, epochs: int, repeats: int) -> dict[str, list[dict]]:
    """{"ours": [...], "reference": [...]}: each contestant's runs, one per round, interleaved
    with the order alternated every round."""
    contestants = {"ours": run_ours, "reference": run_reference}
    runs = {name: [] for name in contestants}
    with tempfile.TemporaryDirectory(prefix="brain-vqvae-whole-run-") as scratch:

        def run_one(name: str, round_index: int) -> None:
            runs[name].append(contestants[name](data, epochs, Path(scratch)))
            seconds = runs[name][-1]["wall"]
            print(f"round {round_index + 1}/{repeats}: {name} {seconds:.1f} s", file=sys.stderr)

        # interleaved_rounds' own timings also count the run folder's set-up and removal; the
        # process's own, from `run_process`, are kept instead.
        interleaved_rounds({name: partial(run_one, name) for name in contestants}, repeats)
    return runs


# ------------------------------------------------------------------------------ numbers


def spread(values: list[float]) -> str:
    """The range of `values` as "min-max", one decimal each."""
    return f"{min(values):.1f}-{max(values):.1f}"


def summarise(runs: dict[str, list[dict]]) -> dict:
    """The numbers of `run_rounds`' runs.

    Returns:
      rows: per contestant, "arm", "wall_s" and "cpu_s" (medians over the rounds) and
        "wall_range", "cpu_range" (min-max);
      wall_ratio, cpu_ratio: the median over the rounds of ours' / the reference's seconds in
        the same round (below 1: ours is faster);
      phases: [{"phase", "seconds"}], the median of each phase of ours' metrics.json "seconds"
        and of STARTUP_AND_REST = process wall - the phases' sum; [] when a run has no phases.
    """
    rows = []
    for arm, arm_runs in runs.items():
        walls = [run["wall"] for run in arm_runs]
        cpus = [run["cpu"] for run in arm_runs]
        rows.append(
            {
                "arm": arm,
                "wall_s": median(walls),
                "wall_range": spread(walls),
                "cpu_s": median(cpus),
                "cpu_range": spread(cpus),
            }
        )
    ours, reference = runs["ours"], runs["reference"]
    # median_speedup(a, b) is the median of a / b over the rounds: here ours / reference.
    ratios = {
        f"{kind}_ratio": median_speedup(
            [run[kind] for run in ours], [run[kind] for run in reference]
        )
        for kind in ("wall", "cpu")
    }
    return {"rows": rows, **ratios, "phases": phase_rows(ours)}


def phase_rows(runs: list[dict]) -> list[dict]:
    """Median seconds of each phase of `runs` (ours), in the first run's order, then of
    STARTUP_AND_REST; [] when any run lacks phases."""
    if not runs or not all(run.get("phases") for run in runs):
        return []
    rows = [
        {"phase": phase, "seconds": median([run["phases"].get(phase, 0.0) for run in runs])}
        for phase in runs[0]["phases"]
    ]
    rest = [run["wall"] - sum(run["phases"].values()) for run in runs]
    return [*rows, {"phase": STARTUP_AND_REST, "seconds": median(rest)}]


COLUMNS = (
    ("arm", "contestant", "<"),
    ("onednn", "oneDNN", ""),
    ("wall_s", "wall s", ".1f"),
    ("wall_range", "range", ""),
    ("cpu_s", "CPU s", ".1f"),
    ("cpu_range", "range", ""),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEMO_DATA_DIR, help="a PNG tree")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of every run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (runs per contestant)")
    add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.quick:
        arguments.epochs, arguments.repeats = 1, 1
    data = arguments.data.resolve()
    training_slices = len(list((data / "keras_png_slices_train").glob("*.png")))
    if not training_slices:
        raise SystemExit(
            f"{data}: no keras_png_slices_train/*.png; build the demo set first with "
            "`python dataset.py demo --out data/demo`"
        )
    machine = machine_summary()
    print(describe_machine(machine))
    onednn = {arm: probe_onednn(arm) for arm in ONEDNN_PROBES}
    runs = run_rounds(data, arguments.epochs, arguments.repeats)
    summary = summarise(runs)
    for row in summary["rows"]:
        row["onednn"] = "on" if onednn[row["arm"]] else "off"
    print(
        f"\nwhole processes, {arguments.epochs} epoch(s) of {training_slices} training slices "
        f"({data}); median of {arguments.repeats} round(s), interleaved"
    )
    print_table(summary["rows"], COLUMNS)
    print(
        f"ours / reference (median over rounds): wall {summary['wall_ratio']:.2f}, "
        f"CPU {summary['cpu_ratio']:.2f}"
    )
    if summary["phases"]:
        print('\nours, by phase (metrics.json "seconds", median):')
        print_table(summary["phases"], (("phase", "phase", "<"), ("seconds", "s", ".1f")))
    write_json(
        arguments.json,
        {
            "machine": machine,
            "settings": {
                "data": str(data),
                "training_slices": training_slices,
                "epochs": arguments.epochs,
                "repeats": arguments.repeats,
                "ours": ours_command(data, arguments.epochs, Path("RUN")),
                "reference": reference_command(data, arguments.epochs),
            },
            "onednn": onednn,
            "runs": runs,
            **summary,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
