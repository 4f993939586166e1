"""The cues: one file each, a pure function on top and its ``Cue`` below.

Importing the package imports every module in it, and each cue class registers itself under its
``name`` (``CUES``), so a new cue is one new file: ``reward.cues`` accepts its name at once.
The five SR-MCR cues (``CUE_NAMES``) are the default; the cues of neighbouring label-free
methods (see configs/recipes/) are enabled only when configured.
"""

from __future__ import annotations

import importlib
import pkgutil

from srmcr.cues.base import CUES, Cue, CueInputs, ScoreMean, TextCue

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# SR-MCR's five cues; the reward's default adds answer_support (srmcr.reward.DEFAULT_CUES).
CUE_NAMES: tuple[str, ...] = ("semantic_alignment", "lexical_fidelity", "non_redundancy",
                              "visual_grounding", "step_consistency")

__all__ = ["CUES", "CUE_NAMES", "Cue", "CueInputs", "ScoreMean", "TextCue"]
