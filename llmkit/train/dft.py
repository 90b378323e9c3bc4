"""axolotl's `use_dynamic_finetuning`: the Dynamic Fine-Tuning loss (DFT; Wu et al., "On the Generalization of SFT:
A Reinforcement Learning Perspective with Reward Rectification", arXiv:2508.05629).

Each target token's cross-entropy -log p is multiplied by its own probability p, detached: the gradient is p times
cross-entropy's, so tokens the model finds unlikely pull less. As in axolotl: the labels are shifted by one (position
i predicts token i + 1), tokens labelled -100 count for nothing, and the sum is divided by what transformers divides
plain cross-entropy by, `num_items_in_batch`: the target tokens of the whole optimizer step, over gradient
accumulation and devices (the batch's own when the Trainer gives none). The Trainer calls it for evaluation too, so
eval_loss is the DFT loss as well, as in axolotl.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # transformers' label for a token that is not trained


def dft_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """The DFT loss of a causal LM's forward pass (transformers' `Trainer(compute_loss_func=...)` signature)."""
    logits = outputs.logits
    if logits.shape[1] > labels.shape[1]:
        # peft's prompt tuning puts its virtual tokens before the row; like peft, they get no label
        labels = F.pad(labels, (logits.shape[1] - labels.shape[1], 0), value=IGNORE_INDEX)
    targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(logits.device)
    # float32, as transformers' cross-entropy upcasts; an ignored token's -log p is 0 here, so it adds 0
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    weighted = torch.exp(-nll).detach() * nll
    if num_items_in_batch is None:
        num_items_in_batch = (targets != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):  # a batch with no target token: 0, not 0/0
        return weighted.sum() / num_items_in_batch.to(weighted.device).clamp(min=1)
    return weighted.sum() / max(num_items_in_batch, 1)
