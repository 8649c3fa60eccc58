"""The extra time per training step of each method that composes with SRL (docs/methods.md),
beside the SRL loss, at the preset sizes: one forward + backward of each method's own part.

    pytest bench/test_methods_bench.py --bench-threads 1      # about 1 min on 2 busy cores
    python bench/report.py --group methods --no-plots

Rows (group ``methods``, case = preset, term = what is timed, impl ``srl_ext``):

- ``srl``: SRLLoss (surrogate table and the three terms; the "auto" backend, as the drivers)
  on B x 128 projector outputs, K bins, N anchors: the cost the methods are set beside.
- ``ranksim``: ranksim_loss on h (B x D_h, the RankSim code's feature; ages with repeats, so the
  one-per-label pick runs), the per-anchor ranking and its blackbox backward.
- ``ranksim_projector``: the same on the B x 128 projector output (the SRL code's feature).
- ``conr``: conr_loss on the 2B x D_h views (the 2B x 2B terms; image presets only). The second
  forward of the backbone on the views, ConR's main cost in training, is not in it.
- ``fds_smooth``: FDS.smooth on B x D_h (the per-step calibration) with its backward.
- ``fds_update``: once per epoch, not per step: FDS.update (smoothing the R x D_h statistics
  along the buckets, the EMA) after one accumulated batch. The statistics pass itself shares
  the SRL memory's pass.
- ``lds``: the LDS-weighted regression loss with its per-bin weight lookup.
- ``bmse``: Balanced MSE (BMC: the B x B logits) in place of the regression loss.

D_h: 2048 (ResNet-50) on the image presets, 12000 (the released 1500-unit BiLSTM pair feature)
on STS-B. Timing follows bench/README.md: float32, the minimum over rounds of about
--bench-time seconds, at least 3 rounds; no memory measure and no parity check (each method's
values are tested in tests/test_methods_*.py).
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from srl_ext import methods, settings
from srl_ext.loss import SRLLoss
from srl_ext.training.config import released_methods, recipe

from .cases import DIM

H_DIM = {"agedb": 2048, "imdb_wiki": 2048, "sts_b": 12000}
TERMS = ("srl", "ranksim", "ranksim_projector", "conr", "fds_smooth", "fds_update", "lds", "bmse")
CASES = [(preset, term) for preset in ("sts_b", "agedb", "imdb_wiki") for term in TERMS
         if not (term == "conr" and preset == "sts_b")]


def _labels(preset: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    if preset == "sts_b":  # scores in [0, 5], three decimals: few repeats
        return (torch.rand(batch, generator=generator) * 5).mul(1000).round().div(1000)
    return torch.randint(20, 60, (batch,), generator=generator).float()  # ages: repeats in a batch


def _step(preset: str, term: str):
    p = settings.preset(preset)
    batch, num_bins, h_dim = recipe(preset).batch_size, p.num_bins, H_DIM[preset]
    generator = torch.Generator().manual_seed(0)
    labels = _labels(preset, batch, generator)
    sizes = dict(batch=batch, num_bins=num_bins, num_anchors=p.srl.num_anchors, dim=DIM, h_dim=h_dim)
    m = released_methods(preset)
    if term == "srl":
        loss = SRLLoss(num_bins, DIM, settings=p.srl, backend="auto")
        features = torch.randn(batch, DIM, generator=generator, requires_grad=True)
        memory = torch.randn(num_bins, DIM, generator=generator)
        bins = torch.randint(0, num_bins, (batch,), generator=generator)
        return sizes, lambda: torch.autograd.grad(loss(features, bins, memory).total, features)
    if term in ("ranksim", "ranksim_projector"):
        dim = h_dim if term == "ranksim" else DIM
        features = torch.randn(batch, dim, generator=generator, requires_grad=True)
        return sizes, lambda: torch.autograd.grad(
            methods.ranksim_loss(features, labels, interpolation_lambda=m.interpolation_lambda), features)
    if term == "conr":
        views = torch.randn(2 * batch, h_dim, generator=generator, requires_grad=True)
        both = torch.cat([labels, labels])
        predictions = both + torch.randn(2 * batch, generator=generator)  # close predictions: negatives exist
        return sizes, lambda: torch.autograd.grad(
            methods.conr_loss(views, both, predictions, w=m.conr_w, e=m.conr_e), views)
    if term.startswith("fds"):
        from srl_ext.training.config import fds_arguments

        fds = methods.FDS(h_dim, **fds_arguments(m, preset)).train()
        h = torch.randn(batch, h_dim, generator=generator)
        fds.accumulate(h, labels)
        fds.update(0)
        fds.accumulate(h, labels)
        fds.update(1)  # statistics in place: epoch 2 calibrates
        if term == "fds_smooth":
            x = h.clone().requires_grad_(True)
            return sizes, lambda: torch.autograd.grad(fds.smooth(x, labels, 2).sum(), x)

        def update():
            fds.accumulate(h, labels)
            fds.update(int(fds.epoch.item()) + 1)

        return sizes, update
    predictions = (labels / 5 if preset == "sts_b" else labels) + torch.randn(batch, generator=generator)
    predictions.requires_grad_(True)
    targets = labels / 5 if preset == "sts_b" else labels
    if term == "lds":
        lds = methods.LDS_RELEASED[preset]
        binning = {key: lds[key] for key in ("num_bins", "binning", "value_range") if key in lds}
        train_labels = torch.cat([_labels(preset, 1000, generator), labels])
        weights = methods.lds_weights(train_labels, **{k: v for k, v in lds.items()})
        table = torch.zeros(lds["num_bins"])
        table[methods.label_bins(train_labels, **binning)] = weights
        loss = methods.weighted_mse_loss if preset == "sts_b" else methods.weighted_l1_loss
        return sizes, lambda: torch.autograd.grad(
            loss(predictions, targets, table[methods.label_bins(labels, **binning)]), predictions)
    criterion = methods.BalancedMSE("bmc", m.init_noise_sigma)
    return sizes, lambda: torch.autograd.grad(criterion(predictions, targets), (predictions, criterion.noise_sigma))


@pytest.mark.parametrize("preset, term", CASES, ids=[f"methods-{p}-{t}" for p, t in CASES])
def test_method_step(benchmark, preset, term, bench_options):
    sizes, step = _step(preset, term)
    benchmark.group = f"methods-{preset}"
    benchmark.extra_info.update(group="methods", case=preset, term=term, impl="srl_ext", device="cpu",
                                threads=torch.get_num_threads(), **sizes)
    start = time.perf_counter()
    step()  # warm-up, and the size of the rounds
    one_step = time.perf_counter() - start
    rounds = math.ceil(bench_options["time_s"] / max(one_step, 1e-6))
    rounds = min(max(rounds, bench_options["min_rounds"]), bench_options["max_rounds"])
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
