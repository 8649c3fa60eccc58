"""Behaviours of the released SRL code that this library does not follow by default, reproduced
on request so that their effect can be measured (docs/method.md, "Where this code departs from
the released code").

The STS-B-DIR code of the SRL authors builds its surrogate table from float scores cast with
``.long()``, and picks the contrastive positive of a sample as the nearest of 50 evenly spaced
points on [0, 5] rather than its score's bin. ``train/sts_b.py --released_table`` trains with
both; the library's own table (``srl_ext.reference.surrogate_table``) bins the scores properly.
"""

from __future__ import annotations

import numpy as np
import torch

from .reference import accumulation_dtype, normalize

STS_B_POSITIVE_POINTS = 50  # the released positives: np.linspace(0, 5, 50), spaced 5/49 apart
STS_B_SCORE_MAX = 5.0


def sts_b_surrogate_table(features: torch.Tensor, scores: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The released STS-B code's K x D surrogate table for one batch.

    1. One centroid per distinct score in the batch: the mean of z_i = h_i/||h_i|| over the
       samples with exactly that score (with its gradient).
    2. Each centroid goes to row ``int(score)`` (``.long()`` truncates, so only rows 0..5 of the
       50 receive one). Where several scores share a row, the centroid of the largest score is
       kept, as a sequential scatter of the sorted scores leaves it.
    3. Rows that received no centroid take the detached memory row (the released code tests
       whether the row sums to zero).
    4. Every row is normalised; zero rows stay zero.
    """
    acc = accumulation_dtype(features.dtype)
    z = normalize(features.to(acc))
    values, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    counts = torch.bincount(inverse, minlength=values.numel()).to(acc)
    centroids = z.new_zeros(values.numel(), z.shape[1]).index_add(0, inverse, z) / counts.unsqueeze(1)
    rows = values.long()
    kept = torch.ones_like(rows, dtype=torch.bool)
    kept[:-1] = rows[1:] != rows[:-1]  # sorted: the last score of each row is the one a scatter keeps
    table = memory.detach().to(acc).index_put((rows[kept],), centroids[kept])
    return normalize(table)


def sts_b_positive_rows(scores: torch.Tensor) -> torch.Tensor:
    """The released contrastive positive of each score: the index of the nearest of 50 evenly
    spaced points on [0, 5] (ties: the lower index, as argmin)."""
    points = torch.from_numpy(np.linspace(0.0, STS_B_SCORE_MAX, STS_B_POSITIVE_POINTS)).float().to(scores.device)
    return (scores.float().unsqueeze(1) - points.unsqueeze(0)).abs().argmin(dim=1)


def sts_b_table_and_positives(
    features: torch.Tensor, scores: torch.Tensor, memory: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(table, positive rows) of the released STS-B code, for ``SRLLoss.terms_from_table``."""
    return sts_b_surrogate_table(features, scores, memory), sts_b_positive_rows(scores)
