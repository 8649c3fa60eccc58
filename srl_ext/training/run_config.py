"""A run's settings as one typed, frozen value: ``RunConfig``, built once from the parsed flags.

Six sections, one per concern: ``data`` (what is read), ``model`` (the benchmark's own flags:
its network and data options), ``optimisation`` (the recipe: loss, schedule, stopping), ``srl``
(the SRL terms: ``SRLSettings`` and their memory and kernels), ``methods`` (LDS, FDS, RankSim,
Balanced MSE, ConR: ``MethodSettings``) and ``run`` (where and how the process runs).

Inside, every setting has one name, its field's; outside, a run's config is the flat dict of the
drivers' flag destinations (``to_dict``): what ``config.json`` and the checkpoints hold, what
older runs saved and what the tools read. The flat names differ from the fields only in
``config.SRL_FLAG_NAMES`` (``temp`` is ``srl.loss.temperature``). ``from_dict`` reads today's
dicts and older ones: a key an older run lacks reads as the default it ran with
(``config.method_settings``, ``config.srl_settings``, the fields' defaults), and stays absent from
``to_dict``, so that the code that reads an absence as the earlier behaviour
(``run_checks.merge_saved_config``) sees what it saw. The flat keys are also read through
``config[key]`` / ``config.get(key)`` (a read-only mapping), for the readers not yet moved to the
sections.

The config saved in a checkpoint is versioned with the checkpoint (``checkpoint.CHECKPOINT_FORMAT``);
``from_dict(values, format=...)`` refuses a newer one naming both.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..settings import FIELDS as SRL_FIELDS
from ..settings import SRLSettings
from .checkpoint import CHECKPOINT_FORMAT
from .config import METHOD_FIELDS, SRL_FLAG_NAMES, MethodSettings, method_settings, srl_settings
from .errors import CheckpointError


@dataclass(frozen=True)
class DataSection:
    preset: str = ""  # the benchmark: "agedb", "imdb_wiki" or "sts_b"
    data_dir: str | None = None
    workers: int = 0  # data loader processes
    demo: bool = False  # --demo: a small synthetic dataset under runs_dir
    data_changed: bool = False  # --resume on data changed since the run started


@dataclass(frozen=True)
class ModelSection:
    """The flags a benchmark adds itself (``Benchmark.add_model_flags`` and its own options, such
    as STS-B's ``recipe`` or ``released_table``): their names and types are the benchmark's."""

    flags: tuple[tuple[str, Any], ...] = ()

    def __getitem__(self, name: str) -> Any:
        return dict(self.flags)[name]


@dataclass(frozen=True)
class OptimisationSection:
    regression_loss: str = "l1"
    batch_size: int = 64
    lr: float = 2.5e-4
    weight_decay: float = 0.0
    epoch: int | None = None  # None: until early stopping
    warmup: int = 0  # first epochs with the regression loss only
    lr_milestones: tuple[int, ...] | list[int] = ()
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    eval_every: int | None = None
    patience: int | None = None
    early_stop: str = "released"
    max_validations: int | None = None
    retrain_regressor: bool = False


@dataclass(frozen=True)
class SRLSection:
    srl: bool = True  # False: the plain regression baseline
    loss: SRLSettings = field(default_factory=SRLSettings)
    backend: str = "auto"
    memory_update: str = "epoch_pass"
    memory_momentum: float = 0.9
    memory_normalized: bool = False
    grad_share_every: int = 50


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    progress: bool = True
    debug: bool = False
    runs_dir: str = "runs"
    run_name: str | None = None
    resume: str | None = None
    evaluate: str | None = None
    trust_checkpoint: bool = False
    init_from: str | None = None
    init_from_srl: bool = False  # recorded with --init_from: whether that encoder was trained with SRL


_SECTIONS = {"data": DataSection, "optimisation": OptimisationSection, "srl": SRLSection, "run": RunSection}
# flat key -> (section, field); the SRL terms' settings in srl.loss, the methods' in methods
KEYS: dict[str, tuple[str, str]] = {
    **{f.name: (section, f.name) for section, cls in _SECTIONS.items() for f in fields(cls) if f.name != "loss"},
    **{SRL_FLAG_NAMES.get(name, name): ("srl.loss", name) for name in sorted(SRL_FIELDS)},
    **{name: ("methods", name) for name in METHOD_FIELDS},
}


@dataclass(frozen=True)
class RunConfig(Mapping):
    """One run's settings (module docstring). Build with ``from_dict``; change with ``replace``."""

    data: DataSection
    model: ModelSection
    optimisation: OptimisationSection
    srl: SRLSection
    methods: MethodSettings
    run: RunSection
    keys_given: tuple[str, ...] = ()  # the flat keys of the dict it was built from, in order

    @classmethod
    def from_dict(cls, values: Mapping, format: int = CHECKPOINT_FORMAT) -> "RunConfig":
        """The config of a flat dict (the parsed flags, or one a checkpoint saved in ``format``)."""
        if isinstance(values, RunConfig):
            return values
        if isinstance(format, int) and format > CHECKPOINT_FORMAT:
            raise CheckpointError(f"a run config of format {CHECKPOINT_FORMAT} or older (what this srl-ext reads) "
                                  f"expected, got format {format}: it was written by a newer srl-ext")
        values = dict(values)
        given = {section: {} for section in _SECTIONS}
        for key, value in values.items():
            if key in KEYS and KEYS[key][0] in given:
                given[KEYS[key][0]][KEYS[key][1]] = value
        sections = {section: cls_(**given[section]) for section, cls_ in _SECTIONS.items()}
        sections["srl"] = replace(sections["srl"], loss=srl_settings(values))
        model = ModelSection(tuple((key, value) for key, value in values.items() if key not in KEYS))
        return cls(model=model, methods=method_settings(values), keys_given=tuple(values), **sections)

    def to_dict(self) -> dict:
        """The flat dict of the drivers' flag destinations, the keys it was built from."""
        flat = {key: self[key] for key in self.keys_given}
        if "fds_clip" in flat:  # a list, as the flags and the saved configs hold it
            flat["fds_clip"] = list(flat["fds_clip"])
        return flat

    def replace(self, **flat) -> "RunConfig":
        """A copy with the flat keys ``flat`` set (added where new)."""
        return RunConfig.from_dict({**self.to_dict(), **flat})

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys_given:
            raise KeyError(key)
        if key not in KEYS:
            return self.model[key]
        section, name = KEYS[key]
        owner = self.srl.loss if section == "srl.loss" else getattr(self, section)
        return getattr(owner, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_given)

    def __len__(self) -> int:
        return len(self.keys_given)

    def __contains__(self, key: object) -> bool:
        return key in self.keys_given
