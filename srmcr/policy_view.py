"""The policy as the model-needing cues see it: two batched, no-grad calls, nothing else.

Most cues read the rollout only. A few ask the policy itself a question about its own completions
(``perception_sufficiency``: answer again without the image; ``self_verification``: is this answer
correct?). Such a cue takes ``policy`` in its ``score`` signature; the module then builds one
``PolicyView`` (``CueInputs.policy``) before the reward scores, and the cue calls the view ONCE
per step for all N completions. The cues own the wording of their questions and the maths of their
scores; the view owns the mechanics (chat template, padding, chunking, generation settings), so the
reward never imports the model and tests replace the view with a counting fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from srmcr.rollout import (
    Rollout,
    SamplingArgs,
    _generation_config,
    end_token_ids,
    eval_mode,
    select_images,
)

_SENTINEL = "\u0000completion\u0000"  # stands for the completion when rendering a follow-up turn


@dataclass
class PolicyView:
    """The policy (LoRA adapter on), its processor and the step's chunk sizes.

    Args:
        model: the policy, as sampled from this step.
        processor: its processor (chat template, tokenizer, image processor).
        sampling: the step's sampling settings (system prompt, generation chunk size).
        micro_batch_size: sequences per forward pass (``grpo.micro_batch_size``).
    """

    model: torch.nn.Module
    processor: object
    sampling: SamplingArgs
    micro_batch_size: int

    @torch.no_grad()
    def generate_without_image(self, user_texts: Sequence[str], system_prompt: str,
                               max_new_tokens: int) -> list[str]:
        """Greedy replies to text-only user turns (no image), one per text, in one batched pass
        (chunked by ``sampling.generation_batch_size``). Special tokens are removed."""
        if not user_texts:
            return []
        processor, tokenizer = self.processor, self.processor.tokenizer
        rendered = [processor.apply_chat_template(
            [{"role": "system", "content": [{"type": "text", "text": system_prompt}]},
             {"role": "user", "content": [{"type": "text", "text": text}]}],
            tokenize=False, add_generation_prompt=True) for text in user_texts]
        device = next(self.model.parameters()).device
        enc = processor(text=rendered, images=None, return_tensors="pt", padding=True).to(device)
        vocab_size = self.model.get_output_embeddings().weight.shape[0]
        # The rollout's end tokens and suppressed tokens, decoded greedily (as in evaluation).
        config = _generation_config(replace(self.sampling, max_new_tokens=max_new_tokens), 1.0,
                                    tokenizer, vocab_size)
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        replies: list[str] = []
        with eval_mode(self.model):
            for start in range(0, len(rendered), self.sampling.generation_batch_size):
                part = slice(start, start + self.sampling.generation_batch_size)
                out = self.model.generate(input_ids=enc["input_ids"][part],
                                          attention_mask=enc["attention_mask"][part],
                                          mm_token_type_ids=enc["mm_token_type_ids"][part],
                                          generation_config=config)
                replies += processor.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                  skip_special_tokens=True)
        return replies

    @torch.no_grad()
    def next_token_logits(self, rollout: Rollout, follow_up: str,
                          words: Sequence[str]) -> Tensor:  # (N, W)
        """Logits (T = 1) of the first token of each word, right after a new user turn
        ``follow_up`` and the assistant header appended to each completion. Same image and
        prompt as the rollout; one forward per ``micro_batch_size`` rows, ``logits_to_keep=1``."""
        word_ids = self._first_tokens(words)
        ids, mask, mm_types = self._follow_up_inputs(rollout, follow_up)
        images = torch.arange(len(rollout), device=ids.device) // rollout.group_size
        parts = []
        for start in range(0, len(rollout), self.micro_batch_size):
            rows = slice(start, start + self.micro_batch_size)
            pixels, grid = select_images(rollout.pixel_values, rollout.image_grid_thw,
                                         images[rows])
            out = self.model(input_ids=ids[rows], attention_mask=mask[rows],
                             mm_token_type_ids=mm_types[rows], pixel_values=pixels,
                             image_grid_thw=grid, logits_to_keep=1, use_cache=False)
            parts.append(out.logits[:, -1, word_ids].float())
        return torch.cat(parts) if parts else torch.zeros(0, len(word_ids))

    def _first_tokens(self, words: Sequence[str]) -> list[int]:
        # Qwen's vocabulary has "Yes" and "No" as single tokens; elsewhere the first token decides.
        ids = [self.processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the words {list(words)} share a first token: cannot tell them apart")
        return ids

    def _follow_up_inputs(self, rollout: Rollout,
                          follow_up: str) -> tuple[Tensor, Tensor, Tensor]:  # 3 × (N, L)
        """prompt + completion (without its end token) + the follow-up turn, left-padded."""
        tokenizer = self.processor.tokenizer
        rendered = self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": "?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]},
             {"role": "user", "content": [{"type": "text", "text": follow_up}]}],
            tokenize=False, add_generation_prompt=True)
        device = rollout.prompt_ids.device
        suffix = torch.tensor(tokenizer.encode(rendered.split(_SENTINEL, 1)[1],
                                               add_special_tokens=False), device=device)
        is_end = torch.isin(rollout.completion_ids,
                            torch.tensor(end_token_ids(tokenizer), device=device))
        keep_completion = rollout.completion_mask.bool() & ~is_end
        rows = []
        for i in range(len(rollout)):
            prompt = rollout.prompt_mask[i].bool()
            completion = rollout.completion_ids[i][keep_completion[i]]
            ids = torch.cat([rollout.prompt_ids[i][prompt], completion, suffix])
            mm = torch.cat([rollout.mm_token_type_ids[i][prompt],
                            torch.zeros(len(completion) + len(suffix), dtype=torch.long,
                                        device=device)])
            rows.append((ids, mm))
        width = max(len(ids) for ids, _ in rows)
        pad = end_token_ids(tokenizer)[-1]
        out_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        out_mask = torch.zeros_like(out_ids)
        out_mm = torch.zeros_like(out_ids)
        for i, (ids, mm) in enumerate(rows):  # left padding, as the rollout's prompts
            out_ids[i, width - len(ids):] = ids
            out_mask[i, width - len(ids):] = 1
            out_mm[i, width - len(ids):] = mm
        return out_ids, out_mask, out_mm
