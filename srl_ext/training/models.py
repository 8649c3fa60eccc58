"""Models of the DIR benchmarks (docs/method.md, "DIR protocol"; docs/training.md for each model).

Every model returns ``(predictions, features)``: ``predictions`` B regression outputs read from
the backbone feature h, ``features`` B x 128 outputs of a separate projection head, which the SRL
terms act on. For the methods that compose with SRL (docs/methods.md) the training forward
also takes the batch's ``labels`` and the ``epoch`` (an ``FDS`` module in ``model.fds``
calibrates h before the regressor, the projection head reads the raw h) and, with
``return_h``, returns h third. ``feature_width`` is h's width.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 128  # D: the projection head's output, where the SRL terms act
IMAGE_BACKBONES = ("resnet50", "resnet18", "tiny")


class TinyConvNet(nn.Module):
    """A few-thousand-parameter conv net for quick runs and tests (any input size)."""

    out_features = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, self.out_features, 3, stride=2, padding=1), nn.BatchNorm2d(self.out_features),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def image_backbone(name: str) -> tuple[nn.Module, int]:
    """(backbone giving B x F features, F), trained from scratch (no pretrained weights)."""
    if name == "tiny":
        return TinyConvNet(), TinyConvNet.out_features
    if name in ("resnet50", "resnet18"):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        width = net.fc.in_features
        net.fc = nn.Identity()
        return net, width
    raise ValueError(f"backbone must be one of {', '.join(map(repr, IMAGE_BACKBONES))}, got {name!r}")


def regress_and_project(model: nn.Module, h: torch.Tensor, labels, epoch: int, return_h: bool):
    """(predictions, features[, h]) of a model with ``regressor``, ``projector`` and ``fds`` (an
    FDS module or None): FDS calibrates h for the regressor only, when given the labels."""
    regressor_input = h
    if model.fds is not None and labels is not None:
        regressor_input = model.fds.smooth(h, labels, epoch)
    predictions = model.regressor(regressor_input).squeeze(1)
    if return_h:
        return predictions, model.projector(h), h
    return predictions, model.projector(h)


class ImageRegressor(nn.Module):
    """Backbone, then a Linear regressor and a Linear F -> 128 projection head side by side."""

    def __init__(self, backbone: str = "resnet50", feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.backbone, width = image_backbone(backbone)
        self.feature_width = width
        self.regressor = nn.Linear(width, 1)
        self.projector = nn.Linear(width, feature_dim)
        self.fds: nn.Module | None = None  # an srl_ext.methods.FDS on h, set by the engine with --fds

    def forward(self, images: torch.Tensor, *, labels: torch.Tensor | None = None, epoch: int = 0,
                return_h: bool = False):
        return regress_and_project(self, self.backbone(images), labels, epoch, return_h)


class SentenceEncoder(nn.Module):
    """Frozen word vectors, dropout, a bidirectional LSTM, dropout on its outputs, max-pooled over
    the tokens. The released encoder drops both the word vectors and the LSTM outputs (0.2 each)."""

    def __init__(
        self, embeddings: torch.Tensor, hidden_size: int, num_layers: int, embedding_dropout: float,
        output_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        self.dropout = nn.Dropout(embedding_dropout)
        self.lstm = nn.LSTM(embeddings.shape[1], hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.output_dropout = nn.Dropout(output_dropout)
        self.out_features = 2 * hidden_size

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        words = self.dropout(self.embedding(ids))
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=ids.shape[1])
        states = self.output_dropout(states)
        padding = torch.arange(ids.shape[1], device=ids.device)[None, :] >= lengths.to(ids.device)[:, None]
        return states.masked_fill(padding.unsqueeze(2), float("-inf")).amax(dim=1)


REGRESSOR_HEADS = ("linear", "mlp")


class SentencePairRegressor(nn.Module):
    """STS-B: one BiLSTM encodes both sentences to u and v; the pair feature [u, v, |u-v|, u*v]
    (8 x hidden wide: 12000 for hidden 1500) feeds the regressor and the projection head
    Linear(8H -> 128), ReLU, Linear(128 -> 128).

    ``regressor="linear"`` is the released model's head, one Linear(8H -> 1). ``"mlp"`` is a
    one-hidden-layer head this project used before (dropout, Linear(8H -> 512), tanh, LayerNorm,
    dropout, Linear(512 -> 1)), kept to compare against.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        hidden_size: int = 1500,
        num_layers: int = 2,
        embedding_dropout: float = 0.2,
        lstm_dropout: float = 0.2,
        regressor: str = "linear",
        regressor_hidden: int = 512,
        regressor_dropout: float = 0.2,
        feature_dim: int = FEATURE_DIM,
    ) -> None:
        super().__init__()
        if regressor not in REGRESSOR_HEADS:
            raise ValueError(f"regressor must be one of {', '.join(map(repr, REGRESSOR_HEADS))}, got {regressor!r}")
        self.encoder = SentenceEncoder(embeddings, hidden_size, num_layers, embedding_dropout, lstm_dropout)
        width = 4 * self.encoder.out_features
        self.feature_width = width
        self.fds: nn.Module | None = None  # an srl_ext.methods.FDS on the pair feature, set by the engine with --fds
        if regressor == "linear":
            self.regressor = nn.Linear(width, 1)
        else:
            self.regressor = nn.Sequential(
                nn.Dropout(regressor_dropout), nn.Linear(width, regressor_hidden), nn.Tanh(),
                nn.LayerNorm(regressor_hidden), nn.Dropout(regressor_dropout), nn.Linear(regressor_hidden, 1),
            )
        self.projector = nn.Sequential(nn.Linear(width, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, feature_dim))

    def forward(self, ids1, lengths1, ids2, lengths2, *, labels: torch.Tensor | None = None, epoch: int = 0,
                return_h: bool = False):
        u = self.encoder(ids1, lengths1)
        v = self.encoder(ids2, lengths2)
        pair = torch.cat([u, v, (u - v).abs(), u * v], dim=1)
        return regress_and_project(self, pair, labels, epoch, return_h)


def feature_dim(model: nn.Module) -> int:
    """D of the model's projection head, read from its last Linear layer named 'projector'."""
    projector = getattr(model, "projector", None)
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)] if projector is not None else []
    if not linears:
        raise ValueError("model: expected a `projector` module ending in nn.Linear (the SRL feature head)")
    return linears[-1].out_features
