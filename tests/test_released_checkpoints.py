"""Checkpoints in the layout the SRL authors release, converted and evaluated (srl_ext.training.released_checkpoints).

The released files cannot be downloaded here, so each test builds one: a transcription of the
released model classes (yilei-wu/imbalanced-regression: agedb-dir/resnet.py and
imdb-wiki-dir/resnet.py for the ResNet with its FDS buffers, sts-b-dir/models.py for the STS-B
MultiTaskModel with its allennlp modules) with their parameter names and shapes, saved the way the
released train.py / trainer.py save it. The conversion must then give the transcription's
predictions on the same inputs.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_driver, write_agedb_images, write_sts_b_pairs
import torch.nn.functional as F
from torch import nn

from srl_ext.training import released_checkpoints as rc
from srl_ext.training.data import sts_b

pytest.importorskip("torchvision")  # our ImageRegressor's ResNet
ROOT = Path(__file__).resolve().parents[1]


# ----- transcription of the released image model (agedb-dir/resnet.py = imdb-wiki-dir/resnet.py) -----

class ReleasedFDS(nn.Module):
    """The FDS module's buffers (names, shapes); its smoothing acts in training only."""

    def __init__(self, feature_dim: int, bucket_num: int, bucket_start: int = 0) -> None:
        super().__init__()
        rows = bucket_num - bucket_start
        self.register_buffer("epoch", torch.zeros(1))
        for name in ("running_mean", "running_mean_last_epoch", "smoothed_mean_last_epoch"):
            self.register_buffer(name, torch.zeros(rows, feature_dim))
        for name in ("running_var", "running_var_last_epoch", "smoothed_var_last_epoch"):
            self.register_buffer(name, torch.ones(rows, feature_dim))
        self.register_buffer("num_samples_tracked", torch.zeros(rows))


class ReleasedBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ReleasedBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ReleasedResNet(nn.Module):
    """conv1, bn1, maxpool, layer1-4, AvgPool2d(7), ``linear`` regressor, ``projector``, ``FDS``."""

    def __init__(self, block, layers, fds_bins=None, feature_dim=128):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.linear = nn.Linear(512 * block.expansion, 1)
        self.projector = nn.Linear(512 * block.expansion, feature_dim)
        if fds_bins is not None:
            self.FDS = ReleasedFDS(feature_dim, fds_bins)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        """Eval mode: (regressor output B x 1, projector output)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        encoding = self.avgpool(x).view(x.size(0), -1)
        return self.linear(encoding), self.projector(encoding)


def released_resnet(depth=50, fds_bins=102, seed=0):
    """A released-layout ResNet with random weights, BatchNorm statistics and FDS buffers."""
    torch.manual_seed(seed)
    block, layers = (ReleasedBottleneck, [3, 4, 6, 3]) if depth == 50 else (ReleasedBasicBlock, [2, 2, 2, 2])
    model = ReleasedResNet(block, layers, fds_bins)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1234)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.normal_(0, (2.0 / fan_out) ** 0.5)
        if fds_bins is not None:
            for buffer in model.FDS.buffers():
                buffer.normal_()
    return model.eval()


def save_released_image(model, path, *, legacy=False, extra=None, drop=(), add=None, counters=True):
    """Save as the released train.py does: DataParallel state_dict (module. names) with epoch,
    model name, best loss and optimizer state."""
    wrapped = nn.DataParallel(model)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=2.5e-4)
    model.linear.weight.grad = torch.ones_like(model.linear.weight)
    optimizer.step()  # some optimizer state with tensors, as a trained file has
    model.linear.weight.grad = None
    state = wrapped.state_dict()
    if not counters:
        state = type(state)((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    for key in drop:
        del state[key]
    state.update(add or {})
    checkpoint = {"epoch": 90, "model": "resnet50", "best_loss": 7.25, "state_dict": state,
                  "optimizer": optimizer.state_dict()}
    checkpoint.update(extra or {})
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return path


# ----- transcription of the released STS-B model (sts-b-dir/models.py with allennlp 0.5 modules) -----

class ReleasedEmbedding(nn.Module):
    """allennlp's Embedding: one ``weight`` parameter (frozen: --train_words 0)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class ReleasedTextFieldEmbedder(nn.Module):
    """allennlp's BasicTextFieldEmbedder of the one token embedder "words"."""

    def __init__(self, weight):
        super().__init__()
        self.token_embedder_words = ReleasedEmbedding(weight)

    def forward(self, ids):
        return self.token_embedder_words(ids)


class ReleasedHighway(nn.Module):
    """allennlp's Highway (``_layers``: Linear(d, 2d) each), inside TimeDistributed (``_module``)."""

    def __init__(self, dim, num_layers):
        super().__init__()
        self._layers = nn.ModuleList([nn.Linear(dim, 2 * dim) for _ in range(num_layers)])

    def forward(self, x):
        for layer in self._layers:
            nonlinear, gate = layer(x).chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            x = gate * x + (1 - gate) * F.relu(nonlinear)
        return x


class ReleasedTimeDistributed(nn.Module):
    def __init__(self, module):
        super().__init__()
        self._module = module

    def forward(self, x):
        return self._module(x)


class ReleasedLSTMEncoder(nn.Module):
    """allennlp's PytorchSeq2SeqWrapper around nn.LSTM (``_module``, batch first): sorts by length,
    packs, runs, unpacks, restores the order; padded steps give zeros."""

    def __init__(self, input_size, hidden_size, num_layers):
        super().__init__()
        self._module = nn.LSTM(input_size, hidden_size, num_layers=num_layers, bidirectional=True, batch_first=True)

    def forward(self, inputs, mask):
        lengths = mask.long().sum(dim=1)
        sorted_lengths, order = lengths.sort(descending=True)
        packed = nn.utils.rnn.pack_padded_sequence(inputs.index_select(0, order), sorted_lengths.tolist(), batch_first=True)
        output, _ = self._module(packed)
        output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=inputs.shape[1])
        return output.index_select(0, order.argsort())


class ReleasedPairEncoder(nn.Module):
    """HeadlessPairEncoder: embed, highway, dropout, BiLSTM, dropout, max-pool, [u, v, |u-v|, u*v]."""

    def __init__(self, weight, hidden_size, num_layers, highway_layers=0, dropout=0.2):
        super().__init__()
        self._text_field_embedder = ReleasedTextFieldEmbedder(weight)
        self._highway_layer = ReleasedTimeDistributed(ReleasedHighway(weight.shape[1], highway_layers))
        self._phrase_layer = ReleasedLSTMEncoder(weight.shape[1], hidden_size, num_layers)
        self._dropout = nn.Dropout(dropout)

    def encode(self, ids):
        mask = (ids != 0).long()
        words = self._dropout(self._highway_layer(self._text_field_embedder(ids)))
        states = self._dropout(self._phrase_layer(words, mask.float()))
        return states.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1)[0]

    def forward(self, s1, s2):
        u, v = self.encode(s1), self.encode(s2)
        return torch.cat([u, v, (u - v).abs(), u * v], 1)


class ReleasedMultiTaskModel(nn.Module):
    """MultiTaskModel: ``pair_encoder``, ``FDS``, ``projector`` (Linear(8H -> 128), ReLU,
    Linear(128 -> 128); the released class writes 8H as 12000, its H being 1500) and the task's
    ``sts-b_pred_layer`` Linear(8H -> 1)."""

    def __init__(self, weight, hidden_size=8, num_layers=2, highway_layers=0, fds=True):
        super().__init__()
        self.pair_encoder = ReleasedPairEncoder(weight, hidden_size, num_layers, highway_layers)
        self.FDS = ReleasedFDS(128, 50) if fds else None
        self.projector = nn.Sequential(nn.Linear(8 * hidden_size, 128), nn.ReLU(), nn.Linear(128, 128))
        setattr(self, "sts-b_pred_layer", nn.Linear(8 * hidden_size, 1))

    def forward(self, s1, s2):
        """Eval mode: (logits B x 1 = score / 5, projector output)."""
        pair = self.pair_encoder(s1, s2)
        return getattr(self, "sts-b_pred_layer")(pair), self.projector(pair)


RELEASED_TOKENS = ["@@PADDING@@", "@@UNKNOWN@@", "a", ".", "man", "is", "The", "the", "playing", "guitar", "A",
                   "woman", "Obama", "dog", "runs", "eating", "n't", "does", '"', "quoted", "Quoted"]


def released_sts_b(tokens=RELEASED_TOKENS, dim=6, hidden_size=8, num_layers=2, highway_layers=0, seed=0):
    torch.manual_seed(seed)
    weight = torch.randn(len(tokens), dim)
    weight[0] = 0.0  # the released get_embeddings zeroes the padding row
    model = ReleasedMultiTaskModel(weight, hidden_size, num_layers, highway_layers)
    with torch.no_grad():
        for buffer in model.FDS.buffers():
            buffer.normal_()
    return model.eval()


def released_ids(tokens, released=RELEASED_TOKENS):
    """Padded id tensor of token lists in the released vocabulary (exact tokens only)."""
    index = {token: i for i, token in enumerate(released)}
    width = max(len(t) for t in tokens)
    return torch.tensor([[index[token] for token in t] + [0] * (width - len(t)) for t in tokens])


def write_vocabulary(path, tokens=RELEASED_TOKENS, allennlp=False):
    """The released vocabulary as a file: every row, or allennlp's tokens.txt (no padding line)."""
    path.write_text("".join(f"{token}\n" for token in (tokens[1:] if allennlp else tokens)))
    return path


# ----- conversion, predictions compared in float64 -----

def image_batch(seed=1, batch=2, size=224):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_predictions(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10 * float(theirs.abs().max()))


@pytest.mark.parametrize(
    "preset, fds_bins, legacy, counters",
    [("agedb", 102, True, True), ("imdb_wiki", 187, False, False)],
    ids=["agedb-legacy-file", "imdb_wiki-zip-file-without-bn-counters"],
)
def test_image_checkpoint_gives_the_released_predictions(tmp_path, preset, fds_bins, legacy, counters):
    released = released_resnet(50, fds_bins)
    path = save_released_image(released, tmp_path / "ckpt.best.pth.tar", legacy=legacy, counters=counters)
    loaded = rc.load_released(path, preset)
    assert loaded.layout.settings == {"backbone": "resnet50", "feature_dim": 128}
    assert loaded.layout.metadata == {"epoch": 90, "model": "resnet50", "best_loss": 7.25}
    assert "optimizer" in loaded.layout.ignored
    assert sum(name.startswith("module.FDS.") for name in loaded.layout.ignored) == 8
    assert any("FDS" in note for note in loaded.notes)
    assert any("BatchNorm step counters" in note for note in loaded.notes) == (not counters)
    model = loaded.model
    assert not model.training
    images = image_batch()
    with torch.no_grad():
        predictions, features = model.double()(images)
        expected, expected_features = released.double()(images)
    assert_same_predictions(predictions, expected.squeeze(1))
    assert_same_predictions(features, expected_features)


def test_basic_block_layout_maps_onto_resnet18(tmp_path):
    released = released_resnet(18, fds_bins=None)
    path = save_released_image(released, tmp_path / "ckpt.pth.tar")
    loaded = rc.load_released(path, "agedb")
    assert loaded.layout.settings["backbone"] == "resnet18"
    images = image_batch(batch=1)
    with torch.no_grad():
        assert_same_predictions(loaded.model.double()(images)[0], released.double()(images)[0].squeeze(1))


def test_sts_b_checkpoint_gives_the_released_predictions(tmp_path):
    released = released_sts_b()
    path = tmp_path / "model_state_best.th"
    torch.save(released.state_dict(), path, _use_new_zipfile_serialization=False)  # trainer.py, PyTorch 0.4
    sentences = ["A man is playing the guitar.", "The woman does n't run", 'a dog runs "quoted', "Obama is eating a zebra"]
    ours_tokens = [sts_b.tokenize(s) for s in sentences]
    vocabulary = sts_b.Vocabulary(token for tokens in ours_tokens for token in tokens)
    tokens_file = write_vocabulary(tmp_path / "tokens.txt", allennlp=True)
    loaded = rc.load_released(path, "sts_b", vocabulary=vocabulary, released_vocabulary=tokens_file)
    assert loaded.layout.settings == {"feature_dim": 128, "hidden_size": 8, "num_layers": 2,
                                      "released_vocabulary_size": len(RELEASED_TOKENS), "embedding_dim": 6}
    assert loaded.vocabulary == {"exact": len(vocabulary) - 5, "case": 1, "unknown": 2}  # obama; run, zebra
    model = loaded.model.double()
    released = released.double()
    # Our tokens go to the released rows: the same token, else its casing there ("obama" -> "Obama"),
    # else @@UNKNOWN@@ ("run", "zebra"), as the released code gives unknown tokens.
    as_released = [[{"obama": "Obama"}.get(t, t) if t in RELEASED_TOKENS or t == "obama" else "@@UNKNOWN@@" for t in tokens]
                   for tokens in ours_tokens]
    pairs = [(0, 1), (2, 3), (3, 0), (1, 2)]
    first, second = [ours_tokens[i] for i, _ in pairs], [ours_tokens[j] for _, j in pairs]
    ids1, lengths1 = sts_b._pad([vocabulary.encode(t) for t in first])
    ids2, lengths2 = sts_b._pad([vocabulary.encode(t) for t in second])
    with torch.no_grad():
        predictions, features = model(ids1, lengths1, ids2, lengths2)
        expected, expected_features = released(
            released_ids([as_released[i] for i, _ in pairs]), released_ids([as_released[j] for _, j in pairs])
        )
    assert_same_predictions(predictions, expected.squeeze(1))
    assert_same_predictions(features, expected_features)


def test_vocabulary_mapping_exact_case_unknown():
    words = ["<pad>", "<unk>", "the", "obama", "zebra", "a"]
    rows, found = rc.map_vocabulary(words, RELEASED_TOKENS)
    row = RELEASED_TOKENS.index
    assert rows.tolist() == [0, 1, row("the"), row("Obama"), 1, row("a")]
    assert found == {"exact": ["the", "a"], "case": ["obama"], "unknown": ["zebra"]}
    # the most frequent casing (first in the released order) wins: "quoted" exists as it is
    rows, found = rc.map_vocabulary(["<pad>", "<unk>", "quoted"], RELEASED_TOKENS)
    assert rows.tolist()[2] == RELEASED_TOKENS.index("quoted")


def test_vocabulary_check_against_our_glove_vectors(tmp_path):
    released = released_sts_b()
    path = tmp_path / "model_state_best.th"
    torch.save(released.state_dict(), path)
    layout = rc.inspect_released(rc.read_checkpoint(path), path, "sts_b")
    words = ["<pad>", "<unk>", "the", "man", "obama"]
    reference = released.pair_encoder._text_field_embedder.token_embedder_words.weight.detach()[[0, 1, 7, 4, 12]].clone()
    reference[3] += 1.0  # "man": another vector in our GloVe file
    notes = rc.build_released_model(layout, vocabulary=words, released_vocabulary=RELEASED_TOKENS,
                                    reference_embeddings=reference).notes
    assert any(note.startswith("vocabulary check: 1 of the 2 words found as they are") for note in notes)


def test_vocabulary_file_layouts(tmp_path):
    full = rc.read_released_vocabulary(write_vocabulary(tmp_path / "full.txt"))
    allennlp = rc.read_released_vocabulary(write_vocabulary(tmp_path / "tokens.txt", allennlp=True))
    assert full == allennlp == RELEASED_TOKENS


# ----- refusals -----

def test_missing_tensor_is_refused_naming_it(tmp_path):
    path = save_released_image(released_resnet(18), tmp_path / "ckpt.pth.tar", drop=["module.layer2.0.bn1.running_var"])
    with pytest.raises(rc.ReleasedCheckpointError) as error:
        rc.load_released(path, "agedb")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "backbone.layer2.0.bn1.running_var" in message and "refused" in message
    assert error.value.unfilled == ["backbone.layer2.0.bn1.running_var"] and error.value.unplaced == []


def test_extra_tensor_is_refused_naming_it(tmp_path):
    path = save_released_image(released_resnet(18), tmp_path / "ckpt.pth.tar", add={"module.fc.weight": torch.zeros(1, 512)})
    with pytest.raises(rc.ReleasedCheckpointError) as error:
        rc.load_released(path, "agedb")
    assert "module.fc.weight" in str(error.value) and error.value.unplaced == ["module.fc.weight"]


def test_other_shape_is_refused(tmp_path):
    wider = {"module.linear.weight": torch.zeros(2, 512)}
    path = save_released_image(released_resnet(18), tmp_path / "ckpt.pth.tar", add=wider)
    with pytest.raises(rc.ReleasedCheckpointError, match=r"module\.linear\.weight \(2, 512\) -> regressor\.weight \(1, 512\)"):
        rc.load_released(path, "agedb")


def test_sts_b_highway_layers_are_refused(tmp_path):
    path = tmp_path / "model_state_best.th"
    torch.save(released_sts_b(highway_layers=1).state_dict(), path)
    with pytest.raises(rc.ReleasedCheckpointError) as error:
        rc.load_released(path, "sts_b", vocabulary=["<pad>", "<unk>", "a"], released_vocabulary=RELEASED_TOKENS)
    assert error.value.unplaced == ["pair_encoder._highway_layer._module._layers.0.weight",
                                    "pair_encoder._highway_layer._module._layers.0.bias"]


def test_sts_b_needs_the_released_vocabulary(tmp_path):
    path = tmp_path / "model_state_best.th"
    torch.save(released_sts_b().state_dict(), path)
    with pytest.raises(rc.ReleasedCheckpointError, match="--released_vocab"):
        rc.load_released(path, "sts_b", vocabulary=["<pad>", "<unk>", "a"])
    short = write_vocabulary(tmp_path / "short.txt", RELEASED_TOKENS[:-1])
    with pytest.raises(rc.ReleasedCheckpointError) as error:
        rc.load_released(path, "sts_b", vocabulary=["<pad>", "<unk>", "a"], released_vocabulary=short)
    assert str(short) in str(error.value) and f"{len(RELEASED_TOKENS)} distinct tokens" in str(error.value)
    assert f"found {len(RELEASED_TOKENS) - 1} tokens" in str(error.value)


def test_file_with_python_objects_needs_trust(tmp_path):
    path = save_released_image(released_resnet(18), tmp_path / "ckpt.pth.tar", extra={"args": argparse.Namespace(lr=1e-3)})
    with pytest.raises(rc.UntrustedCheckpointError) as error:
        rc.load_released(path, "agedb")
    message = str(error.value)
    assert "(argparse.Namespace)" in message and "--trust_checkpoint" in message and str(path) in message
    loaded = rc.load_released(path, "agedb", trust_checkpoint=True)
    assert "args" in loaded.layout.ignored


def test_numpy_values_of_a_numpy_1_file_need_no_trust(tmp_path):
    path = save_released_image(released_resnet(18), tmp_path / "ckpt.pth.tar", legacy=True,
                               extra={"best_loss": np.float64(7.25)})
    written = path.read_bytes()
    assert b"numpy._core.multiarray" in written
    path.write_bytes(written.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))  # numpy 1's module name
    assert rc.load_released(path, "agedb").layout.metadata["best_loss"] == 7.25


def test_wrong_benchmark_is_one_clear_line(tmp_path):
    text = tmp_path / "model_state_best.th"
    torch.save(released_sts_b().state_dict(), text)
    with pytest.raises(rc.ReleasedCheckpointError) as error:
        rc.load_released(text, "agedb")
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(text))
    assert "expected a released AgeDB-DIR checkpoint" in message and "found the SRL STS-B-DIR model" in message
    assert "train/sts_b.py" in message
    imdb = save_released_image(released_resnet(18, fds_bins=187), tmp_path / "imdb.pth.tar")
    with pytest.raises(rc.ReleasedCheckpointError, match=r"found FDS statistics for 187 label bins .*train/imdb_wiki\.py"):
        rc.load_released(imdb, "agedb")
    with pytest.raises(rc.ReleasedCheckpointError, match="found a ResNet checkpoint"):
        rc.load_released(imdb, "sts_b")


def test_not_a_model_file_is_named(tmp_path):
    state = tmp_path / "training_state_best.th"
    torch.save({"epoch": 3, "iter": 1200, "should_stop": False}, state)
    with pytest.raises(rc.ReleasedCheckpointError, match="training_state file: the weights are in model_state_best.th"):
        rc.load_released(state, "sts_b")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(rc.ReleasedCheckpointError, match="torch.load cannot read"):
        rc.load_released(text, "agedb")
    with pytest.raises(FileNotFoundError):
        rc.load_released(tmp_path / "missing.pth.tar", "agedb")


def test_srl_ext_checkpoints_load_safely_and_are_not_converted(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": 1, "config": {"preset": "agedb"}, "model": {}, "rng": np.random.get_state(),
                "value": np.float64(0.5)}, path)
    loaded = rc.read_checkpoint(path)  # numpy arrays and scalars are data: no --trust_checkpoint needed
    assert rc.is_srl_ext_checkpoint(loaded)
    with pytest.raises(rc.ReleasedCheckpointError, match="found a checkpoint of this project"):
        rc.load_released(path, "agedb")


# ----- through the drivers -----


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """24 small JPEGs in the AgeDB-DIR layout (agedb.csv + AgeDB/...)."""
    return write_agedb_images(tmp_path_factory.mktemp("agedb"), 24, train=8, val=16)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """24 sentence pairs in the STS-B-DIR layout (words of RELEASED_TOKENS) and a fake 4-d GloVe file."""
    words = ["a", "man", "woman", "is", "eating", "playing", "guitar", "the", "dog", "runs", "."]
    return write_sts_b_pairs(tmp_path_factory.mktemp("stsb"), words, 24, train=8, val=16,
                             second_length=lambda i: 1 + i % 4)


def test_agedb_driver_evaluates_a_released_checkpoint(image_data, tmp_path, capsys):
    from srl_ext.training.data import images

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    released = released_resnet(50, 102)
    path = save_released_image(released, downloads / "ckpt.best.pth.tar", legacy=True)
    table = load_driver("agedb").main(["--data_dir", str(image_data), "--evaluate", str(path), "--runs_dir",
                                      str(tmp_path / "runs"), "--run_name", "released", "--no_progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert "agedb test, released ckpt.best.pth.tar (epoch 90)" in out and "wrote test_metrics.json" in out
    assert sorted(p.name for p in downloads.iterdir()) == ["ckpt.best.pth.tar"]  # nothing beside the download
    run_dir = tmp_path / "runs" / "released"
    for name in ("config.json", "test_metrics.json", "test_errors.png"):
        assert (run_dir / name).is_file(), name
    record = json.loads((run_dir / "config.json").read_text())["released_checkpoint"]
    assert record["path"] == str(path.resolve()) and len(record["sha256"]) == 64
    assert json.loads((run_dir / "test_metrics.json").read_text())["table"] == table
    # the table is the transcription's on the same test images
    _, datasets = images.load_benchmark(images.AGEDB, image_data)
    batch = torch.stack([datasets["test"][i][0] for i in range(len(datasets["test"]))])
    with torch.no_grad():
        expected = released(batch)[0].squeeze(1).numpy()
    assert table["all"]["mae"] == pytest.approx(float(np.abs(expected - datasets["test"].labels).mean()), rel=1e-5)
    assert table["all"]["count"] == 8


def test_image_driver_refuses_another_image_size(image_data, tmp_path):
    path = save_released_image(released_resnet(18, fds_bins=187), tmp_path / "ckpt.pth.tar")
    with pytest.raises(rc.ReleasedCheckpointError, match="expected --img_size 224 .* found --img_size 112"):
        load_driver("imdb_wiki").main(["--data_dir", str(image_data), "--evaluate", str(path), "--img_size", "112",
                                       "--runs_dir", str(tmp_path / "runs"), "--no_progress"])


def test_sts_b_driver_evaluates_a_released_checkpoint(text_data, tmp_path, capsys):
    root, glove = text_data
    released = released_sts_b()
    path = tmp_path / "model_state_best.th"
    # a file that also pickles an argparse namespace: refused without --trust_checkpoint
    torch.save({"state_dict": released.state_dict(), "args": argparse.Namespace(d_hid=8)}, path)
    vocab = write_vocabulary(tmp_path / "vocab.txt")
    args = ["--data_dir", str(root), "--glove", str(glove), "--evaluate", str(path), "--released_vocab", str(vocab),
            "--runs_dir", str(tmp_path / "runs"), "--run_name", "released", "--no_progress", "--threads", "1"]
    sts = load_driver("sts_b")
    with pytest.raises(rc.UntrustedCheckpointError, match="argparse.Namespace"):
        sts.main(args)
    table = sts.main(args + ["--trust_checkpoint", "--hidden_size", "16"])
    captured = capsys.readouterr()
    assert "sets --hidden_size 8" in captured.err
    assert "sts_b test, released model_state_best.th" in captured.out
    assert "0 only in another casing, 0 not at all" in captured.out
    assert "vocabulary file not checked: our word vectors are 4-d, the released 6-d" in captured.out
    settings = json.loads((tmp_path / "runs" / "released" / "config.json").read_text())
    assert settings["hidden_size"] == 8 and settings["regressor"] == "linear"
    # the table is the transcription's on the test pairs, in the released ids of the same tokens
    pairs = sts_b.read_pairs(root / "test_new.tsv")
    tokens1 = [sts_b.tokenize(p.sentence1) for p in pairs]
    tokens2 = [sts_b.tokenize(p.sentence2) for p in pairs]
    with torch.no_grad():
        expected = released(released_ids(tokens1), released_ids(tokens2))[0].squeeze(1).numpy() * 5
    scores = np.asarray([p.score for p in pairs], dtype=np.float32)
    assert table["all"]["mse"] == pytest.approx(float(np.mean((expected - scores) ** 2)), rel=1e-5)


def test_trust_checkpoint_needs_evaluate(text_data, tmp_path, capsys):
    root, glove = text_data
    with pytest.raises(SystemExit):
        load_driver("sts_b").main(["--data_dir", str(root), "--trust_checkpoint"])
    assert "--trust_checkpoint: expected only with --evaluate" in capsys.readouterr().err
