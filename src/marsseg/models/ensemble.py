"""A soft-voting ensemble trained as one model: members side by side, each on its own loss, voting by averaged
probabilities. To the rest of marsseg (checkpoints, resume, early stopping, predict, export) it is one network."""

import math

import torch
from torch import nn


def final_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """A member's final logits when it also returns auxiliary outputs (deep supervision)."""
    return output[0] if isinstance(output, tuple) else output


class Ensemble(nn.Module):
    """Independent members that see the same batches; their differing random initial weights make them disagree.

    In training mode `forward` returns a list of the members' outputs, so that each is trained on its own loss
    (training.compute_loss), as if trained alone. In eval mode it returns the log of the members' mean softmax
    probabilities, so that a softmax of its output is their soft vote.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more members; got {len(members)}")
        self.members = nn.ModuleList(members)
        self.input_multiple = members[0].input_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor | list:
        outputs = [member(x) for member in self.members]
        if self.training:
            return outputs
        # (members, B, C, H, W)
        log_probabilities = torch.stack([final_logits(o).float().log_softmax(dim=1) for o in outputs])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(outputs))  # (B, C, H, W)
