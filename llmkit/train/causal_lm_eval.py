"""A task metric during training (axolotl's `do_causal_lm_eval`): at every evaluation the model writes its own
answer to each held-out row's prompt, greedily, and the answers are scored against the row's trained text.

Loss says the model is getting closer; exact match says it now gets answers right, which is what HELM scores.
The results are logged like the eval loss (`eval_exact_match`: TensorBoard, trainer_state.json, the loss-curve
PNG). A held-out row's prompt is everything before its first trained token and its reference the trained span
that follows (the first assistant turn of a chat), so this works for every dataset type, packed or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from llmkit.config.sections import CAUSAL_LM_METRICS
from llmkit.data.rows import IGNORE_INDEX

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, Trainer

LOG = logging.getLogger(__name__)
GENERATION_BATCH = 16


@dataclass(frozen=True)
class HeldOutAnswer:
    prompt: list[int]  # token ids before the first trained token
    reference: list[int]  # the trained tokens that follow it


def held_out_answers(rows: Dataset) -> list[HeldOutAnswer]:
    """One prompt/reference pair per held-out example; packed rows are split where position_ids restart."""
    answers = []
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] if "position_ids" in row else [0]
        for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
            trained = [i for i in range(start, end) if labels[i] != IGNORE_INDEX]
            if not trained or trained[0] == start:  # nothing trained, or no prompt to answer (completion text)
                continue
            first = trained[0]
            stop = next((i for i in range(first, end) if labels[i] == IGNORE_INDEX), end)
            answers.append(HeldOutAnswer(prompt=ids[start:first], reference=labels[first:stop]))
    return answers


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to their reference once surrounding whitespace is dropped (HELM's exact_match)."""
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)


SCORERS = {"exact_match": exact_match}
assert set(SCORERS) == set(CAUSAL_LM_METRICS), "the config accepts exactly the metrics scored here"


class CausalLMEval(TrainerCallback):
    """Generate and score the held-out answers after each evaluation; `trainer` is set once it exists."""

    def __init__(
        self, answers: list[HeldOutAnswer], tokenizer: PreTrainedTokenizerBase, metrics: list[str], max_new_tokens: int
    ) -> None:
        self.answers = sorted(answers, key=lambda answer: len(answer.prompt))  # similar lengths: less padding
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.max_new_tokens = max_new_tokens
        self.trainer: Trainer | None = None

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.trainer is None or model is None or not self.answers:
            return
        predictions = self.generate(model)
        references = [self.tokenizer.decode(a.reference, skip_special_tokens=True) for a in self.answers]
        scores = {f"eval_{name}": SCORERS[name](predictions, references) for name in self.metrics}
        LOG.info(
            "Held-out answers at step %d: %s (%d rows)",
            state.global_step,
            ", ".join(f"{name} {value:.3f}" for name, value in scores.items()),
            len(references),
        )
        self.trainer.log(scores)  # into log_history and TensorBoard, beside eval_loss

    def _stop_ids(self, model: Any) -> list[int]:
        """The model's own EOS ids and the tokenizer's (the one the data pipeline ends trained answers with)."""
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = configured if isinstance(configured, list) else [configured]
        return sorted({i for i in [*ids, self.tokenizer.eos_token_id] if i is not None})

    @torch.no_grad()
    def generate(self, model: Any) -> list[str]:
        """Greedy answers, in batches of left-padded prompts; the model is left in the mode it was in."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        texts = []
        try:
            for at in range(0, len(self.answers), GENERATION_BATCH):
                prompts = [answer.prompt for answer in self.answers[at : at + GENERATION_BATCH]]
                width = max(len(prompt) for prompt in prompts)
                input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=self._stop_ids(model),
                    use_cache=True,
                )
                texts += self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        finally:
            model.train(was_training)
        return texts
