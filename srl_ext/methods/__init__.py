"""Methods that compose with SRL (SRL+X): LDS, FDS, RankSim, Balanced MSE and ConR.

Each follows its released code, with the released quirks as documented options (off unless
stated); docs/methods.md gives the math, the released defaults per benchmark and how each hooks
into a training loop. This package does not depend on the training application.

- ``lds_weights`` and the ``weighted_*_loss`` functions: label-distribution-smoothed sample
  weights for the regression loss (``LDS_RELEASED``: the released settings per benchmark).
- ``FDS``: feature calibration on the regressor's input, statistics from one pass per epoch
  (``FDS_RELEASED``).
- ``ranksim_loss``: the batch ranking-similarity term (``TrueRanker``, ``rank_normalised``).
- ``BalancedMSE``: the "bmc" / "bni" / "gai" loss with a learnable noise scale
  (``bni_buckets``, ``fit_gmm`` build its tables).
- ``conr_loss``: the contrastive term on two augmented views.
"""

from .balanced_mse import BalancedMSE, bmc_loss, bni_buckets, bni_loss, fit_gmm, gai_loss
from .conr import conr_loss
from .fds import FDS, FDS_RELEASED
from .lds import (
    LDS_RELEASED,
    WEIGHTED_LOSSES,
    label_bins,
    lds_weights,
    weighted_focal_l1_loss,
    weighted_focal_mse_loss,
    weighted_huber_loss,
    weighted_l1_loss,
    weighted_mse_loss,
)
from .ranksim import TrueRanker, rank_normalised, ranksim_loss
from .smoothing import kernel_window

__all__ = [
    "BalancedMSE", "FDS", "FDS_RELEASED", "LDS_RELEASED", "TrueRanker", "WEIGHTED_LOSSES", "bmc_loss", "bni_buckets",
    "bni_loss", "conr_loss", "fit_gmm", "gai_loss", "kernel_window", "label_bins", "lds_weights", "rank_normalised",
    "ranksim_loss", "weighted_focal_l1_loss", "weighted_focal_mse_loss", "weighted_huber_loss", "weighted_l1_loss",
    "weighted_mse_loss",
]
