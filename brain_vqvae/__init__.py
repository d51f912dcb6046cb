"""The library behind the card's scripts: data, model, training, generation and evaluation.

See ARCHITECTURE.md for what each module owns and which may import which. Importing any part
of the package first sets TensorFlow's environment, once, before TensorFlow starts:

- TF_CPP_MIN_LOG_LEVEL=2 keeps TensorFlow's C++ info and warning logs off the console;
- TF_ENABLE_ONEDNN_OPTS=1 turns oneDNN's CPU kernels on. On Linux TensorFlow enables them by
  default only on CPUs with VNNI, AVX512_BF16 or AMX (tensorflow/core/util/port.cc); on plain
  AVX2 CPUs they still make a VQ-VAE training step much faster (bench/throughput.py,
  BENCHMARKS.md). Set it to 0 to turn them off.

A value the user has already set is kept. TensorFlow's shared libraries also print start-up
notices that no setting turns off ("All log messages before absl::InitializeLog() ...", the
oneDNN and "Could not find cuda drivers" lines, once per library, and on a machine without a
GPU "failed call to cuInit ... (303)"); while TensorFlow is first imported (by whichever module
imports it, Keras included) and looks for its devices, what it writes to the standard error
stream is held back and written out again without those lines.
"""

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

_START_UP_NOTICES = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|I0000 [^\]]* (port\.cc|cudart_stub\.cc|cpu_feature_guard\.cc):\d+\]"
    rb"|E0000 [^\]]* cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\))"
)


@contextmanager
def _start_up_notices_dropped():
    """Hold back what is written to file descriptor 2, then write it out without the lines
    `_START_UP_NOTICES` matches (the C++ libraries write there directly, not via sys.stderr)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held if not _START_UP_NOTICES.match(line)]
            if kept:
                sys.stderr.buffer.write(b"".join(kept))
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, and runs its first import inside `_start_up_notices_dropped`."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with _start_up_notices_dropped():
                execute(module)
                # Looking for devices loads CUDA, which on a machine without a GPU logs a
                # failed cuInit (error 303). It does not fix the logical devices, which may
                # still be configured afterwards.
                module.config.list_physical_devices()

        spec.loader.exec_module = exec_module
        return spec


if "tensorflow" not in sys.modules and not any(
    isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
