"""The library behind the card's scripts: data, model, training, generation and evaluation.

See ARCHITECTURE.md for what each module owns and which may import which. Importing any part
of the package first sets TensorFlow's environment, once, before TensorFlow starts:

- TF_CPP_MIN_LOG_LEVEL=2 keeps TensorFlow's C++ start-up notices off the console;
- TF_ENABLE_ONEDNN_OPTS=1 turns oneDNN's CPU kernels on. On Linux TensorFlow enables them by
  default only on CPUs with VNNI, AVX512_BF16 or AMX (tensorflow/core/util/port.cc); on plain
  AVX2 CPUs they still halve a VQ-VAE training step (bench/throughput.py). Set it to 0 to turn
  them off.

A value the user has already set is kept.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
