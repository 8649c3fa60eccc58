"""One training step of each benchmark's model without the SRL loss (forward, the recipe's
regression loss, backward, the Adam step), timed so that the verdict can say what share of a
training step the SRL loss takes (``report.step_share_lines``).

The models are the drivers' (srl_ext.training.models) at the released sizes: ResNet-50 at 224 x 224
(AgeDB-DIR batch 64, IMDB-WIKI-DIR batch 256), and the STS-B BiLSTM (2 layers, frozen 300-d word
vectors of a 20,000-word vocabulary, batch 16, sentences of 5 to 25 tokens, STS-B's usual range) at
hidden 1500 (released) and 128 (what this project trains on a CPU, docs/results.md). A ResNet-50
step or a hidden-1500 step takes seconds or more on a CPU: there they run with ``--full`` only.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from srl_ext import settings
from srl_ext.training.config import REGRESSION_LOSSES, recipe

GROUP = "step"
IMAGE_SIZE = 224
STS_B_VOCABULARY, STS_B_WORD_DIM, STS_B_TOKENS = 20_000, 300, (5, 25)


# (preset, model tag): the tag names the row's model in the report.
STEP_CASES = [("sts_b", "bilstm128"), ("sts_b", "bilstm1500"), ("agedb", "resnet50"), ("imdb_wiki", "resnet50")]
CPU_PLAIN_RUN = {("sts_b", "bilstm128")}  # the cases a CPU run without --full times


def model_and_batch(preset: str, tag: str, device: torch.device):
    """(model, inputs, labels, description) of one training batch of the preset's benchmark."""
    from srl_ext.training.models import ImageRegressor, SentencePairRegressor

    generator = torch.Generator().manual_seed(0)
    batch = recipe(preset).batch_size
    if preset == "sts_b":
        embeddings = torch.randn(STS_B_VOCABULARY, STS_B_WORD_DIM, generator=generator)
        hidden = int(tag.removeprefix("bilstm"))
        model = SentencePairRegressor(embeddings, hidden_size=hidden, num_layers=2)
        inputs = []
        for _ in range(2):
            lengths = torch.randint(STS_B_TOKENS[0], STS_B_TOKENS[1] + 1, (batch,), generator=generator)
            ids = torch.randint(2, STS_B_VOCABULARY, (batch, int(lengths.max())), generator=generator)
            ids[torch.arange(ids.shape[1]) >= lengths[:, None]] = 0
            inputs += [ids.to(device), lengths]
        labels = torch.rand(batch, generator=generator) * 5
        return model.to(device), inputs, labels.to(device) / 5, f"BiLSTM {hidden} x 2, 300-d words, batch {batch}"
    model = ImageRegressor("resnet50")
    images = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, settings.NUM_BINS[preset], (batch,), generator=generator).float()
    return model.to(device), [images.to(device)], labels.to(device), f"ResNet-50 at {IMAGE_SIZE}, batch {batch}"


@pytest.mark.parametrize("preset, tag", STEP_CASES, ids=[f"{p}-{t}" for p, t in STEP_CASES])
def test_training_step(benchmark, preset, tag, bench_device: torch.device, bench_options: dict):
    if (preset, tag) not in CPU_PLAIN_RUN and bench_device.type == "cpu" and not bench_options["full"]:
        pytest.skip(f"a {tag} step takes seconds or more on a CPU: with --full")
    if tag == "resnet50":
        pytest.importorskip("torchvision", reason="ResNet-50 needs torchvision (pip install -e '.[train]')")
    torch.manual_seed(0)
    model, inputs, targets, description = model_and_batch(preset, tag, bench_device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe(preset).lr)
    regression = REGRESSION_LOSSES[recipe(preset).regression_loss]
    loss_preset = settings.preset(preset)

    def step():
        predictions, _ = model(*inputs)
        loss = regression(predictions, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if bench_device.type == "cuda":
            torch.cuda.synchronize(bench_device)

    benchmark.group = f"{GROUP} {preset} {tag}"
    benchmark.extra_info.update(
        group=GROUP, case=preset, preset=preset, term=tag, impl="model", model=description,
        batch=recipe(preset).batch_size, num_bins=loss_preset.num_bins, num_anchors=loss_preset.srl.num_anchors,
        dim=128, device=str(bench_device), threads=torch.get_num_threads(),
    )
    start = time.perf_counter()
    step()  # warm-up, and the size of the rounds
    one_step = time.perf_counter() - start
    rounds = min(max(math.ceil(bench_options["time_s"] / max(one_step, 1e-6)), 2 if one_step > 1 else 3), 50)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
