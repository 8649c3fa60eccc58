"""Input builders and loaders shared by the tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from srl_ext import reference


def make_inputs(
    batch: int,
    num_bins: int,
    num_anchors: int,
    dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    present_bins: int | None = None,
    zero_memory_rows: int = 0,
    requires_grad: bool = True,
):
    """Features, bins, memory and anchors for one step.

    Bins are drawn from the first `present_bins` bins (all by default), so the rest are absent
    and come from the memory; the last `zero_memory_rows` memory rows are zero (bins never seen).
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=generator, dtype=torch.float64).to(dtype)
    features.requires_grad_(requires_grad)
    bins = torch.randint(0, present_bins or num_bins, (batch,), generator=generator)
    memory = torch.randn(num_bins, dim, generator=generator, dtype=torch.float64)
    if zero_memory_rows:
        memory[-zero_memory_rows:] = 0
    anchors = reference.normalize(torch.randn(num_anchors, dim, generator=generator, dtype=torch.float64))
    acc = reference.accumulation_dtype(dtype)
    return features, bins, memory.to(acc), anchors.to(acc)


def terms_and_grad(module, features, bins, memory, anchors, *, temperature=0.3, envelope_temperature=None,
                   label_weighting=False, sign=-1.0, beta=0.1):
    """The three terms of a backend module and the gradient of their sum w.r.t. the features."""
    surrogates = module.surrogate_table(features, bins, memory)
    terms = (
        module.contrastive_loss(features, bins, surrogates, temperature, label_weighting),
        module.enveloping_loss(surrogates, anchors, envelope_temperature),
        module.homogeneity_loss(surrogates, sign, beta),
    )
    grad = torch.autograd.grad(sum(terms), features)[0]
    return torch.stack([t.detach() for t in terms]), grad


def _load_script(folder: str, name: str, module_name: str):
    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_driver(name: str):
    """train/<name>.py as a module (the drivers are scripts, not part of the package)."""
    return _load_script("train", name, f"driver_{name}")


def load_tool(name: str):
    """tools/<name>.py as a module (the tools are scripts, not part of the package)."""
    return _load_script("tools", name, name)


def write_agedb_images(root: Path, count: int, train: int, val: int) -> Path:
    """`count` small JPEGs in the AgeDB-DIR layout (agedb.csv + AgeDB/...), ages 20..27, brightness
    ~ age; the first `train` are the training split, those up to `val` the validation split."""
    import numpy as np
    from PIL import Image

    (root / "AgeDB").mkdir()
    rng = np.random.default_rng(0)
    lines = ["age,path,split"]
    for i in range(count):
        age = 20 + i % 8
        split = "train" if i < train else "val" if i < val else "test"
        name = f"AgeDB/{i}_Person_{age}_f.jpg"
        Image.fromarray((rng.integers(0, 40, (20, 20, 3)) + 20 * (age - 20)).astype(np.uint8)).save(root / name)
        lines.append(f"{age},{name},{split}")
    (root / "agedb.csv").write_text("\n".join(lines) + "\n")
    return root


def write_sts_b_pairs(root: Path, words: list[str], count: int, train: int, val: int, *,
                      second_length=lambda i: 4, score=lambda i, rng: f"{rng.uniform(0, 5):.3f}") -> tuple[Path, Path]:
    """`count` sentence pairs in the STS-B-DIR layout (the three TSVs, with a '"quoted' word that
    needs quoting off) and a fake 4-d GloVe file of `words`; the first `train` pairs are the
    training split, those up to `val` the validation split. Returns (folder, GloVe file)."""
    import numpy as np

    from srl_ext.training.data import sts_b

    rng = np.random.default_rng(0)
    rows = {"train_new.tsv": [], "dev_new.tsv": [], "test_new.tsv": []}
    for i in range(count):
        s1 = " ".join(rng.choice(words, 5)) + ' "quoted'
        s2 = " ".join(rng.choice(words, second_length(i)))
        name = "train_new.tsv" if i < train else "dev_new.tsv" if i < val else "test_new.tsv"
        rows[name].append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score(i, rng)}\n")
    for name, lines in rows.items():
        (root / name).write_text("\t".join(sts_b.COLUMNS) + "\n" + "".join(lines))
    glove = root / "glove.txt"
    glove.write_text("".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=4)) + "\n" for w in words))
    return root, glove


BIN_MIXES = ("spread", "crowded", "singletons", "few_present")


TINY_STS_B_WORDS = ["a", "man", "woman", "is", "eating", "dancing", "playing", "guitar", "the", "dog", "runs", "."]


def write_tiny_sts_b(root: Path) -> tuple[Path, Path]:
    """(data folder, GloVe file) of 48 STS-B pairs (32 train, 40 val) with uniform scores: the
    tool tests' tiny runs."""
    return write_sts_b_pairs(root, TINY_STS_B_WORDS, 48, train=32, val=40,
                             score=lambda i, rng: f"{round(float(rng.uniform(0, 5)), 3):.3f}")


def loss_case_strategies() -> dict:
    """Hypothesis strategies of one SRL loss case (the arguments of the property tests)."""
    from hypothesis import strategies as st

    return dict(
        batch=st.integers(1, 40),
        num_bins=st.integers(2, 30),
        num_anchors=st.integers(1, 300),
        dim=st.integers(2, 24),  # D = 1 is degenerate: the sphere is two points, every gradient is round-off
        mix=st.sampled_from(BIN_MIXES),
        zero_rows=st.integers(0, 3),
        envelope_temperature=st.sampled_from([None, 0.05, 1.0]),
        label_weighting=st.booleans(),
        seed=st.integers(0, 2**16),
    )


def mixed_bins(mix: str, batch: int, num_bins: int, seed: int) -> torch.Tensor:
    """Bins of one of BIN_MIXES: spread at random, crowded in one bin, one sample per bin where
    possible, or at most two bins present (the rest of the table from memory)."""
    generator = torch.Generator().manual_seed(seed)
    if mix == "spread":
        return torch.randint(0, num_bins, (batch,), generator=generator)
    if mix == "crowded":
        return torch.full((batch,), int(torch.randint(0, num_bins, (1,), generator=generator)))
    if mix == "singletons":
        return torch.arange(batch) % num_bins
    return torch.randint(0, min(2, num_bins), (batch,), generator=generator)


def assert_compiled_matches_eager(loss_of, features: torch.Tensor) -> None:
    """``torch.compile(loss_of, fullgraph=True)`` gives the eager value and gradient (no graph break)."""
    compiled = torch.compile(loss_of, fullgraph=True)
    eager_value = loss_of(features)
    (eager_grad,) = torch.autograd.grad(eager_value, features)
    compiled_value = compiled(features)
    (compiled_grad,) = torch.autograd.grad(compiled_value, features)
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-6, atol=1e-6)


def assert_one_line_error(main, argv, message, capsys) -> None:
    """``main(argv)`` exits with status 2 and prints one line, ``error: ...`` holding ``message``
    (no usage block, no traceback)."""
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert err.splitlines() == [last] and last.startswith("error: ") and message in last, err
