"""Run a script of the project as on a machine without TensorFlow (the GPU machine has only JAX):

    KERAS_BACKEND=jax python tests/without_tensorflow.py SCRIPT [ARGS...]

runs SCRIPT with ARGS from the repository root, every import of `tensorflow` refused with
ImportError, as where it is not installed.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from pathlib import Path


class RefuseTensorFlow(importlib.abc.MetaPathFinder):
    """An import hook that refuses `tensorflow` and its submodules."""

    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"No module named {name!r} (refused by {Path(__file__).name})")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, RefuseTensorFlow())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
