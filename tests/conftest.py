"""Test-wide settings: nothing may reach the network, and runs are deterministic and small."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# The tiny models gain nothing from a second thread, and OpenMP spin-waits cost a lot on shared
# cores (measured: generation 10-100x slower with 2 threads while another process runs).
torch.set_num_threads(1)
