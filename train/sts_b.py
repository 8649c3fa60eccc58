"""Train and evaluate a BiLSTM on STS-B-DIR with SRL (or the plain regression baseline).

`python train/sts_b.py --help` lists the flags. The driver is srl_ext.training.run.main on the
STS-B-DIR record of srl_ext.training.benchmarks: parse the flags, load the data, build the model
and the loss, train with validation and model selection, test the selected model.
"""

import sys

from srl_ext.training import run
from srl_ext.training.benchmarks import STS_B as BENCHMARK
from srl_ext.training.cli import command


def parser():
    return run.parser(BENCHMARK)


def build(config: dict):
    """(task, model, datasets) of a run's config."""
    return BENCHMARK.build(config)


def main(argv=None) -> dict:
    """The whole run; returns the test table."""
    return run.main(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(command(main))
