"""The training application of the DIR drivers in ``train/``: built on the library ``srl_ext``,
which never imports it.

- ``config``: the released training recipes, ``TrainConfig`` (a run's settings) and ``Task``.
- ``engine``: ``Engine``, the one loop: train, refill the memory, validate and select, test.
- ``checkpoint``: run folders, checkpoint files, RNG state; ``reporting``: logs, report, plot.
- ``ddp``: process setup under torchrun; ``data``: the datasets; ``models``: the networks.
- ``cli``: the drivers' shared flags and ``run``.
"""
