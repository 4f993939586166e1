"""The random state a checkpoint keeps, so a resumed run draws what the uninterrupted one did.

Only tensors and builtins, so the checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def get_state() -> dict:
    """Python's, numpy's, torch's (and CUDA's) random states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Only tensors and builtins, so the checkpoint loads with weights_only=True.
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_state(state: dict) -> None:
    """Restore what ``get_state`` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
