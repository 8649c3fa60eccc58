"""Balanced MSE (docs/methods.md, "Balanced MSE"): BMC, BNI and GAI against a float64
transcription of the released loss functions, the worked cases, sigma's optimiser group."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srl_ext.methods import BalancedMSE, bni_buckets, fit_gmm, kernel_window

# ----- a transcription of the released functions ((B, 1) predictions and targets, float64) -----


def released_bmc(pred, target, noise_var):
    logits = -0.5 * (pred - target.T) ** 2 / noise_var
    loss = F.cross_entropy(logits, torch.arange(pred.shape[0]))
    return loss * (2 * noise_var).detach()


def released_bni(pred, target, noise_var, centers, weights):
    mse = F.mse_loss(pred, target, reduction="none") / 2 / noise_var
    k = centers.shape[0]
    balancing = -0.5 * (pred.expand(-1, k) - centers.unsqueeze(0).repeat(pred.shape[0], 1)) ** 2 / noise_var \
        + weights.unsqueeze(0).repeat(pred.shape[0], 1).log()
    loss = mse + torch.logsumexp(balancing, dim=-1, keepdim=True)
    return (loss * (2 * noise_var).detach()).mean()


def released_gai(pred, target, noise_var, means, variances, weights):
    b = pred.shape[0]
    means, variances, weights = (t.reshape(1, -1).expand(b, -1) for t in (means, variances, weights))
    mse = F.mse_loss(pred, target, reduction="none") / 2 / noise_var + 0.5 * noise_var.log()
    total = variances + noise_var
    balancing = -0.5 * total.log() - 0.5 * (pred - means) ** 2 / total + weights.log()
    loss = mse + torch.logsumexp(balancing, dim=-1, keepdim=True)
    return (loss * (2 * noise_var).detach()).mean()


def released_bucket_info(labels, max_target=200, lds=False, kernel="gaussian", ks=5, sigma=2.0):
    counts = {x: 0 for x in range(max_target)}
    for label in labels:
        if int(label) < max_target:
            counts[int(label)] += 1
    centers = np.array(list(counts.keys()))
    weights = np.array(list(counts.values()), dtype=np.float64)
    if lds:
        window = kernel_window(kernel, ks, sigma).numpy()
        padded = np.concatenate([np.zeros(ks // 2), weights, np.zeros(ks // 2)])
        weights = np.array([np.dot(window, padded[i:i + ks]) for i in range(max_target)])
    keep = weights > 0
    return centers[keep], weights[keep] / weights[keep].sum()


GMM = dict(means=[1.0, 4.0], variances=[0.5, 1.0], weights=[0.7, 0.3])
BNI = dict(bucket_centers=torch.tensor([1.0, 2.0, 3.0]), bucket_weights=torch.tensor([0.5, 0.3, 0.2]))


def _module(mode, sigma, **tables):
    return BalancedMSE(mode, sigma, **tables).double()


def _value_and_grads(module, p, y):
    p = p.clone().requires_grad_()
    loss = module(p, y)
    grad_p, grad_sigma = torch.autograd.grad(loss, [p, module.noise_sigma])
    return float(loss.detach()), grad_p, float(grad_sigma)


# ----- the worked cases: p = [1, 2, 4], y = [1.5, 2, 3] -----

P = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
Y = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)


def test_bmc_worked_cases():
    loss, grad_p, grad_sigma = _value_and_grads(_module("bmc", 1.0), P, Y)
    assert loss == pytest.approx(1.187306, abs=1e-6)
    assert grad_p.tolist() == pytest.approx([0.207781, 0.044270, -0.170730], abs=1e-6)
    assert grad_sigma == pytest.approx(1.156683, abs=1e-6)
    rows = F.cross_entropy(-0.5 * (P[:, None] - Y[None, :]) ** 2, torch.arange(3), reduction="none")
    assert rows.tolist() == pytest.approx([0.610116, 0.911892, 0.258951], abs=1e-6)
    loss, _, grad_sigma = _value_and_grads(_module("bmc", 10.0), P, Y)
    assert loss == pytest.approx(218.173093, abs=1e-6)  # 218.173096 in float32
    assert grad_sigma == pytest.approx(0.308635, abs=1e-6)


def test_bmc_perfect_predictions_and_one_sample():
    module = _module("bmc", 1.0)
    exact = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    assert float(module(exact, exact).detach()) == pytest.approx(1.269527, abs=1e-6)
    loss, grad_p, grad_sigma = _value_and_grads(module, torch.tensor([3.0], dtype=torch.float64),
                                                torch.tensor([1.0], dtype=torch.float64))
    assert loss == 0.0 and grad_p.tolist() == [0.0] and grad_sigma == 0.0


def test_bni_worked_case():
    loss, grad_p, grad_sigma = _value_and_grads(_module("bni", 1.0, **BNI), P, Y)
    assert loss == pytest.approx(-1.218694, abs=1e-6)
    assert grad_p.tolist() == pytest.approx([-0.111345, -0.167418, -0.205857], abs=1e-6)
    assert grad_sigma == pytest.approx(1.158659, abs=1e-6)


def test_gai_worked_case():
    loss, grad_p, grad_sigma = _value_and_grads(_module("gai", 1.0, gmm=GMM), P, Y)
    assert loss == pytest.approx(-1.359350, abs=1e-6)
    assert grad_p.tolist() == pytest.approx([-0.295687, -0.266604, 0.508966], abs=1e-6)
    assert grad_sigma == pytest.approx(0.680718, abs=1e-6)


# ----- random cases against the transcription -----

@pytest.mark.parametrize("mode", ["bmc", "bni", "gai"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(9,), (9, 1)])
def test_values_and_gradients_match_the_transcription(mode, seed, shape):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 60, (9,), generator=generator).to(torch.float64)
    p = y + torch.randn(9, generator=generator, dtype=torch.float64) * 6
    sigma = [0.75, 3.0, -10.0][seed]  # exact in float32, the dtype sigma is created in
    labels = torch.randint(0, 60, (400,), generator=generator).to(torch.float64)
    centers, weights = bni_buckets(labels, lds=seed == 1)
    gmm = dict(means=torch.rand(4, generator=generator, dtype=torch.float64) * 60,
               variances=torch.rand(4, generator=generator, dtype=torch.float64) * 40 + 1,
               weights=torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    tables = {"bni": dict(bucket_centers=centers, bucket_weights=weights), "gai": dict(gmm=gmm), "bmc": {}}[mode]
    module = _module(mode, sigma, **tables)
    loss, grad_p, grad_sigma = _value_and_grads(module, p.reshape(shape), y.reshape(shape))

    ref_sigma = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    ref_p = p.reshape(-1, 1).clone().requires_grad_()
    noise_var = ref_sigma ** 2
    if mode == "bmc":
        expected = released_bmc(ref_p, y.reshape(-1, 1), noise_var)
    elif mode == "bni":
        expected = released_bni(ref_p, y.reshape(-1, 1), noise_var, centers, weights)
    else:
        expected = released_gai(ref_p, y.reshape(-1, 1), noise_var, gmm["means"], gmm["variances"], gmm["weights"])
    expected_p, expected_sigma = torch.autograd.grad(expected, [ref_p, ref_sigma])
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12, abs=1e-12)
    assert torch.allclose(grad_p.reshape(-1), expected_p.reshape(-1), rtol=1e-10, atol=1e-12)
    assert grad_sigma == pytest.approx(float(expected_sigma), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("mode, tables", [("bmc", {}), ("bni", BNI), ("gai", {"gmm": GMM})])
def test_the_sign_of_sigma_is_free(mode, tables):
    plus = float(_module(mode, 2.5, **tables)(P, Y).detach())
    minus = float(_module(mode, -2.5, **tables)(P, Y).detach())
    assert plus == pytest.approx(minus, rel=1e-14)


@pytest.mark.parametrize("lds", [False, True])
def test_bni_buckets_match_the_transcription(lds):
    generator = np.random.default_rng(4)
    ages = np.concatenate([generator.gamma(4.0, 8.0, 500), [0.4, 199.9, 205.0, 250.0]])
    centers, weights = bni_buckets(torch.tensor(ages), lds=lds, ks=5, sigma=2.0)
    expected_centers, expected_weights = released_bucket_info(ages, lds=lds)
    assert centers.tolist() == expected_centers.tolist()
    assert np.allclose(weights.numpy(), expected_weights, rtol=1e-12, atol=0)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    if lds:  # smoothing spreads the prior to the empty neighbours
        assert len(centers) > len(np.unique(ages[ages < 200].astype(int)))


def test_fit_gmm_table_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    labels = torch.cat([torch.randn(300, generator=torch.Generator().manual_seed(0)) * 3 + 20,
                        torch.randn(100, generator=torch.Generator().manual_seed(1)) * 5 + 60])
    table = fit_gmm(labels, n_components=2)
    assert sorted(table["means"].round().tolist()) == pytest.approx([20.0, 60.0], abs=2.0)
    assert float(table["weights"].sum()) == pytest.approx(1.0, abs=1e-9)
    BalancedMSE("gai", gmm=table)


# ----- the optimiser group, freezing, the state_dict -----

def test_param_group_is_sigma_alone_without_weight_decay():
    criterion = BalancedMSE("bmc", 1.0)
    group = criterion.param_group(lr=1e-2)
    assert group["params"] == [criterion.noise_sigma]
    assert (group["lr"], group["weight_decay"], group["name"]) == (1e-2, 0.0, "noise_sigma")
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.add_param_group(group)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    before = float(criterion.noise_sigma.detach())
    loss = criterion(model(x).squeeze(1), torch.arange(8.0))
    loss.backward()
    optimizer.step()
    assert float(criterion.noise_sigma.detach()) != before
    assert abs(float(criterion.noise_sigma.detach()) - before) == pytest.approx(1e-2, rel=1e-3)  # Adam's first step


def test_fixed_sigma_gets_no_gradient_and_no_group():
    criterion = BalancedMSE("bmc", 1.0, fix_noise_sigma=True)
    p = P.float().requires_grad_()
    criterion(p, Y.float()).backward()
    assert criterion.noise_sigma.grad is None and p.grad is not None
    with pytest.raises(ValueError, match="BalancedMSE.param_group: argument 'noise_sigma' must be trainable"):
        criterion.param_group()


def test_state_dict_holds_sigma_and_the_tables():
    criterion = BalancedMSE("gai", 3.0, gmm=GMM)
    with torch.no_grad():
        criterion.noise_sigma.fill_(4.5)
    state = criterion.state_dict()
    assert sorted(state) == ["gmm_means", "gmm_variances", "gmm_weights", "noise_sigma"]
    restored = BalancedMSE("gai", 1.0, gmm=dict(means=[0.0, 0.0], variances=[1.0, 1.0], weights=[0.5, 0.5]))
    restored.load_state_dict(state)
    assert float(restored(P.float(), Y.float()).detach()) == float(criterion(P.float(), Y.float()).detach())
    bni = BalancedMSE("bni", 2.0, **BNI)
    assert sorted(bni.state_dict()) == ["bucket_centers", "bucket_weights", "noise_sigma"]


def test_float32_predictions_give_a_float32_loss():
    criterion = BalancedMSE("bni", 1.0, **BNI)
    loss = criterion(P.float(), Y.float())
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(-1.218694, abs=1e-5)


@pytest.mark.parametrize("make, words", [
    (lambda: BalancedMSE("mse"), ["BalancedMSE", "'mode'", "'bmc', 'bni', 'gai'", "'mse'"]),
    (lambda: BalancedMSE("bni"), ["'bucket_centers'", "mode='bni'"]),
    (lambda: BalancedMSE("bni", bucket_centers=torch.zeros(3), bucket_weights=torch.ones(2)),
     ["'bucket_weights'", "shape of 'bucket_centers' (3,)", "(2,)"]),
    (lambda: BalancedMSE("bni", bucket_centers=torch.zeros(2), bucket_weights=torch.tensor([1.0, 0.0])),
     ["'bucket_weights'", "all > 0"]),
    (lambda: BalancedMSE("gai"), ["'gmm'", "mode='gai'", "None"]),
    (lambda: BalancedMSE("gai", gmm=dict(means=[1.0], weights=[1.0])), ["'gmm'", "'means', 'variances', 'weights'"]),
    (lambda: BalancedMSE("gai", gmm=dict(means=[1.0, 2.0], variances=[1.0], weights=[0.5, 0.5])), ["'gmm'", "variances with 1"]),
    (lambda: BalancedMSE("gai", gmm=dict(means=[1.0], variances=[-1.0], weights=[1.0])), ["'gmm'", "> 0"]),
    (lambda: BalancedMSE("bmc", gmm=GMM), ["'gmm'", "None unless mode='gai'"]),
    (lambda: BalancedMSE("bmc", 0.0), ["'init_noise_sigma'", "!= 0"]),
    (lambda: BalancedMSE("bmc", math.inf), ["'init_noise_sigma'", "finite"]),
    (lambda: BalancedMSE("bmc")(torch.zeros(3), torch.zeros(4)), ["BalancedMSE", "'targets'", "B = 3 (the length of 'predictions')", "length 4"]),
    (lambda: BalancedMSE("bmc")(torch.zeros(3, 2), torch.zeros(3, 2)), ["'predictions'", "(B,) or (B, 1)"]),
    (lambda: BalancedMSE("bmc")(torch.zeros(3, dtype=torch.int64), torch.zeros(3)), ["'predictions'", "float"]),
    (lambda: bni_buckets(torch.tensor([250.0, 300.0])), ["bni_buckets", "'labels'", "int(y) < max_target = 200"]),
])
def test_bad_inputs_raise_value_errors(make, words):
    with pytest.raises(ValueError) as error:
        make()
    for word in words:
        assert word in str(error.value)
