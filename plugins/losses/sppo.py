"""SPPO (Wu et al. 2024), in the form of the SPPO authors' code:

    L = 1/2 [(r_w - (P_w - 1/2)/beta)^2 + (r_l - (P_l - 1/2)/beta)^2]

with r_w = r+, r_l = r- (policy-minus-reference summed log-probs) and P_w = P(y+ > y-),
P_l = 1 - P_w. Hard labels (the default) are P_w = 1, P_l = 0, giving
1/2 [(r+ - 1/(2 beta))^2 + (r- + 1/(2 beta))^2]: exactly HALF of the table form of docs/math.md §4,
(r+ - 1/(2 beta))^2 + (r- + 1/(2 beta))^2, which is also TRL's ``sppo_hard``. The two have the
same minimiser (r+ = 1/(2 beta), r- = -1/(2 beta)); their losses and residuals G differ by the
factor 2, which a learning rate absorbs. Unlike DPO and IPO there is no shared coefficient:
the two terms act separately, G = (1/(2 beta) - r+)(pi - e_{y+}) on y+ and
-(r- + 1/(2 beta))(pi - e_{y-}) on y- (over B for the batch mean; twice that for the table form).

``soft: true`` takes P_w from the data (``SequenceLogps.chosen_prob``) and fails clearly when the
data carries none. beta = 0.1 by default; the SPPO paper used eta = 1/beta = 1e3.
"""

from __future__ import annotations

import torch

from ldreg.errors import SpecError
from ldreg.losses import LossDefinition, LossOutput, SequenceLogps

from .common import log_ratios, positive, reward_metrics, switch


def win_probability(logps: SequenceLogps, soft: bool) -> torch.Tensor:
    """P_w per pair: 1 for hard labels, the data's P(y+ > y-) for soft ones."""
    if not soft:
        return torch.ones_like(logps.chosen)
    if logps.chosen_prob is None:
        raise SpecError("loss 'sppo' with soft: true needs a win probability P(y+ > y-) per pair "
                        "(SequenceLogps.chosen_prob) and none was given; use data whose records "
                        "carry chosen_prob, or set soft: false for hard labels")
    prob = logps.chosen_prob.to(logps.chosen.dtype)
    if bool(((prob < 0) | (prob > 1)).any()):
        raise SpecError("loss 'sppo': the data's win probabilities must lie in [0, 1]")
    return prob


def sppo_loss(logps: SequenceLogps, beta: float, soft: bool) -> LossOutput:
    beta = positive("sppo", "beta", beta)
    p_win = win_probability(logps, switch("sppo", "soft", soft))
    chosen_ratio, rejected_ratio = log_ratios(logps, "sppo")
    losses = 0.5 * ((chosen_ratio - (p_win - 0.5) / beta) ** 2
                    + (rejected_ratio - (0.5 - p_win) / beta) ** 2)
    return LossOutput(losses.mean(), reward_metrics(beta, chosen_ratio, rejected_ratio, logps))


SPPO = LossDefinition(
    name="sppo",
    compute=sppo_loss,
    description="SPPO (authors' code form): 1/2[(r+ - (P_w-1/2)/beta)^2 + (r- - (P_l-1/2)/beta)^2].",
    defaults={"beta": 0.1, "soft": False},
    constraints={"beta": "> 0"},
    needs_rejected=True,
    needs_reference=True,
)
