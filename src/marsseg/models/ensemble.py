"""A soft-voting ensemble as one model: networks trained apart (engine.fit), voting by averaged probabilities. To
predict, evaluate and export it is one network."""

import math

import torch
from torch import nn


def final_logits(output: torch.Tensor | tuple) -> torch.Tensor:
    """A member's final logits when it also returns auxiliary outputs (deep supervision)."""
    return output[0] if isinstance(output, tuple) else output


class Ensemble(nn.Module):
    """Members trained one after another, from different seeds (engine.fit); their output is the log of the
    members' mean softmax probabilities, so that a softmax of it is their soft vote."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs 2 or more members; got {len(members)}")
        self.members = nn.ModuleList(members)
        self.input_multiple = members[0].input_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (members, B, C, H, W)
        log_probabilities = torch.stack([final_logits(m(x)).float().log_softmax(dim=1) for m in self.members])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.members))  # (B, C, H, W)
