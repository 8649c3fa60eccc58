"""The one training engine of the DIR drivers: train, validate, select, test; checkpoint and resume.

A run lives in its own folder (``checkpoint.make_run_dir``): ``config.json``, ``metrics.jsonl`` (one
line per training epoch and per validation), ``last.pt`` (the whole state, written at the end of
every epoch, from which ``--resume`` continues exactly), ``best.pt`` (the model selected on
validation), ``test_metrics.json`` and ``test_errors.png`` (the test set, evaluated once on
``best.pt``), and TensorBoard event files when tensorboard is installed.

Exact resumption: the checkpoint holds the model, optimiser, scheduler, anchors, surrogate memory,
early-stopping state, log history and every RNG state; the loaders' shuffling is seeded from
(seed, epoch), so the epochs after a resume see the data in the same order as an unbroken run.

A training step is composed of parts of one interface (step_parts.py): the regression loss with
its weighting (LDS weights per label bin; Balanced MSE in its place, its sigma in an Adam of its
own, no schedule, saved in ``last.pt``), each method's extra term (RankSim, ConR) and the SRL
terms. FDS is a submodule of the model, built with it (``model.fds``, its buffers in the model's
state), calibrating h before the regressor; its statistics come from the end-of-epoch pass that
also refills the SRL memory (the pass runs for FDS in online memory mode too). Evaluation and
model selection are ``evaluation.Evaluation``, which the engine is.

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
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import analysis
from ..loss import SRLLoss
from ..memory import SurrogateMemory
from .. import distributed
from . import ddp
from .checkpoint import (CHECKPOINT_FORMAT, LAST, PREVIOUS, atomic_save, epoch_seed, rng_state,
                         seed_everything, set_rng_state)
from .config import Task, TrainConfig
from .run_config import RunConfig
from .errors import TrainingDiverged
from .ddp import training_device
from .evaluation import Evaluation
from .loaders import epoch_loader
from .models import feature_dim
from .reporting import RunLog, progress
from .step_parts import Batch, RegressionLoss, SRLTerm, method_terms, shared_parameters


class Engine(Evaluation):
    """Trains ``model`` on ``datasets["train"]``, selects it on ``datasets["val"]``, tests it once.

    ``model(*inputs)`` returns ``(predictions, features)``; ``features`` (B x D) feed the SRL terms
    and the surrogate memory.
    """

    def __init__(
        self,
        config: "RunConfig | dict",
        task: Task,
        model: nn.Module,
        datasets: dict[str, Dataset],
        run_dir: str | Path,
    ) -> None:
        self.config = RunConfig.from_dict(config)  # the run's settings, whole (run_config.py)
        self.settings = TrainConfig.from_dict(self.config.to_dict())
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
        # The step's parts (step_parts.py): the SRL terms, the regression loss with its weighting,
        # each method's extra term; FDS is on the model (built with it).
        self.srl: SRLTerm | None = None
        if s.srl:
            self.srl = SRLTerm(s, task, feature_dim(self.model), self.device, self.distributed, self._diverged)
            distributed.assert_same_across_ranks(self.srl.loss.anchors, "SRL anchors")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(s.lr_milestones), gamma=s.lr_gamma)
        self.regression = RegressionLoss(s, task, self.device)
        self.terms = method_terms(s, self.train_model, self.regression, task, self.device, self.distributed)
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

    @property
    def srl_loss(self) -> SRLLoss | None:
        """The SRL loss with its anchors (None without SRL)."""
        return None if self.srl is None else self.srl.loss

    @property
    def memory(self) -> SurrogateMemory | None:
        """The surrogate memory (None without SRL)."""
        return None if self.srl is None else self.srl.memory

    # ----- state -----
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "srl_loss": None if self.srl_loss is None else self.srl_loss.state_dict(),  # the anchors
            "memory": None if self.memory is None else self.memory.state_dict(),
            # Balanced MSE: sigma (and its table), sigma's optimiser (FDS's buffers are in "model")
            **self.regression.state_dict(),
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
        self.regression.load_state_dict(checkpoint)
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
        """One epoch's loader of ``split`` (``loaders.epoch_loader``), seeded from (seed, epoch, stream)."""
        return epoch_loader(self.datasets[split], self.settings, self.epoch, stream, shuffle=shuffle,
                            train=split == "train", distributed=self.distributed, collate=self.task.collate,
                            pin_memory=self.device.type == "cuda")

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
        """One epoch: the training steps (with the validations every ``eval_every`` steps), the
        end-of-epoch pass for the memory and FDS, the lr schedule, the epoch's log record."""
        s = self.settings
        if self.srl is not None:
            self.srl.start_epoch(self.epoch)
        self.model.train()
        sums = {"loss": 0.0, "regression": 0.0, "srl_total": 0.0, "contrastive": 0.0, "enveloping": 0.0, "homogeneity": 0.0}
        sums.update({term.name: 0.0 for term in self.terms})
        shares: list[dict[str, float]] = []  # the SRL gradient share at the measured steps
        num_steps = 0
        val_seconds = 0.0  # of the validations inside the epoch, kept out of train_seconds
        started = time.perf_counter()
        self.in_epoch = True
        batches = progress(self.loader("train", shuffle=True), s.progress and self.main, f"epoch {self.epoch_number}")
        for inputs, labels in batches:
            loss, regression = self.train_step(inputs, labels, sums, shares)
            sums["loss"] += loss.detach()  # tensors: no device sync per step
            sums["regression"] += regression.detach()
            num_steps += 1
            self.global_step += 1
            if self.main and self.log.writer is not None:  # per-step losses for TensorBoard
                self.log.step(self.global_step, loss=loss.detach(), regression=regression.detach(),
                              srl_total=None if self.srl is None else self.srl.last_total)
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
        memory_seconds = self._end_of_epoch_pass()
        record = {"split": "train", "epoch": self.epoch + 1, "step": self.global_step,
                  "lr": self.optimizer.param_groups[0]["lr"], "srl_on": self.srl is not None and self.srl.on,
                  "train_seconds": train_seconds, "memory_seconds": memory_seconds, "val_seconds": val_seconds}
        self.scheduler.step()
        self.epoch += 1
        self.in_epoch = False
        sums = ddp.mean_over_ranks(sums, self.device)  # the logged losses (the SRL terms are global already)
        record.update({key: float(value) / max(num_steps, 1) for key, value in sums.items()})
        self.regression.log(record)
        if shares:
            record.update({f"srl_grad_{key}": float(np.mean([share[key] for share in shares])) for key in ("ratio", "cosine")})
            record["srl_grad_steps"] = len(shares)
        self._log(record)
        if not s.eval_every and not self.stopped:
            self.validate()

    def train_step(self, inputs, labels: torch.Tensor, sums: dict, shares: list) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch: the forward, the regression loss and the parts' terms,
        the divergence checks, the backward and the optimisers' steps; returns (loss, regression)."""
        m, srl = self.settings.methods, self.srl
        inputs, views = self._training_inputs(inputs)
        inputs, labels = self._to_device(inputs, labels)
        outputs = self.train_model(*inputs, **self._forward_options(labels)) if m.any else self.train_model(*inputs)
        predictions, features = outputs[:2]
        if not self._all_finite(predictions, features):
            self._diverged("the predictions or features are not finite")
        regression = self.regression(predictions, labels)
        batch = Batch(labels, predictions, features, outputs[2] if len(outputs) > 2 else None, views, regression)
        loss = regression
        for term in self.terms:  # each method's extra term, in order
            loss = loss + term(batch, sums)
        if srl is not None:
            batch.bins = self.task.label_bins(labels) if (srl.on or srl.online) else None
            srl.gradient_share = (lambda regression_loss, total: shares.append(
                analysis.gradient_share(regression_loss, total, self.shared_parameters))
            ) if self._measures_gradient_share() else None
            total = srl(batch, sums)
            if total is not None:
                loss = loss + total  # on top of the RankSim and ConR terms
        if not self._all_finite(loss):
            self._diverged(f"the loss is {float(loss.detach())}")
        if srl is not None:
            srl.accumulate(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.regression.zero_grad()
        loss.backward()
        if self.settings.grad_clip is not None:  # sigma is left out, as released
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.regression.step(self.distributed)
        return loss, regression

    def _forward_options(self, labels: torch.Tensor) -> dict:
        """The training forward's options with a method on: the labels and the epoch for FDS, h
        returned for RankSim on h."""
        m = self.settings.methods
        return {"labels": labels if m.fds else None, "epoch": self.epoch,
                "return_h": m.ranksim and m.ranksim_features == "h"}

    def _end_of_epoch_pass(self) -> float:
        """One pass at the end of the epoch serves the memory (epoch_pass mode) and FDS's
        statistics; both are then folded in. Returns its seconds."""
        s, srl = self.settings, self.srl
        fds = self.model.fds if s.methods.fds else None
        feed_memory = srl is not None and srl.feeds_memory
        if not (feed_memory or fds is not None) or self.stopped:
            return 0.0
        started = time.perf_counter()
        pass_memory = feed_memory and s.memory_update == "epoch_pass"
        pass_fds = fds is not None and fds.wants_statistics(self.epoch)
        if pass_memory or pass_fds:
            self.memory_pass(memory=pass_memory, fds=pass_fds)
        if feed_memory:
            self.memory.update()
        if fds is not None:
            fds.update(self.epoch)
        return time.perf_counter() - started

    def _measures_gradient_share(self) -> bool:
        """Whether this step measures the SRL gradient share: every ``grad_share_every`` steps, in
        one process only (torch.autograd.grad bypasses DistributedDataParallel's reducer)."""
        every = self.settings.grad_share_every
        return bool(every) and not self.distributed and self.global_step % every == 0

    @property
    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters both the regression loss and the SRL terms reach."""
        return shared_parameters(self.model)

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

    @property
    def epoch_number(self) -> int:
        """The epoch as every line, log record and title numbers it: from 1, the epoch being
        trained (a validation inside epoch 3 is in epoch 3) or, between epochs, the last one."""
        return self.epoch + 1 if self.in_epoch else self.epoch

    def _log(self, record: dict) -> None:
        self.history.append(record)  # on every rank: the checkpoints are alike whichever rank wrote them
        if self.main:
            self.log.write(record)
