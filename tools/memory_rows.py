"""Memory that scales with a step's N = B * G rows and a group's G^2 pairs (``tools.memory``):
the rollout, the sampled tokens, the generation chunks' prompts and rows, the sentence
embeddings, the pairwise group statistics."""

from __future__ import annotations

from collections import Counter

ENCODER_DIM = 384  # all-MiniLM-L6-v2's embedding width
TEXTS_PER_COMPLETION = 18  # what the text cues encode: the reasoning, the answer, <= 16 steps
# Per pair of a group's completions, what the (B, G, G) tensors of one statistic hold at once:
VOTE_BYTES = 9  # answer agreement's votes: the bool matches, and the int64 copy that sum makes
AUC_BYTES = 25  # the within-group AUC: differences, wins and the masked wins (float64), pairs



def rollout_bytes(rows: int, p: int, t: int) -> float:
    """What a rollout keeps from sampling to the loss pass: (N, P) prompt ids, mask and image
    token types and (N, T) completion ids, mask and answer mask, int64; (N, T) log-probs and
    confidences at T = 1, and up to four more (N, T) fp32 passes (the blank image, the reference
    at T and at 1, the old policy), fp32; the (3, N, P + T) mrope positions, int64."""
    return rows * (3 * p * 8 + 3 * t * 8 + 6 * t * 4 + 3 * (p + t) * 8)


def sampled_tokens_bytes(rows: int, p: int, t: int) -> float:
    """``generate``'s outputs of every chunk until the rollout is assembled: each row's prompt
    and completion ids (int64; the completion is a view of it) and two fp32 values per sampled
    token (log-prob, confidence)."""
    return rows * ((p + t) * 8 + 2 * t * 4)


def generation_chunks(rows: int, chunk: int, group_size: int) -> tuple[int, int]:
    """The most distinct prompts, and the most row slots (prompts x their most rows), in a
    generation chunk of ``chunk`` consecutive rows out of ``rows``."""
    chunks = [Counter(r // group_size for r in range(a, min(a + chunk, rows)))
              for a in range(0, rows, chunk)]
    return max(map(len, chunks)), max(len(c) * max(c.values()) for c in chunks)


def embeddings_bytes(rows: int) -> float:
    """The sentence embeddings of one step's texts (the encoder's per-step cache), fp32."""
    return rows * TEXTS_PER_COMPLETION * ENCODER_DIM * 4


def pairwise_bytes(groups: int, group_size: int, per_pair: float) -> float:
    """Statistics over every pair of a group's completions: (B, G, G) tensors, B * G^2 pairs."""
    return groups * group_size ** 2 * per_pair
