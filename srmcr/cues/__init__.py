"""The cues: a pure function and a Metric each.

The five SR-MCR cues (DESIGN.md, "The five cues") are the default; the cues of neighbouring
label-free methods (``RecipeCueName``, see configs/recipes/) are enabled only when configured.
"""

from __future__ import annotations

from typing import Literal, get_args

from srmcr.cues.answer_agreement import (
                                         AnswerAgreement,
                                         AnswerSupport,
                                         answer_agreement,
                                         answer_support,
)
from srmcr.cues.answer_certainty import AnswerCertainty, answer_certainty
from srmcr.cues.base import Cue, TextCue
from srmcr.cues.lexical_fidelity import LexicalFidelity, lexical_fidelity
from srmcr.cues.non_redundancy import NonRedundancy, non_redundancy
from srmcr.cues.perception_sufficiency import PerceptionSufficiency, perception_sufficiency
from srmcr.cues.self_certainty import SelfCertainty, self_certainty
from srmcr.cues.self_verification import SelfVerification, self_verification
from srmcr.cues.semantic_alignment import SemanticAlignment, semantic_alignment
from srmcr.cues.step_consistency import StepConsistency, step_consistency
from srmcr.cues.visual_grounding import VisualGrounding, visual_grounding

SRMCRCueName = Literal["semantic_alignment", "lexical_fidelity", "non_redundancy",
                       "visual_grounding", "step_consistency"]
# MM-UPT's majority vote, Vision-SR1's blind re-answer, LaSeR's self-verification,
# Intuitor/EMPO's self-certainty, and this project's answer support (vote share) and answer
# certainty (the policy's probability of its own answer): all label-free.
RecipeCueName = Literal["answer_agreement", "perception_sufficiency", "self_verification",
                        "self_certainty", "answer_support", "answer_certainty"]
CueName = Literal[SRMCRCueName, RecipeCueName]  # every cue the reward accepts

CUE_NAMES: tuple[SRMCRCueName, ...] = get_args(SRMCRCueName)  # the default, DESIGN.md's order
ALL_CUE_NAMES: tuple[CueName, ...] = get_args(CueName)
# name -> class; the reward builds its cues from these names.
CUES: dict[str, type[Cue]] = {cls.name: cls for cls in (
    SemanticAlignment, LexicalFidelity, NonRedundancy, VisualGrounding, StepConsistency,
    AnswerAgreement, PerceptionSufficiency, SelfVerification, SelfCertainty, AnswerSupport,
    AnswerCertainty)}
assert list(CUES) == list(ALL_CUE_NAMES), "every CueName needs exactly one cue class"

__all__ = [
    "ALL_CUE_NAMES", "AnswerAgreement", "AnswerCertainty", "AnswerSupport", "CUES", "CUE_NAMES", "Cue", "CueName", "LexicalFidelity",
    "NonRedundancy", "PerceptionSufficiency", "RecipeCueName", "SRMCRCueName", "SelfCertainty", "SelfVerification",
    "SemanticAlignment", "StepConsistency", "TextCue", "VisualGrounding", "answer_agreement",
    "answer_certainty", "answer_support", "lexical_fidelity", "non_redundancy", "perception_sufficiency", "self_certainty",
    "self_verification",
    "semantic_alignment", "step_consistency", "visual_grounding",
]
