"""The five SR-MCR cues (DESIGN.md, "The five cues"): a pure function and a Metric each."""

from __future__ import annotations

from typing import Literal, get_args

from srmcr.cues.base import Cue, TextCue
from srmcr.cues.lexical_fidelity import LexicalFidelity, lexical_fidelity
from srmcr.cues.non_redundancy import NonRedundancy, non_redundancy
from srmcr.cues.semantic_alignment import SemanticAlignment, semantic_alignment
from srmcr.cues.step_consistency import StepConsistency, step_consistency
from srmcr.cues.visual_grounding import VisualGrounding, visual_grounding

CueName = Literal["semantic_alignment", "lexical_fidelity", "non_redundancy",
                  "visual_grounding", "step_consistency"]

CUE_NAMES: tuple[CueName, ...] = get_args(CueName)  # DESIGN.md's order
# name -> class; the reward builds its cues from these names.
CUES: dict[str, type[Cue]] = {cls.name: cls for cls in (
    SemanticAlignment, LexicalFidelity, NonRedundancy, VisualGrounding, StepConsistency)}
assert set(CUES) == set(CUE_NAMES), "every CueName needs exactly one cue class"

__all__ = [
    "CUES", "CUE_NAMES", "Cue", "CueName", "LexicalFidelity", "NonRedundancy",
    "SemanticAlignment", "StepConsistency", "TextCue", "VisualGrounding", "lexical_fidelity",
    "non_redundancy", "semantic_alignment", "step_consistency", "visual_grounding",
]
