"""The one training engine of the DIR drivers: train, validate, select, test; checkpoint and resume.

A run lives in its own folder (``checkpoint.make_run_dir``): ``config.json``, ``metrics.jsonl`` (one
line per training epoch and per validation), ``last.pt`` (the whole state, written at the end of
every epoch, from which ``--resume`` continues exactly), ``best.pt`` (the model selected on
validation), ``test_metrics.json`` and ``test_errors.png`` (the test set, evaluated once on
``best.pt``), and TensorBoard event files when tensorboard is installed.

Exact resumption: the checkpoint holds the model, optimiser, scheduler, anchors, surrogate memory,
early-stopping state, log history and every RNG state; the loaders' shuffling is seeded from
(seed, epoch), so the epochs after a resume see the data in the same order as an unbroken run.

The methods that compose with SRL (``TrainConfig.methods``, docs/methods.md "Hooking into a
training loop"): LDS weights the regression loss (a weight per label bin, from the training
labels); FDS is a submodule of the model (``model.fds``, its buffers in the model's state)
calibrating h before the regressor, its statistics from the end-of-epoch pass that also refills
the SRL memory (the pass runs for FDS in online memory mode too); RankSim and ConR add terms;
Balanced MSE replaces the regression loss, its sigma in an Adam of its own (its group, its lr,
no schedule), both saved in ``last.pt``.

Data-parallel (launched with torchrun, see docs/distributed.md): when torch.distributed is
initialised with more than one rank, the model is wrapped in DistributedDataParallel for the
training steps, the training set is split by a DistributedSampler (seeded per epoch, as above;
``batch_size`` is per rank), the SRL terms are those of the global batch (``SRLLoss(distributed=
True)``), the memory reduces across ranks in ``update``, and the memory pass and the evaluations
run each rank on a contiguous shard without padding, gathering predictions and labels before
the metrics, which every rank then computes alike. Only rank 0 writes files (run folder content,
checkpoints, logs, plots, TensorBoard), prints and shows progress bars; the early-stopping
decision is rank 0's, broadcast.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .. import analysis
from .. import metrics as dir_metrics
from .. import methods
from ..loss import SRLLoss
from ..memory import SurrogateMemory
from .. import distributed
from . import ddp
from .checkpoint import (BEST, CHECKPOINT_FORMAT, LAST, PREVIOUS, atomic_save, epoch_seed, load_checkpoint, rng_state,
                         seed_everything, set_rng_state)
from .config import EARLY_STOP_RULES, REGRESSION_LOSSES, MethodSettings, Task, TrainConfig
from .errors import TrainingDiverged
from .reporting import RunLog, progress, write_test_report


def out_of_patience(scores: Sequence[float], patience: int | None, rule: str = "released") -> bool:
    """Whether training stops after the validation scores ``scores`` (lower is better, the
    current one last).

    - "released" (the released STS-B trainer): the current score is the worst of the last
      ``patience + 1``, which needs more than ``patience + 1`` validations.
    - "no_improvement": ``patience`` validations in a row without a new best.
    """
    if patience is None or not scores:
        return False
    if rule == "released":
        window = patience + 1
        return len(scores) > window and max(scores[-window:]) <= scores[-1]
    if rule == "no_improvement":
        best = min(range(len(scores)), key=lambda i: (scores[i], i))  # the first of equal bests
        return len(scores) - 1 - best >= patience
    raise ValueError(f"early stop rule must be one of {', '.join(map(repr, EARLY_STOP_RULES))}, got {rule!r}")


def training_device(name: str, data_parallel: bool) -> torch.device:
    """The device to train on, made the current one if it is a GPU: whatever runs on the current
    device (Triton launches, torch.cuda calls without a device) would stay on cuda:0 for
    `--device cuda:1` otherwise."""
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if device.index is None or data_parallel:
        # under torchrun every rank uses its own GPU, LOCAL_RANK's (ddp.init_from_env set it)
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device



class Engine:
    """Trains ``model`` on ``datasets["train"]``, selects it on ``datasets["val"]``, tests it once.

    ``model(*inputs)`` returns ``(predictions, features)``; ``features`` (B x D) feed the SRL terms
    and the surrogate memory.
    """

    def __init__(
        self,
        config: dict,
        task: Task,
        model: nn.Module,
        datasets: dict[str, Dataset],
        run_dir: str | Path,
    ) -> None:
        self.config = dict(config)
        self.settings = TrainConfig.from_dict(config)
        self.task = task
        self.run_dir = Path(run_dir)
        self.distributed = ddp.is_distributed()
        self.device = training_device(self.settings.device, self.distributed)
        m = self.settings.methods
        if m.fds and getattr(model, "fds", None) is None:
            raise ValueError("model: expected its FDS module (model.fds, built with the model: benchmarks.Benchmark.build) "
                             "for a run with FDS, got none")
        if self.settings.retrain_regressor:  # the released second stage: only the regressor learns (before DDP)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name.startswith("regressor."))
        self.model = model.to(self.device)  # the plain module: checkpoints, the memory pass, evaluation
        self.datasets = datasets
        self.main = ddp.is_main_process()  # rank 0 (always, without torch.distributed)
        s = self.settings
        # The training steps' forward: DDP averages the gradients over the ranks. Without SRL (or
        # during the warm-up) the projection head gets no gradient, which DDP must be told.
        self.train_model = ddp.wrap(self.model, self.device, find_unused_parameters=not s.srl or s.warmup > 0)
        if task.table_rule is not None and self.distributed:
            raise ValueError(f"{task.name}: a surrogate table built by the task's own rule runs in one process only")
        dim = feature_dim(self.model)
        self.srl_loss: SRLLoss | None = None
        self.memory: SurrogateMemory | None = None
        if s.srl:
            self.srl_loss = SRLLoss(
                task.num_bins, dim, settings=s.loss, backend=s.backend, distributed=self.distributed
            ).to(self.device)
            distributed.assert_same_across_ranks(self.srl_loss.anchors, "SRL anchors")
            self.memory = SurrogateMemory(
                task.num_bins, dim, momentum=s.memory_momentum, mode=s.memory_update, normalize=s.memory_normalized
            ).to(self.device)
        self.regression_loss = REGRESSION_LOSSES[s.regression_loss]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(s.lr_milestones), gamma=s.lr_gamma)
        self._build_methods(m)
        self.epoch = 0  # epochs finished
        self.in_epoch = False  # inside train_epoch: the epoch being trained is number self.epoch + 1
        self.global_step = 0
        self.best: dict | None = None  # {"value", "epoch", "step"} of the selected model
        self.bad_validations = 0
        self.val_scores: list[float] = []  # the selection metric of every validation, in order
        self.stopped = False
        self.last_validated_step = -1
        self.history: list[dict] = []
        self.data_fingerprint: dict | None = None  # the split files' sizes and hashes (cli sets it)
        self.log = RunLog(self.run_dir) if self.main else None
        if self.distributed:
            # The model is built (and DDP has sent rank 0's weights): from here on each rank draws
            # its own augmentations and dropout masks. A resume then restores each rank's stream.
            seed_everything(epoch_seed(s.seed, 0, 1000 + ddp.rank()))

    def _build_methods(self, m: MethodSettings) -> None:
        """LDS's per-bin weights, Balanced MSE and sigma's optimiser, ConR's checks (FDS is on the model)."""
        task = self.task
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
            self.lds_bin_weights = table.to(self.device)
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
                m.imp, m.init_noise_sigma, fix_noise_sigma=m.fix_noise_sigma, **tables).to(self.device)
            if not m.fix_noise_sigma:
                # its own group (lr, no weight decay) in an Adam that no learning-rate schedule touches
                self.sigma_optimizer = torch.optim.Adam([self.balanced_mse.param_group(m.sigma_lr)])
        if m.conr and self.distributed:
            raise ValueError("ConR runs in one process only (its second forward on the views is not synchronised "
                             "by DistributedDataParallel)")

    def regression(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The regression loss of a batch (labels in label units): Balanced MSE, the LDS-weighted
        loss, or the recipe's L1 / MSE."""
        targets = labels / self.task.target_scale
        if self.balanced_mse is not None:
            return self.balanced_mse(predictions, targets)
        if self.lds_bin_weights is not None:
            weighted = methods.weighted_l1_loss if self.settings.regression_loss == "l1" else methods.weighted_mse_loss
            return weighted(predictions, targets, self.lds_weights(labels))
        return self.regression_loss(predictions, targets)

    def lds_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        if self.lds_bin_weights is None:
            return None
        return self.lds_bin_weights[methods.label_bins(labels, **self.lds_binning).to(self.device)]

    # ----- state -----
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "srl_loss": None if self.srl_loss is None else self.srl_loss.state_dict(),  # the anchors
            "memory": None if self.memory is None else self.memory.state_dict(),
            # Balanced MSE: sigma (and its table), sigma's optimiser (FDS's buffers are in "model")
            "balanced_mse": None if self.balanced_mse is None else self.balanced_mse.state_dict(),
            "sigma_optimizer": None if self.sigma_optimizer is None else self.sigma_optimizer.state_dict(),
            "best": self.best,
            "bad_validations": self.bad_validations,
            "val_scores": self.val_scores,
            "stopped": self.stopped,
            "last_validated_step": self.last_validated_step,
            "history": self.history,
            "data_fingerprint": self.data_fingerprint,
            "rng": rng_state(),
            # under torch.distributed (a collective: every rank calls state_dict), every rank's
            "rng_per_rank": ddp.gather_objects(rng_state()) if self.distributed else None,
        }

    def load_state_dict(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.srl_loss is not None:
            self.srl_loss.load_state_dict(checkpoint["srl_loss"])
            self.memory.load_state_dict(checkpoint["memory"])
        if self.balanced_mse is not None:
            self.balanced_mse.load_state_dict(checkpoint["balanced_mse"])
        if self.sigma_optimizer is not None:
            self.sigma_optimizer.load_state_dict(checkpoint["sigma_optimizer"])
        self.epoch = checkpoint["epoch"]
        self.global_step = checkpoint["global_step"]
        self.best = checkpoint["best"]
        self.bad_validations = checkpoint["bad_validations"]
        self.val_scores = list(checkpoint.get("val_scores", []))
        self.stopped = checkpoint["stopped"]
        self.last_validated_step = checkpoint["last_validated_step"]
        self.history = list(checkpoint["history"])
        per_rank = checkpoint.get("rng_per_rank")
        if self.distributed and per_rank is not None and len(per_rank) == ddp.world_size():
            set_rng_state(per_rank[ddp.rank()])
        else:  # same or no world size as when saved: rank 0's stream
            set_rng_state(checkpoint["rng"])
        # The log restarts from the checkpoint: lines written after it by the interrupted run go.
        if self.main:
            self.log.rewrite(self.history)

    def save(self) -> None:
        state = self.state_dict()  # on every rank: it gathers the ranks' RNG states
        if self.main:
            atomic_save(state, self.run_dir / LAST, keep_previous=self.run_dir / PREVIOUS)

    # ----- loaders -----
    def loader(self, split: str, *, shuffle: bool = False, stream: int = 0) -> DataLoader:
        """One epoch's loader. Under torch.distributed: with ``shuffle`` (the training steps) a
        DistributedSampler, which pads the last shard with repeats so that every rank takes the
        same number of steps (DDP needs it); without (memory pass, evaluation) this rank's
        contiguous shard without padding, so that no sample is counted twice."""
        dataset = self.datasets[split]
        batch_size = self.settings.batch_size
        seed = epoch_seed(self.settings.seed, self.epoch, stream)
        # the loader's generator seeds its workers' augmentations: one stream per rank
        worker_seed = epoch_seed(self.settings.seed, self.epoch, stream + 1000 * ddp.rank())
        generator = torch.Generator().manual_seed(worker_seed)
        sampler = None
        if self.distributed and shuffle:
            sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=False)  # epoch 0: the seed is per epoch
            shuffle = False
        elif self.distributed:
            dataset = Subset(dataset, ddp.shard_indices(len(dataset)))
        length = len(sampler) if sampler is not None else len(dataset)
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.settings.workers,
            collate_fn=self.task.collate, generator=generator, pin_memory=self.device.type == "cuda",
            drop_last=split == "train" and drops_last_batch(length, batch_size),
        )

    def _training_inputs(self, inputs) -> tuple[tuple, torch.Tensor | None]:
        """(inputs, ConR's views or None) of a training-set batch: with ConR the two views come
        last (images.collate_images)."""
        if self.settings.methods.conr:
            return tuple(inputs[:-1]), inputs[-1]
        return inputs, None

    def _to_device(self, inputs, labels):
        return tuple(x.to(self.device, non_blocking=True) for x in inputs), labels.to(self.device, non_blocking=True)

    # ----- training -----
    def finished(self) -> bool:
        return self.stopped or (self.settings.epoch is not None and self.epoch >= self.settings.epoch)

    def fit(self) -> None:
        while not self.finished():
            self.train_epoch()
            self.save()
        if self.last_validated_step != self.global_step:
            self.validate()
            self.save()

    def train_epoch(self) -> None:
        s = self.settings
        m = s.methods
        use_srl = self.srl_loss is not None and self.epoch >= s.warmup
        # The memory is needed from the first SRL epoch on: fill it from the epoch before.
        feed_memory = self.memory is not None and self.epoch + 1 >= s.warmup
        online = feed_memory and s.memory_update == "online"
        fds = self.model.fds if m.fds else None
        # The training forward gets the labels and the epoch for FDS, and returns h for RankSim and ConR.
        forward_options = {"labels": None, "epoch": self.epoch, "return_h": m.ranksim and m.ranksim_features == "h"}
        self.model.train()
        sums = {"loss": 0.0, "regression": 0.0, "srl_total": 0.0, "contrastive": 0.0, "enveloping": 0.0, "homogeneity": 0.0}
        sums.update({key: 0.0 for key, on in (("ranksim", m.ranksim), ("conr", m.conr)) if on})
        shares: list[dict[str, float]] = []  # the SRL gradient share at the measured steps
        num_steps = 0
        val_seconds = 0.0  # of the validations inside the epoch, kept out of train_seconds
        started = time.perf_counter()
        self.in_epoch = True
        batches = progress(self.loader("train", shuffle=True), s.progress and self.main, f"epoch {self.epoch_number}")
        for inputs, labels in batches:
            inputs, views = self._training_inputs(inputs)
            inputs, labels = self._to_device(inputs, labels)
            if m.any:
                outputs = self.train_model(*inputs, **{**forward_options, "labels": labels if fds is not None else None})
                predictions, features = outputs[:2]
            else:
                predictions, features = self.train_model(*inputs)
            if not self._all_finite(predictions, features):
                self._diverged("the predictions or features are not finite")
            regression = self.regression(predictions, labels)
            loss = regression
            if m.ranksim:
                ranked = outputs[2] if m.ranksim_features == "h" else features
                term = methods.ranksim_loss(ranked, labels, interpolation_lambda=m.interpolation_lambda)
                loss = loss + m.regularization_weight * term
                sums["ranksim"] += term.detach()
            if m.conr:
                loss = loss + m.conr_beta * self.conr_term(views.to(self.device, non_blocking=True), labels)
                sums["conr"] += self._last_conr
            bins = self.task.label_bins(labels) if (use_srl or online) else None
            if use_srl:
                try:
                    if self.task.table_rule is None:
                        terms = self.srl_loss(features, bins, self.memory.table)
                    else:
                        surrogates, positives = self.task.table_rule(features, labels, self.memory.table)
                        terms = self.srl_loss.terms_from_table(features, positives, surrogates)
                except ValueError as error:  # finite features whose norms overflow: the model blew up
                    if "argument 'features'" not in str(error):
                        raise
                    self._diverged(f"the features' norms overflow ({error})")
                loss = loss + terms.total  # on top of the RankSim and ConR terms
                if self._measures_gradient_share():
                    shares.append(analysis.gradient_share(regression, terms.total, self.shared_parameters))
                for key in ("contrastive", "enveloping", "homogeneity"):
                    sums[key] += getattr(terms, key).detach()
                sums["srl_total"] += terms.total.detach()
            if not self._all_finite(loss):
                self._diverged(f"the loss is {float(loss.detach())}")
            if online:
                self.memory.accumulate(features.detach(), bins)
            self.optimizer.zero_grad(set_to_none=True)
            if self.sigma_optimizer is not None:
                self.sigma_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if s.grad_clip is not None:  # sigma is left out, as released
                nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.optimizer.step()
            if self.sigma_optimizer is not None:
                if self.distributed:  # sigma is outside the DDP-wrapped model: average its gradient here
                    grad = self.balanced_mse.noise_sigma.grad
                    torch.distributed.all_reduce(grad)
                    grad /= ddp.world_size()
                self.sigma_optimizer.step()
            sums["loss"] += loss.detach()  # tensors: no device sync per step
            sums["regression"] += regression.detach()
            num_steps += 1
            self.global_step += 1
            if self.main and self.log.writer is not None:  # per-step losses for TensorBoard
                self.log.step(self.global_step, loss=loss.detach(), regression=regression.detach(),
                              srl_total=terms.total.detach() if use_srl else None)
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
            if s.eval_every and self.global_step % s.eval_every == 0:
                validation_started = time.perf_counter()
                self.validate()
                val_seconds += time.perf_counter() - validation_started
                self.model.train()
                if self.stopped:
                    break
        train_seconds = time.perf_counter() - started - val_seconds
        memory_seconds = 0.0
        # One pass at the end of the epoch serves the memory (epoch_pass mode) and FDS's statistics.
        pass_memory = feed_memory and s.memory_update == "epoch_pass"
        pass_fds = fds is not None and fds.wants_statistics(self.epoch)
        if (feed_memory or fds is not None) and not self.stopped:
            started = time.perf_counter()
            if pass_memory or pass_fds:
                self.memory_pass(memory=pass_memory, fds=pass_fds)
            if feed_memory:
                self.memory.update()
            if fds is not None:
                fds.update(self.epoch)
            memory_seconds = time.perf_counter() - started
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        self.in_epoch = False
        sums = ddp.mean_over_ranks(sums, self.device)  # the logged losses (the SRL terms are global already)
        record = {"split": "train", "epoch": self.epoch, "step": self.global_step, "lr": lr, "srl_on": use_srl,
                  "train_seconds": train_seconds, "memory_seconds": memory_seconds, "val_seconds": val_seconds}
        record.update({key: float(value) / max(num_steps, 1) for key, value in sums.items()})
        if self.balanced_mse is not None:
            record["noise_sigma"] = float(self.balanced_mse.noise_sigma.detach())
        if shares:
            record.update({f"srl_grad_{key}": float(np.mean([share[key] for share in shares])) for key in ("ratio", "cosine")})
            record["srl_grad_steps"] = len(shares)
        self._log(record)
        if not s.eval_every and not self.stopped:
            self.validate()

    def _measures_gradient_share(self) -> bool:
        """Whether this step measures the SRL gradient share: every ``grad_share_every`` steps, in
        one process only (torch.autograd.grad bypasses DistributedDataParallel's reducer)."""
        every = self.settings.grad_share_every
        return bool(every) and not self.distributed and self.global_step % every == 0

    @property
    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters both the regression loss and the SRL terms reach: the model's,
        less its heads (regressor, projector) and FDS."""
        heads = {id(p) for name in ("regressor", "projector", "fds") if getattr(self.model, name, None) is not None
                 for p in getattr(self.model, name).parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in heads]

    def _all_finite(self, *tensors: torch.Tensor) -> bool:
        """Whether every value is finite on every rank (one host sync per call; under
        torch.distributed one small all-reduce, so that all ranks stop together)."""
        flag = torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all().to(torch.int32)
        if self.distributed:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag)

    def _diverged(self, what: str) -> None:
        """Stop: the step's weights are not saved, the last good checkpoint stays as it is."""
        last = self.run_dir / LAST
        # last.pt is written at the end of every epoch: it holds the self.epoch epochs finished
        kept = (f"the last good checkpoint is {last} (after epoch {self.epoch})"
                if last.is_file() else "no checkpoint was saved yet (it diverged in the first epoch)")
        raise TrainingDiverged(
            f"training diverged at epoch {self.epoch + 1}, step {self.global_step + 1}: {what}; {kept}; try a lower "
            f"--lr (now {self.settings.lr:g})" + ("" if self.settings.grad_clip else " or --grad_clip")
        )

    def conr_term(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ConR on the batch's two augmented views (2B rows, view 1 then view 2): a second forward
        without FDS, h of the views, their detached predictions in label units, LDS weights
        repeated when LDS is on."""
        predictions, _, h = self.train_model(views, return_h=True)
        weights = self.lds_weights(labels)
        m = self.settings.methods
        term = methods.conr_loss(
            h, torch.cat([labels, labels]), (predictions.detach() * self.task.target_scale),
            weights=None if weights is None else torch.cat([weights, weights]), w=m.conr_w, e=m.conr_e,
        )
        self._last_conr = term.detach()
        return term

    @torch.no_grad()
    def memory_pass(self, memory: bool = True, fds: bool = False) -> None:
        """The released code's refill: one pass over the training set, train mode (augmentations
        and dropout on), no gradient, every batch's features into the memory and, for FDS, every
        batch's h (uncalibrated; calibrated with FDS's ``inplace``, released quirk (b)) and labels
        into FDS's statistics."""
        self.model.train()
        self._sync_buffers()
        name = "memory pass" if memory else "FDS statistics pass"
        for inputs, labels in progress(self.loader("train", stream=1), self.settings.progress and self.main,
                                       f"{name}, epoch {self.epoch_number}"):
            inputs, labels = self._to_device(self._training_inputs(inputs)[0], labels)
            if fds:
                # released quirk (b): the calibration overwrites h, so the pass records the calibrated h
                calibrated = {"labels": labels, "epoch": self.epoch} if self.model.fds.inplace else {}
                _, features, h = self.model(*inputs, return_h=True, **calibrated)
                self.model.fds.accumulate(h, labels)
            else:
                _, features = self.model(*inputs)
            if memory:
                self.memory.accumulate(features, self.task.label_bins(labels))

    # ----- evaluation -----
    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) in label units over one split, eval mode; under torch.distributed
        each rank predicts its shard and every rank gets the whole split, in order."""
        self.model.eval()
        self._sync_buffers()
        predictions, labels = [], []
        for inputs, batch_labels in self.loader(split, stream=2):
            inputs, _ = self._to_device(inputs, batch_labels)
            batch_predictions, _ = self.model(*inputs)
            predictions.append(batch_predictions.float() * self.task.target_scale)
            labels.append(batch_labels.float().to(self.device))
        empty = torch.zeros(0, device=self.device)  # a rank whose shard is empty still gathers
        predictions = ddp.gather_tensors(torch.cat(predictions) if predictions else empty)
        labels = ddp.gather_tensors(torch.cat(labels) if labels else empty)
        return predictions.cpu().numpy(), labels.cpu().numpy()

    def _sync_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank: the ranks' last training or
        memory-pass forwards updated their own, and the model that is evaluated is rank 0's."""
        ddp.broadcast_buffers(self.model)

    def evaluate(self, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
        predictions, labels = self.predict(split)
        bins = self.task.label_bins(torch.from_numpy(labels)).numpy()
        table = dir_metrics.dir_metrics(
            predictions, labels, bins, self.task.bin_groups, gm_floor=self.task.gm_floor, correlations=self.task.correlations
        )
        return table, predictions, labels

    @property
    def epoch_number(self) -> int:
        """The epoch as every line, log record and title numbers it: from 1, the epoch being
        trained (a validation inside epoch 3 is in epoch 3) or, between epochs, the last one."""
        return self.epoch + 1 if self.in_epoch else self.epoch

    def validate(self) -> dict:
        table, _, _ = self.evaluate("val")
        row, metric = self.task.selection
        value = table[row][metric]
        # Every rank computed the same table from the gathered predictions; rank 0's decision is
        # broadcast all the same, so that the ranks cannot part ways (one stopping, one training on).
        improved = bool(ddp.broadcast_object(self.best is None or value < self.best["value"]))
        if improved:
            self.best = {"value": value, "epoch": self.epoch_number, "step": self.global_step}
            self.bad_validations = 0
            if self.main:
                atomic_save({"format": CHECKPOINT_FORMAT, "config": self.config, "model": self.model.state_dict(),
                             "best": self.best, "val": table, "data_fingerprint": self.data_fingerprint}, self.run_dir / BEST)
        else:
            self.bad_validations += 1
        self.val_scores.append(value)
        s = self.settings
        if out_of_patience(self.val_scores, s.patience, s.early_stop) or (
            s.max_validations is not None and len(self.val_scores) >= s.max_validations
        ):
            self.stopped = True
        self.last_validated_step = self.global_step
        record = {"split": "val", "epoch": self.epoch_number, "step": self.global_step, "selected": improved}
        record.update(dir_metrics.flatten(table))
        self._log(record)
        if self.main:
            print(
                f"val epoch {self.epoch_number} step {self.global_step}: {row} {metric.upper()} {value:.4f}"
                f" (best {self.best['value']:.4f} at step {self.best['step']})" + (" - early stop" if self.stopped else ""),
                flush=True,
            )
        return table

    def test(self) -> dict:
        """Load the selected model (best.pt), evaluate the test set once, write the report."""
        title = None
        if self.main:  # rank 0 reads its best.pt and sends the weights: no shared file system needed
            checkpoint, _ = load_checkpoint(self.run_dir, BEST)
            self.model.load_state_dict(checkpoint["model"])
            title = f"test, model selected at epoch {checkpoint['best']['epoch']} step {checkpoint['best']['step']}"
        if self.distributed:
            for tensor in self.model.state_dict().values():
                ddp.broadcast_(tensor)
        return self.report(title=ddp.broadcast_object(title))

    def report(self, title: str = "test", out_dir: Path | None = None, suffix: str = "") -> dict:
        """Test table printed and saved as JSON, and the per-label error plot, in ``out_dir``
        (``suffix`` in their names: a table of other data than the run's)."""
        out_dir = Path(out_dir or self.run_dir)
        if self.config.get("demo"):
            title = f"{title} [SYNTHETIC DEMO DATA, not the benchmark]"
        table, predictions, labels = self.evaluate("test")
        if self.main:
            write_test_report(self.task, table, predictions, labels, title, out_dir, suffix,
                              synthetic=bool(self.config.get("demo")))
        return table

    def _log(self, record: dict) -> None:
        self.history.append(record)  # on every rank: the checkpoints are alike whichever rank wrote them
        if self.main:
            self.log.write(record)


def drops_last_batch(length: int, batch_size: int) -> bool:
    """A last training batch of one sample cannot pass BatchNorm in train mode: only that one is dropped."""
    return length % batch_size == 1


def train_steps(length: int, batch_size: int) -> int:
    """The training steps of an epoch over `length` samples (``Engine.loader``)."""
    return length // batch_size + (length % batch_size > 0 and not drops_last_batch(length, batch_size))


def feature_dim(model: nn.Module) -> int:
    """D of the model's projection head, read from its last Linear layer named 'projector'."""
    projector = getattr(model, "projector", None)
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)] if projector is not None else []
    if not linears:
        raise ValueError("model: expected a `projector` module ending in nn.Linear (the SRL feature head)")
    return linears[-1].out_features
