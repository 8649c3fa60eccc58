"""The parts of a training step, each behind one interface.

A step's loss is the regression loss (``RegressionLoss``: the recipe's L1 / MSE, weighted by LDS,
or Balanced MSE in its place) plus the terms of the parts that are on, added in their order: each
method's extra term (``RankSimTerm``, ``ConRTerm``) and the SRL terms (``SRLTerm``). A part is
called with the step's ``Batch`` and the epoch's running sums, adds its own logged values to those
sums, and returns the weighted term to add to the loss, or None when it is off this step. A new
method is one new part (docs/methods.md, "Hooking into a training loop").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import methods
from ..loss import SRLLoss
from ..memory import SurrogateMemory
from .config import REGRESSION_LOSSES, Task, TrainConfig
from . import ddp


@dataclass
class Batch:
    """One training batch and the model's outputs on it, as the parts read them."""

    labels: torch.Tensor  # label units
    predictions: torch.Tensor  # the regressor's output (label / target_scale)
    features: torch.Tensor  # the projector's output, where the SRL terms act
    h: torch.Tensor | None  # the regressor's input before FDS (with RankSim on h)
    views: torch.Tensor | None  # ConR's two augmented views (2B rows)
    regression: torch.Tensor  # the step's regression loss
    bins: torch.Tensor | None = None  # the labels' SRL bins (when SRL or the online memory needs them)


class RegressionLoss:
    """The regression loss of a batch with its weighting: Balanced MSE (its sigma in an Adam of
    its own, outside the lr schedule), the LDS-weighted loss (one weight per label bin, from the
    training labels), or the recipe's L1 / MSE."""

    def __init__(self, settings: TrainConfig, task: Task, device: torch.device) -> None:
        m = settings.methods
        self.task, self.device, self.kind = task, device, settings.regression_loss
        self.plain = REGRESSION_LOSSES[settings.regression_loss]
        train_labels = torch.as_tensor(np.asarray(task.train_labels), dtype=torch.float32)
        self.lds_bin_weights: torch.Tensor | None = None
        self.lds_binning: dict = {}
        if m.reweight != "none":
            released = methods.LDS_RELEASED[task.name]
            self.lds_binning = {key: released[key] for key in ("num_bins", "binning", "value_range") if key in released}
            weights = methods.lds_weights(
                train_labels, **self.lds_binning, reweight=m.reweight, lds=m.lds, kernel=m.lds_kernel, ks=m.lds_ks,
                sigma=m.lds_sigma, inverse_clip=released["inverse_clip"],
            )
            # A sample's weight depends on its label bin only: one weight per bin, looked up per batch.
            table = torch.zeros(self.lds_binning["num_bins"])
            table[methods.label_bins(train_labels, **self.lds_binning)] = weights
            self.lds_bin_weights = table.to(device)
        self.balanced_mse: methods.BalancedMSE | None = None
        self.sigma_optimizer: torch.optim.Optimizer | None = None
        if m.bmse:
            targets = train_labels.double() / task.target_scale  # in the units the loss sees
            tables = {}
            if m.imp == "bni":
                tables = dict(zip(("bucket_centers", "bucket_weights"), methods.bni_buckets(targets)))
            elif m.imp == "gai":
                tables = {"gmm": methods.fit_gmm(targets)}
            self.balanced_mse = methods.BalancedMSE(
                m.imp, m.init_noise_sigma, fix_noise_sigma=m.fix_noise_sigma, **tables).to(device)
            if not m.fix_noise_sigma:
                # its own group (lr, no weight decay) in an Adam that no learning-rate schedule touches
                self.sigma_optimizer = torch.optim.Adam([self.balanced_mse.param_group(m.sigma_lr)])

    def __call__(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The regression loss of a batch (labels in label units)."""
        targets = labels / self.task.target_scale
        if self.balanced_mse is not None:
            return self.balanced_mse(predictions, targets)
        if self.lds_bin_weights is not None:
            weighted = methods.weighted_l1_loss if self.kind == "l1" else methods.weighted_mse_loss
            return weighted(predictions, targets, self.lds_weights(labels))
        return self.plain(predictions, targets)

    def lds_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        if self.lds_bin_weights is None:
            return None
        return self.lds_bin_weights[methods.label_bins(labels, **self.lds_binning).to(self.device)]

    def zero_grad(self) -> None:
        if self.sigma_optimizer is not None:
            self.sigma_optimizer.zero_grad(set_to_none=True)

    def step(self, distributed: bool) -> None:
        """sigma's optimiser step (after the model's)."""
        if self.sigma_optimizer is None:
            return
        if distributed:  # sigma is outside the DDP-wrapped model: average its gradient here
            grad = self.balanced_mse.noise_sigma.grad
            torch.distributed.all_reduce(grad)
            grad /= ddp.world_size()
        self.sigma_optimizer.step()

    def state_dict(self) -> dict:
        """Balanced MSE's sigma (and its table) and sigma's optimiser."""
        return {"balanced_mse": None if self.balanced_mse is None else self.balanced_mse.state_dict(),
                "sigma_optimizer": None if self.sigma_optimizer is None else self.sigma_optimizer.state_dict()}

    def load_state_dict(self, checkpoint: dict) -> None:
        if self.balanced_mse is not None:
            self.balanced_mse.load_state_dict(checkpoint["balanced_mse"])
        if self.sigma_optimizer is not None:
            self.sigma_optimizer.load_state_dict(checkpoint["sigma_optimizer"])

    def log(self, record: dict) -> None:
        if self.balanced_mse is not None:
            record["noise_sigma"] = float(self.balanced_mse.noise_sigma.detach())


class RankSimTerm:
    """gamma x ``ranksim_loss`` on h before FDS (RankSim code) or on the projector output (SRL
    code), on the raw labels."""

    name = "ranksim"

    def __init__(self, weight: float, interpolation_lambda: float, on_h: bool) -> None:
        self.weight, self.interpolation_lambda, self.on_h = weight, interpolation_lambda, on_h

    def __call__(self, batch: Batch, sums: dict) -> torch.Tensor:
        ranked = batch.h if self.on_h else batch.features
        term = methods.ranksim_loss(ranked, batch.labels, interpolation_lambda=self.interpolation_lambda)
        sums[self.name] += term.detach()
        return self.weight * term


class ConRTerm:
    """beta x ConR on the batch's two augmented views (2B rows, view 1 then view 2): a second
    forward without FDS, h of the views, their detached predictions in label units, LDS weights
    repeated when LDS is on."""

    name = "conr"

    def __init__(self, forward: Callable, regression: RegressionLoss, target_scale: float, w: float, beta: float,
                 e: float, device: torch.device) -> None:
        self.forward, self.regression, self.target_scale = forward, regression, target_scale
        self.w, self.beta, self.e, self.device = w, beta, e, device

    def __call__(self, batch: Batch, sums: dict) -> torch.Tensor:
        labels = batch.labels
        predictions, _, h = self.forward(batch.views.to(self.device, non_blocking=True), return_h=True)
        weights = self.regression.lds_weights(labels)
        term = methods.conr_loss(
            h, torch.cat([labels, labels]), (predictions.detach() * self.target_scale),
            weights=None if weights is None else torch.cat([weights, weights]), w=self.w, e=self.e,
        )
        sums[self.name] += term.detach()
        return self.beta * term


class SRLTerm:
    """The SRL terms (contrastive, enveloping, homogeneity, weighted) on the projector output
    against the surrogate table; on from epoch ``warmup``. With a task's own table rule
    (``Task.table_rule``) the table and positives are built that way."""

    name = "srl_total"

    def __init__(self, settings: TrainConfig, task: Task, feature_dim: int, device: torch.device, distributed: bool,
                 diverged: Callable[[str], None]) -> None:
        self.task, self.settings, self.diverged = task, settings, diverged
        self.loss = SRLLoss(task.num_bins, feature_dim, settings=settings.loss, backend=settings.backend,
                            distributed=distributed).to(device)
        self.memory = SurrogateMemory(task.num_bins, feature_dim, momentum=settings.memory_momentum,
                                      mode=settings.memory_update, normalize=settings.memory_normalized).to(device)
        self.on = False  # this epoch's: set by start_epoch
        self.feeds_memory = False
        self.gradient_share: Callable[[torch.Tensor, torch.Tensor], None] | None = None  # set by the engine per step
        self.last_total: torch.Tensor | None = None  # the step's total, for the per-step log

    def start_epoch(self, epoch: int) -> None:
        """``epoch`` finished epochs: the terms are on from epoch ``warmup``; the memory is fed
        from the epoch before, so that it is filled when they start."""
        self.on = epoch >= self.settings.warmup
        self.feeds_memory = epoch + 1 >= self.settings.warmup

    @property
    def online(self) -> bool:
        return self.feeds_memory and self.settings.memory_update == "online"

    def __call__(self, batch: Batch, sums: dict) -> torch.Tensor | None:
        self.last_total = None
        if not self.on:
            return None
        try:
            if self.task.table_rule is None:
                terms = self.loss(batch.features, batch.bins, self.memory.table)
            else:
                surrogates, positives = self.task.table_rule(batch.features, batch.labels, self.memory.table)
                terms = self.loss.terms_from_table(batch.features, positives, surrogates)
        except ValueError as error:  # finite features whose norms overflow: the model blew up
            if "argument 'features'" not in str(error):
                raise
            self.diverged(f"the features' norms overflow ({error})")
        if self.gradient_share is not None:
            self.gradient_share(batch.regression, terms.total)
        for key in ("contrastive", "enveloping", "homogeneity"):
            sums[key] += getattr(terms, key).detach()
        sums[self.name] += terms.total.detach()
        self.last_total = terms.total.detach()
        return terms.total

    def accumulate(self, batch: Batch) -> None:
        """Online memory: the step's detached features, folded in at the end of the epoch."""
        if self.online:
            self.memory.accumulate(batch.features.detach(), batch.bins)


def method_terms(settings: TrainConfig, forward: Callable, regression: RegressionLoss, task: Task,
                 device: torch.device, distributed: bool) -> list:
    """The extra terms of the methods switched on, in the order they are added to the loss."""
    m = settings.methods
    terms: list = []
    if m.ranksim:
        terms.append(RankSimTerm(m.regularization_weight, m.interpolation_lambda, m.ranksim_features == "h"))
    if m.conr:
        if distributed:
            raise ValueError("ConR runs in one process only (its second forward on the views is not synchronised "
                             "by DistributedDataParallel)")
        terms.append(ConRTerm(forward, regression, task.target_scale, m.conr_w, m.conr_beta, m.conr_e, device))
    return terms


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters both the regression loss and the SRL terms reach: the model's,
    less its heads (regressor, projector) and FDS."""
    heads = {id(p) for name in ("regressor", "projector", "fds") if getattr(model, name, None) is not None
             for p in getattr(model, name).parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
