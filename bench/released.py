"""The SRL terms computed the way the authors' released training code computes them: the second
baseline of the bench, so a user sees the gain over what they run today (docs/method.md).

It was written from a description of the released code, not copied from it:

- surrogate table: a Python loop over the labels present in the batch, each row the mean of the
  normalised features of its label (boolean-mask indexing), the memory row for absent labels;
- enveloping term: the full K x N cosine matrix, the arg-max over K per anchor turned into a
  K x N mask, and the masked sum (the gradient reaches only the arg-max row, docs/method.md,
  "Enveloping"). The
  mask is a bool comparison (1 byte per entry): no larger than the released code's, so the memory
  this baseline reports is if anything an underestimate;
- contrastive and homogeneity terms: the same math as the reference (cross-entropy of the B x K
  logits; sign * sum of neighbouring cosines + beta * their unbiased variance).

The bench checks that it gives the reference's numbers before timing it. Hard envelope only and
no label weighting: the released code has neither the soft form nor the weighting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from srl_ext.reference import accumulation_dtype


def surrogate_table(features: torch.Tensor, bins: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """K x D unit surrogates: a loop over the labels present, memory rows for the others."""
    acc = accumulation_dtype(features.dtype)
    z = F.normalize(features.to(acc), dim=1)
    table = memory.detach().to(acc).clone()  # absent labels keep their (detached) memory row
    for label in torch.unique(bins).tolist():  # one Python iteration, one mask, per label present
        table[label] = z[bins == label].mean(dim=0)
    return F.normalize(table, dim=1)  # a zero row stays zero (the eps floor of F.normalize)


def contrastive_loss(
    features: torch.Tensor, bins: torch.Tensor, surrogates: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of each normalised feature against the K detached surrogates."""
    acc = accumulation_dtype(features.dtype)
    z = F.normalize(features.to(acc), dim=1)
    logits = z @ surrogates.detach().to(acc).T / temperature  # B x K
    return F.cross_entropy(logits, bins)


def enveloping_loss(surrogates: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """1 - mean over anchors of the largest cosine, through the full K x N matrix and a mask."""
    cosines = surrogates @ anchors.to(surrogates.dtype).T  # K x N, materialised
    nearest = cosines.argmax(dim=0)  # ties: the lowest k, as torch.max
    mask = torch.arange(cosines.shape[0], device=cosines.device).unsqueeze(1) == nearest.unsqueeze(0)
    coverage = (cosines * mask).sum(dim=0)  # N: the cosine of each anchor's nearest surrogate
    return 1 - coverage.mean()


def homogeneity_loss(surrogates: torch.Tensor, sign: float, beta: float) -> torch.Tensor:
    """sign * sum_k <c_{k+1}, c_k> + beta * Var (unbiased; 0 when there is a single pair)."""
    neighbour_cosines = torch.sum(surrogates[1:] * surrogates[:-1], dim=1)
    loss = sign * neighbour_cosines.sum()
    if neighbour_cosines.numel() > 1:
        loss = loss + beta * torch.var(neighbour_cosines)
    return loss


def srl_terms(features, bins, memory, anchors, settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(contrastive, enveloping, homogeneity) from one surrogate table, as one training step does,
    with the ``SRLSettings`` `settings` (hard envelope: the released code has no other)."""
    surrogates = surrogate_table(features, bins, memory)
    contrastive = contrastive_loss(features, bins, surrogates, settings.temperature)
    homogeneity = homogeneity_loss(surrogates, settings.homogeneity_sign, settings.homogeneity_beta)
    return contrastive, enveloping_loss(surrogates, anchors), homogeneity
