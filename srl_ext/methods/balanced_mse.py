"""Balanced MSE: a regression likelihood corrected by the training label prior, so the model
targets a balanced test distribution (docs/methods.md, "Balanced MSE").

It replaces the regression loss. Its noise scale sigma is a learnable Parameter that belongs in
an optimiser group of its own (lr 1e-2, no weight decay) that the learning-rate schedule leaves
alone::

    criterion = BalancedMSE("bmc", init_noise_sigma=1.0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    optimizer.add_param_group(criterion.param_group(lr=1e-2))
    loss = criterion(predictions, targets)   # instead of the L1 / MSE term

Three ways to write the prior: "bmc" (the batch's labels, no table), "bni" (a histogram of
the training labels: ``bni_buckets``), "gai" (a Gaussian mixture fitted to them: ``fit_gmm``).
Every variant is multiplied by (2 sigma^2).detach(), as released.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as check
from . import _checks
from .smoothing import conv_same_zero, kernel_window

MODES = ("bmc", "bni", "gai")


def _dtype(predictions: torch.Tensor) -> torch.dtype:
    return predictions.dtype if predictions.dtype in (torch.float32, torch.float64) else torch.float32


def bmc_loss(predictions: torch.Tensor, targets: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    """Batch-based Monte-Carlo: mean_i CE(-(p_i - y_j)^2 / (2 v) over j, class i) * (2 v).detach().
    predictions, targets: (B,); one sample gives 0."""
    logits = -0.5 * (predictions.unsqueeze(1) - targets.unsqueeze(0)) ** 2 / noise_var
    labels = torch.arange(predictions.shape[0], device=predictions.device)
    return F.cross_entropy(logits, labels) * (2 * noise_var).detach()


def bni_loss(predictions: torch.Tensor, targets: torch.Tensor, noise_var: torch.Tensor,
             bucket_centers: torch.Tensor, bucket_weights: torch.Tensor) -> torch.Tensor:
    """Bin-based numerical integration: mean_i[(p_i - y_i)^2 / (2 v)
    + LSE_b(-(p_i - c_b)^2 / (2 v) + log pi_b)] * (2 v).detach()."""
    mse_term = (predictions - targets) ** 2 / 2 / noise_var
    balancing = -0.5 * (predictions.unsqueeze(1) - bucket_centers.unsqueeze(0)) ** 2 / noise_var + bucket_weights.log()
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return (loss * (2 * noise_var).detach()).mean()


def gai_loss(predictions: torch.Tensor, targets: torch.Tensor, noise_var: torch.Tensor,
             means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """GMM-based analytical integration: mean_i[(p_i - y_i)^2 / (2 v) + log(v) / 2
    + LSE_k(-log(v_k + v) / 2 - (p_i - mu_k)^2 / (2 (v_k + v)) + log phi_k)] * (2 v).detach()."""
    mse_term = (predictions - targets) ** 2 / 2 / noise_var + 0.5 * noise_var.log()
    total_var = variances.unsqueeze(0) + noise_var
    balancing = (-0.5 * total_var.log() - 0.5 * (predictions.unsqueeze(1) - means.unsqueeze(0)) ** 2 / total_var
                 + weights.log().unsqueeze(0))
    loss = mse_term + torch.logsumexp(balancing, dim=1)
    return (loss * (2 * noise_var).detach()).mean()


def bni_buckets(labels: torch.Tensor, *, max_target: int = 200, lds: bool = False, kernel: str = "gaussian",
                ks: int = 5, sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The BNI table of the training labels: (centers, weights), float64.

    Counts of int(y) for the labels with int(y) < max_target (others dropped), optionally
    smoothed along the integers with the LDS window (divided by its max, zero padding); the
    centres are the integers whose (smoothed) count is > 0, the weights their counts over the
    total. Integer centres: on label scales other than the age datasets', bin the labels first.
    """
    name = "bni_buckets"
    labels = _checks.labels(name, labels)
    _checks.integer(name, "max_target", max_target, 1)
    if not isinstance(lds, bool):
        check.fail(name, "lds", "a bool", repr(lds))
    window = kernel_window(kernel, ks, sigma, normalize="max", function=name) if lds else None
    values = labels.detach().cpu()
    integers = (torch.trunc(values) if values.is_floating_point() else values).to(torch.int64)
    inside = (integers >= 0) & (integers < max_target)
    counts = torch.bincount(integers[inside], minlength=max_target).to(torch.float64)
    if lds:
        counts = conv_same_zero(counts, window)
    keep = counts > 0
    if not bool(keep.any()):
        check.fail(name, "labels", f"at least one label with 0 <= int(y) < max_target = {max_target}",
                   "none")
    centers = torch.arange(max_target, dtype=torch.float64)[keep]
    weights = counts[keep] / counts[keep].sum()
    return centers, weights


def fit_gmm(labels: torch.Tensor, n_components: int = 8, random_state: int = 0) -> dict[str, torch.Tensor]:
    """The GAI table: sklearn's GaussianMixture(n_components, random_state) fitted on the training
    labels, as {"means", "variances", "weights"} (K,) float64 tensors. Needs scikit-learn (the
    only use of it here); the fitted table can be saved and passed as `gmm` instead."""
    name = "fit_gmm"
    labels = _checks.labels(name, labels)
    _checks.integer(name, "n_components", n_components, 1)
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("fit_gmm needs scikit-learn (pip install scikit-learn); or pass the fitted "
                          "means, variances and weights to BalancedMSE(gmm=...)") from error
    mixture = GaussianMixture(n_components=n_components, random_state=random_state)
    mixture.fit(labels.detach().cpu().to(torch.float64).numpy().reshape(-1, 1))
    return _gmm_table("fit_gmm", {"means": mixture.means_, "variances": mixture.covariances_,
                                  "weights": mixture.weights_})


def _gmm_table(function: str, gmm: object) -> dict[str, torch.Tensor]:
    """{"means", "variances", "weights"} as (K,) float64 tensors (sklearn's shapes (K, 1),
    (K, 1, 1) and (K,) flattened), variances and weights > 0."""
    if not isinstance(gmm, dict) or set(gmm) != {"means", "variances", "weights"}:
        check.fail(function, "gmm", "a dict with keys 'means', 'variances', 'weights'",
                   repr(sorted(gmm)) if isinstance(gmm, dict) else type(gmm).__name__)
    table = {key: torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1) for key, value in gmm.items()}
    k = table["means"].shape[0]
    for key, value in table.items():
        if value.shape[0] != k or k < 1:
            check.fail(function, "gmm", f"K >= 1 values per entry (means has {k})", f"{key} with {value.shape[0]}")
        if not bool(torch.isfinite(value).all()) or (key != "means" and not bool((value > 0).all())):
            check.fail(function, "gmm", "finite entries, variances and weights > 0", f"{key} = {value.tolist()}")
    return table


class BalancedMSE(nn.Module):
    """Balanced MSE as a loss module with a learnable noise scale (docs/methods.md, "Balanced MSE")."""

    def __init__(
        self,
        mode: str = "bmc",
        init_noise_sigma: float = 1.0,
        *,
        bucket_centers: torch.Tensor | None = None,
        bucket_weights: torch.Tensor | None = None,
        gmm: dict | None = None,
        fix_noise_sigma: bool = False,
    ) -> None:
        """
        Args:
            mode: "bmc", "bni" (needs bucket_centers and bucket_weights, e.g. from
                ``bni_buckets``) or "gai" (needs gmm, e.g. from ``fit_gmm``).
            init_noise_sigma: sigma at the start (1 by default; the released IMDB-WIKI stage-2
                commands use 10). Only sigma^2 enters, so its sign is free.
            fix_noise_sigma: freeze sigma (requires_grad False; ``param_group`` then raises).

        The tables are float64 buffers, saved in the state_dict with sigma.
        """
        super().__init__()
        name = "BalancedMSE"
        _checks.choice(name, "mode", mode, MODES)
        sigma = _checks.number(name, "init_noise_sigma", init_noise_sigma)
        if sigma == 0:
            check.fail(name, "init_noise_sigma", "a finite number != 0", repr(init_noise_sigma))
        if not isinstance(fix_noise_sigma, bool):
            check.fail(name, "fix_noise_sigma", "a bool", repr(fix_noise_sigma))
        self.mode = mode
        self.noise_sigma = nn.Parameter(torch.tensor(sigma), requires_grad=not fix_noise_sigma)
        if mode == "bni":
            for argument, value in (("bucket_centers", bucket_centers), ("bucket_weights", bucket_weights)):
                if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] < 1:
                    check.fail(name, argument, "a 1-D tensor (one entry per bucket) with mode='bni'", check._describe(value))
            if bucket_weights.shape != bucket_centers.shape:
                check.fail(name, "bucket_weights", f"of the shape of 'bucket_centers' {tuple(bucket_centers.shape)}",
                           f"shape {tuple(bucket_weights.shape)}")
            if not bool((bucket_weights > 0).all()):
                check.fail(name, "bucket_weights", "all > 0 (drop empty buckets)", bucket_weights.tolist())
            self.register_buffer("bucket_centers", bucket_centers.detach().to(torch.float64).clone())
            self.register_buffer("bucket_weights", bucket_weights.detach().to(torch.float64).clone())
        elif bucket_centers is not None or bucket_weights is not None:
            check.fail(name, "bucket_centers", "None unless mode='bni'", "a table")
        if mode == "gai":
            if gmm is None:
                check.fail(name, "gmm", "a dict with keys 'means', 'variances', 'weights' with mode='gai'", "None")
            for key, value in _gmm_table(name, gmm).items():
                self.register_buffer(f"gmm_{key}", value)
        elif gmm is not None:
            check.fail(name, "gmm", "None unless mode='gai'", "a table")

    def param_group(self, lr: float = 1e-2) -> dict:
        """The optimiser group of sigma: {"params", "lr", "weight_decay": 0, "name": "noise_sigma"}.
        Keep the learning-rate schedule off it (the released code skips the group by its name)."""
        if not self.noise_sigma.requires_grad:
            check.fail("BalancedMSE.param_group", "noise_sigma", "trainable (fix_noise_sigma=False)", "frozen")
        lr = _checks.number("BalancedMSE.param_group", "lr", lr, minimum=0.0, strict=True)
        return {"params": [self.noise_sigma], "lr": lr, "weight_decay": 0.0, "name": "noise_sigma"}

    @property
    def noise_var(self) -> torch.Tensor:
        return self.noise_sigma ** 2

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of a batch: predictions and targets (B,) or (B, 1), in the regression's units."""
        name = "BalancedMSE"
        predictions = _checks.floating_vector(name, "predictions", predictions)
        targets = _checks.labels(name, targets, predictions.shape[0], "targets", "the length of 'predictions'")
        check.same_device(name, "targets", targets, predictions)
        dtype = _dtype(predictions)
        p, y = predictions.to(dtype), targets.to(dtype)
        noise_var = self.noise_var.to(dtype)
        if self.mode == "bmc":
            return bmc_loss(p, y, noise_var)
        if self.mode == "bni":
            return bni_loss(p, y, noise_var, self.bucket_centers.to(dtype), self.bucket_weights.to(dtype))
        return gai_loss(p, y, noise_var, self.gmm_means.to(dtype), self.gmm_variances.to(dtype),
                        self.gmm_weights.to(dtype))

    def extra_repr(self) -> str:
        sigma = float(self.noise_sigma.detach())
        return f"mode={self.mode!r}, noise_sigma={sigma:.6g}" + ("" if self.noise_sigma.requires_grad else ", fixed")
