"""What the benchmark scripts share: an OASIS-sized PNG tree, the machine's description, timing
statistics, a plain-text table and the JSON output.

The OASIS-sized tree has the layout and the split sizes of the preprocessed OASIS release
(keras_png_slices_data: 9,664 train, 1,120 validate and 544 test slices of 256x256 8-bit grey,
32 slices per case, each with its seg_ mask). Its pictures are the synthetic demo set's
(data/demo, `python dataset.py demo`) hard-linked (or copied) under new case numbers, so the
loader decodes 11,328 real-sized PNG pairs without the real data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
DEMO_DATA_DIR = PROJECT_DIR / "data" / "demo"
BENCH_DIR = Path(tempfile.gettempdir()) / "brain-vqvae-bench"
OASIS_SPLIT_SIZES = {"train": 9664, "validate": 1120, "test": 544}
SLICES_PER_CASE = 32
QUICK_SCALE = 1 / 16  # --quick trees hold 1/16 of the OASIS slices (whole cases)
TREE_MARKER = ".bench_tree.json"


# ------------------------------------------------------------------------------ the tree


def split_sizes(scale: float = 1.0) -> dict[str, int]:
    """Slices per split of a tree `scale` times OASIS's, rounded to whole cases of 32."""
    return {
        split: max(1, round(size * scale / SLICES_PER_CASE)) * SLICES_PER_CASE
        for split, size in OASIS_SPLIT_SIZES.items()
    }


def default_tree(scale: float = 1.0) -> Path:
    """Where the benchmarks keep (and reuse) the tree of this scale, under the temp folder."""
    total = sum(split_sizes(scale).values())
    return BENCH_DIR / f"oasis_tree_{total}"


def build_oasis_tree(root: Path, scale: float = 1.0, source: Path = DEMO_DATA_DIR) -> Path:
    """The six keras_png_slices folders in `root` with `split_sizes(scale)` slices; returns root.

    Split s takes the case_NNN_slice_S.nii.png files of the same split of the `source` PNG
    tree in order, cycling through them, and names them case_CCC_slice_K.nii.png for
    consecutive case numbers CCC (one number range per split, as in OASIS) and K = 0..31; the
    seg_ mask of each source slice comes along when the source has masks. Files are
    hard-linked, or copied where linking fails. A tree already complete at `root` (a marker
    file records its sizes) is reused as it is.
    """
    sizes = split_sizes(scale)
    marker = root / TREE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == sizes:
        return root
    if root.exists():
        shutil.rmtree(root)
    first_case = 1
    for split, size in sizes.items():
        sources = _source_slices(source, split)
        for index in range(size):
            case = first_case + index // SLICES_PER_CASE
            _place(sources[index % len(sources)], root, split, case, index % SLICES_PER_CASE)
        first_case += size // SLICES_PER_CASE
    marker.write_text(json.dumps(sizes))
    return root


def _source_slices(source: Path, split: str) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) of every slice of one split of the source tree, sorted."""
    folder = source / f"keras_png_slices_{split}"
    images = sorted(folder.glob("case_*_slice_*.nii.png"))
    if not images:
        raise FileNotFoundError(
            f"{folder}: no case_NNN_slice_S.nii.png files; build the demo set first with "
            "`python dataset.py demo --out data/demo`"
        )
    masks = source / f"keras_png_slices_seg_{split}"
    pairs = []
    for image in images:
        mask = masks / image.name.replace("case_", "seg_", 1)
        pairs.append((image, mask if mask.is_file() else None))
    return pairs


def _place(pair: tuple[Path, Path | None], root: Path, split: str, case: int, slice_: int):
    image, mask = pair
    name = f"{case:03d}_slice_{slice_}.nii.png"
    _link(image, root / f"keras_png_slices_{split}" / f"case_{name}")
    if mask is not None:
        _link(mask, root / f"keras_png_slices_seg_{split}" / f"seg_{name}")


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


# ---------------------------------------------------------------------- the machine


def cpu_flags() -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (fixed when TF is imported)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def machine_summary() -> dict:
    """CPU model, usable cores, the vector extensions that matter for TF on a CPU, the load
    average when the benchmark started, Keras' backend and devices, the library versions and,
    on TensorFlow, whether this process runs its oneDNN kernels (JAX needs no TensorFlow)."""
    import keras

    flags = cpu_flags()
    devices = keras.distribution.list_devices()
    summary = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": not devices[0].lower().startswith("cpu"),
        "devices": devices,
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
    }
    if summary["backend"] == "tensorflow":
        import tensorflow as tf

        summary |= {"tensorflow": tf.__version__, "onednn_in_this_process": onednn_enabled()}
    else:
        import jax

        summary["jax"] = jax.__version__
    return summary


def describe_machine(machine: dict) -> str:
    load = machine["load_average"]
    backend = machine["backend"]
    version = machine.get("tensorflow") if backend == "tensorflow" else machine.get("jax")
    return (
        f"{machine['cpu']}, {machine['cores']} cores, GPU {'yes' if machine['gpu'] else 'no'}, "
        f"AVX2 {machine['avx2']}, AVX-512 {machine['avx512f']}, "
        f"AVX512_BF16 {machine['avx512_bf16']}; {backend} {version}, "
        f"Keras {machine['keras']}" + (f"; load average at start {load[0]:.1f}" if load else "")
    )


def announce_machine() -> dict:
    """`machine_summary()`, printed with whether oneDNN is on in this process."""
    machine = machine_summary()
    onednn = machine.get("onednn_in_this_process")
    note = "" if onednn is None else f"; oneDNN {'on' if onednn else 'off'}"
    print(f"{describe_machine(machine)}{note}")
    return machine


# ---------------------------------------------------------------------- numbers out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved_rounds(calls: dict[str, Callable[[int], object]], repeats: int) -> dict:
    """Wall seconds of `call(round)` for every named call, over `repeats` rounds that call each
    once, in the given order in even rounds and reversed in odd ones, so that all share the
    machine's load of the same minutes. Returns {name: [seconds per round]}."""
    names = list(calls)
    rounds = {name: [] for name in names}
    for index in range(repeats):
        for name in names if index % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            calls[name](index)
            rounds[name].append(time.perf_counter() - start)
    return rounds


def median_speedup(reference: Sequence[float], seconds: Sequence[float]) -> float:
    """Median over the rounds of reference time / time in the same round."""
    return median([slow / fast for slow, fast in zip(reference, seconds, strict=True)])


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print `rows` as an aligned table; `columns` are (key, header, format spec) triples (a
    spec starting with "<" left-aligns the column), and a missing or None value prints as "-"."""
    cells = [
        ["-" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns]
        for row in rows
    ]
    headers = [header for _, header, _ in columns]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    left = [spec.startswith("<") for _, _, spec in columns]
    for line in [headers, *cells]:
        print(
            "  ".join(
                text.ljust(width) if to_left else text.rjust(width)
                for text, width, to_left in zip(line, widths, left, strict=True)
            ).rstrip()
        )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")


def add_judging_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a bench that judges a run's samples as `similarity.py` does: its data,
    the held-out split, how many samples, their seed, and a JSON file of the reports."""
    parser.add_argument("--data", help="dataset (default: each run's own)")
    parser.add_argument("--split", default="test", help="held-out split to judge against")
    parser.add_argument(
        "--samples",
        type=int,
        help="samples to draw (default: as similarity.py, the split's size, at least 1024)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the full reports here")


def write_json(path: Path | None, payload: dict) -> None:
    """Write `payload` as indented JSON to `path` (nothing when `path` is None)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")
