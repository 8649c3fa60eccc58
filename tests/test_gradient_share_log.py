"""The SRL gradient share in a run's metrics.jsonl (--grad_share_every), on tiny STS-B runs."""

import json

import pytest
import torch

from helpers import load_driver, write_sts_b_pairs
from test_drivers import srl_size


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    words = ["a", "man", "woman", "is", "eating", "dancing", "playing", "guitar", "the", "dog", "runs", "."]
    return write_sts_b_pairs(tmp_path_factory.mktemp("stsb"), words, 48, train=32, val=40,
                             score=lambda i, rng: f"{round(float(rng.uniform(0, 5)), 3):.3f}")


def run(text_data, runs, name, *extra):
    root, glove = text_data
    table = load_driver("sts_b").main([
        "--data_dir", str(root), "--glove", str(glove), "--runs_dir", str(runs), "--hidden_size", "8",
        "--batch_size", "8", "--eval_every", "0", "--no_progress", "--threads", "1",
        "--epoch", "2", "--run_name", name, *srl_size(extra), *extra,
    ])
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return table, [r for r in records if r["split"] == "train"]


def test_share_is_logged_per_epoch_and_leaves_training_unchanged(text_data, tmp_path):
    measured_table, measured = run(text_data, tmp_path, "every", "--grad_share_every", "1")
    plain_table, plain = run(text_data, tmp_path, "never", "--grad_share_every", "0")
    for record in measured:  # 32 training pairs, batch 8: 4 steps an epoch, each measured
        assert record["srl_grad_steps"] == 4
        assert 0 < record["srl_grad_ratio"] < float("inf")
        assert -1 <= record["srl_grad_cosine"] <= 1
    assert all("srl_grad_ratio" not in record for record in plain)
    # measuring reads gradients without touching the step: the same run to the last bit
    assert measured_table == plain_table
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("srl_grad") and not k.endswith("_seconds")}
    assert [strip(r) for r in measured] == [strip(r) for r in plain]


def test_share_scales_with_the_srl_weights(text_data, tmp_path):
    # Only step 0 is measured (every 1000 steps): the same model and batch in both runs, so ten
    # times the SRL weights give ten times the gradient norm, in the same direction.
    _, base = run(text_data, tmp_path, "x1", "--grad_share_every", "1000", "--w1", "1e-4", "--w2", "1e-2", "--w3", "1e-4")
    _, scaled = run(text_data, tmp_path, "x10", "--grad_share_every", "1000", "--w1", "1e-3", "--w2", "1e-1", "--w3", "1e-3")
    assert base[0]["srl_grad_steps"] == scaled[0]["srl_grad_steps"] == 1
    assert scaled[0]["srl_grad_ratio"] == pytest.approx(10 * base[0]["srl_grad_ratio"], rel=1e-5)
    assert scaled[0]["srl_grad_cosine"] == pytest.approx(base[0]["srl_grad_cosine"], abs=1e-6)
    assert "srl_grad_ratio" not in base[1]  # step 4..7: none of them a multiple of 1000


def test_vanilla_logs_no_share(text_data, tmp_path):
    _, records = run(text_data, tmp_path, "vanilla", "--vanilla", "--grad_share_every", "1")
    assert all("srl_grad_ratio" not in record for record in records)


def test_shared_parameters_are_the_encoder_without_heads_or_frozen_vectors():
    from srl_ext.training.engine import Engine
    from srl_ext.training.models import SentencePairRegressor

    model = SentencePairRegressor(torch.randn(10, 4), hidden_size=6)
    engine = Engine.__new__(Engine)  # only the model is read
    engine.model = model
    shared = {id(p) for p in engine.shared_parameters}
    assert shared == {id(p) for p in model.encoder.lstm.parameters()}
