"""The training application of the DIR drivers in ``train/``: built on the library ``srl_ext``,
which never imports it.

- ``benchmarks``: one ``Benchmark`` record per benchmark (data, model, flags, demo, released facts).
- ``run``: running a run (train, resume, evaluate, a released file, torchrun); builds the ``Engine``.
- ``cli`` and ``flags``: the drivers' flags, their parsing and checks; ``run_checks``: checkpoints'.
- ``config``: the released training recipes, ``TrainConfig``, ``MethodSettings``, ``Task``.
- ``engine``: ``Engine``, the one loop, its step made of ``step_parts``; ``evaluation``: validation,
  selection and test; ``loaders``: the epoch loaders.
- ``checkpoint``: run folders, checkpoint files, RNG state; ``reporting``: logs, report, plot.
- ``ddp``: process setup under torchrun; ``data``: the datasets; ``models``: the networks.
- ``released_checkpoints``: the SRL authors' released files, read safely and mapped onto our models.
"""
