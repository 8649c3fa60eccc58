"""ConR: contrastive regularisation on two augmented views (docs/methods.md, "ConR").

Samples with close labels are pulled together; samples whose labels differ but whose
predictions are close are pushed apart, harder the farther apart their labels are.

Layout of the two views: with a batch of B samples, row i and row B + i are the two views of
sample i::

    h_views = torch.cat([h(view_1), h(view_2)])              # 2B x D (h, not the projector)
    labels_views = torch.cat([y, y])
    predictions_views = torch.cat([p(view_1), p(view_2)]).detach()
    weights_views = torch.cat([w, w])                          # LDS weights, or None
    loss = regression + beta * conr_loss(h_views, labels_views, predictions_views, weights=weights_views)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import validation as check
from . import _checks


def conr_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    w: float = 1.0,
    temperature: float = 0.07,
    e: float = 0.01,
    clean: bool = False,
) -> torch.Tensor:
    """The ConR term of the 2B views (layout in the module docstring).

    With q = normalise(h), s_ij = q_i . q_j / temperature, d_ij = |y_i - y_j|:
    positives P_ij = [d_ij <= w, i != j]; negatives N_ij = [d_ij > w, |p_i - p_j| <= w];
    D_i = sum_j exp(s_ij P_ij) + sum_j N_ij w_i exp(e d_ij) exp(s_ij);
    loss_i = mean over j in P_i of (log D_i - s_ij); result = mean_i w_i loss_i [N_i nonempty].

    Args:
        features: 2B x D, the backbone feature h of the two views.
        labels, predictions: (2B,) or (2B, 1); predictions only select negatives (no gradient).
        weights: (2B,) or (2B, 1) sample weights (LDS), None for 1.
        w: the label (and prediction) window.
        temperature: tau (0.07: what the released code runs with).
        e: the push strength growth with the label distance.
        clean: sum only the positives in the first part of D_i. The released code (False)
            adds exp(0) = 1 for every non-positive j, the anchor itself included.

    An anchor without negatives contributes 0 but counts in the mean. Every anchor needs a
    positive, which its other view is: 2B rows with the labels repeated are required.
    """
    name = "conr_loss"
    features = _checks.features(name, features)
    n = features.shape[0]
    labels = _checks.labels(name, labels, n)
    predictions = _checks.labels(name, predictions, n, "predictions")
    for argument, value in (("labels", labels), ("predictions", predictions)):
        check.same_device(name, argument, value, features)
    if n < 2 or n % 2:
        check.fail(name, "features", "2B rows: the two views of B samples, stacked", f"{n} rows")
    if check.reads_data(labels) and not bool((labels[: n // 2] == labels[n // 2:]).all()):
        index = int((labels[: n // 2] != labels[n // 2:]).nonzero()[0, 0])
        check.fail(name, "labels", "the B labels repeated for the second view (rows i and B + i equal)",
                   f"{float(labels[index])} and {float(labels[n // 2 + index])} at rows {index} and {n // 2 + index}")
    if weights is not None:
        weights = _checks.labels(name, weights, n, "weights")
        check.floating(name, "weights", weights)
        check.same_device(name, "weights", weights, features)
        if check.reads_data(weights) and bool((weights < 0).any()):
            index = int((weights < 0).nonzero()[0, 0])
            check.fail(name, "weights", "weights >= 0", f"{float(weights[index])} at index {index}")
    window = _checks.number(name, "w", w, minimum=0.0)
    tau = _checks.number(name, "temperature", temperature, minimum=0.0, strict=True)
    e = _checks.number(name, "e", e)
    if not isinstance(clean, bool):
        check.fail(name, "clean", "a bool", repr(clean))

    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    q = F.normalize(features.to(dtype), dim=1)
    similarities = q @ q.t() / tau
    with torch.no_grad():
        y = labels.to(torch.float64) if not labels.is_floating_point() else labels
        p = predictions.detach()
        label_distance = (y.unsqueeze(1) - y.unsqueeze(0)).abs()
        close = label_distance <= window
        positives = close & ~torch.eye(n, dtype=torch.bool, device=features.device)
        negatives = ~close & ((p.unsqueeze(1) - p.unsqueeze(0)).abs() <= window)
        omega = torch.ones(n, dtype=dtype, device=features.device) if weights is None else weights.to(dtype)
        push = (e * label_distance).to(dtype) + omega.log().unsqueeze(1)  # log of w_i exp(e d_ij)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=features.device)
    # log D_i as one logsumexp: the first sum over every j (quirk: 0 for non-positives) or over
    # the positives only (clean), then the weighted negatives
    if clean:
        first = torch.where(positives, similarities, neg_inf)
    else:
        first = similarities * positives
    second = torch.where(negatives, similarities + push, neg_inf)
    log_denominator = torch.logsumexp(torch.cat([first, second], dim=1), dim=1)
    count = positives.sum(dim=1)
    per_anchor = ((log_denominator.unsqueeze(1) - similarities) * positives).sum(dim=1) / count
    has_negative = negatives.any(dim=1)
    return (omega * torch.where(has_negative, per_anchor, 0)).mean()
