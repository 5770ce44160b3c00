"""Likelihoods against scipy, at ordinary and extreme values, with finite gradients."""

import numpy as np
import pytest
import torch
from scipy import special, stats

from zipo_scvi._distributions import LIKELIHOODS, log_nb, log_poisson, log_zinb, log_zip

RNG = np.random.default_rng(0)
X = np.concatenate([np.zeros(20), RNG.integers(1, 10, 20), [1e4, 5e5, 1e6, 3.0, 0.0]])
LOG_RATE = np.concatenate(
    [RNG.uniform(-8, 8, 40), [np.log(1e6), np.log(1e6), np.log(1e-9), -20, 13]]
)
LOGIT_Z = RNG.normal(0, 3, X.size)
LOG_THETA = RNG.uniform(-3, 5, X.size)


def _t(a):
    return torch.tensor(a, dtype=torch.float64, requires_grad=True)


def _ref_nb(x, m, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + m))


def _ref_zero_inflated(x, logpmf, z):
    zero = special.logsumexp([np.log(z), np.log1p(-z) + logpmf], axis=0)
    return np.where(x == 0, zero, np.log1p(-z) + logpmf)


def test_poisson_matches_scipy():
    got = log_poisson(_t(X), _t(LOG_RATE)).detach().numpy()
    np.testing.assert_allclose(
        got, stats.poisson.logpmf(X, np.exp(LOG_RATE)), rtol=1e-8, atol=1e-6
    )


def test_nb_matches_scipy():
    got = log_nb(_t(X), _t(LOG_RATE), _t(LOG_THETA)).detach().numpy()
    ref = _ref_nb(X, np.exp(LOG_RATE), np.exp(LOG_THETA))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


def test_zip_matches_scipy():
    z = special.expit(LOGIT_Z)
    got = log_zip(_t(X), _t(LOG_RATE), _t(LOGIT_Z)).detach().numpy()
    ref = _ref_zero_inflated(X, stats.poisson.logpmf(X, np.exp(LOG_RATE)), z)
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-6)


def test_zinb_matches_scipy():
    z = special.expit(LOGIT_Z)
    got = log_zinb(_t(X), _t(LOG_RATE), _t(LOGIT_Z), _t(LOG_THETA)).detach().numpy()
    ref = _ref_zero_inflated(X, _ref_nb(X, np.exp(LOG_RATE), np.exp(LOG_THETA)), z)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_values_and_gradients_at_extremes(name, dtype):
    x = torch.tensor([0.0, 0.0, 1.0, 1e6, 0.0, 7.0], dtype=dtype)
    log_rate = torch.tensor([-30.0, 14.0, -30.0, 14.0, 0.0, 2.0], dtype=dtype, requires_grad=True)
    logit_z = torch.tensor([-30.0, 30.0, 30.0, -30.0, 0.0, 0.0], dtype=dtype, requires_grad=True)
    log_theta = torch.tensor([-5.0, 8.0, 0.0, 3.0, 1.0, -1.0], dtype=dtype, requires_grad=True)
    ll = LIKELIHOODS[name].log_prob(x, log_rate, logit_z, log_theta)
    assert torch.isfinite(ll).all()
    ll.sum().backward()
    for p in (log_rate, logit_z, log_theta):
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_zip_probabilities_sum_to_one():
    x = torch.arange(0, 200, dtype=torch.float64)
    total = log_zip(x, torch.tensor(np.log(20.0)), torch.tensor(-1.0)).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_cell_sum_equals_the_gene_sum(dtype):
    from zipo_scvi._distributions import log_poisson, log_poisson_cells

    torch.manual_seed(0)
    x = torch.poisson(torch.rand(20, 50, dtype=torch.float64) * 5)
    x[0] = 0.0  # an empty cell
    logits = torch.randn(20, 50, dtype=torch.float64)
    log_l = torch.randn(20, 1, dtype=torch.float64) * 3 + 5

    def value_and_grads(fn, cast):
        lg, ll = cast(logits).requires_grad_(True), cast(log_l).requires_grad_(True)
        out = fn(cast(x), torch.log_softmax(lg, dim=1), ll)
        return (out, *torch.autograd.grad(out.sum(), (lg, ll)))

    # reference: the gene-by-gene sum in float64
    ref = value_and_grads(lambda x_, lm, ll: log_poisson(x_, ll + lm).sum(1), lambda t: t)
    short = value_and_grads(log_poisson_cells, lambda t: t.to(dtype))
    tol = {"rtol": 1e-5, "atol": 1e-3} if dtype == torch.float32 else {}
    for a, b in zip(short, ref):
        torch.testing.assert_close(a.double(), b, **tol)


def _expected_log1p_ref(pmf, scale, top):
    y = np.arange(top)
    return float((pmf(y) * np.log1p(scale * y)).sum())


@pytest.mark.parametrize("rate", [1e-6, 0.1, 1.0, 5.0, 15.9, 16.1, 40.0, 1e3, 1e6])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_expected_log1p_poisson_and_zip_match_scipy(rate, scale):
    top = int(rate + 40 * np.sqrt(rate) + 200)
    ref = _expected_log1p_ref(lambda y: stats.poisson.pmf(y, rate), scale, top)
    heads = {"log_rate": torch.tensor([np.log(rate)], dtype=torch.float64)}
    got = LIKELIHOODS["poisson"].expected_log1p(heads, scale).item()
    assert got == pytest.approx(ref, rel=1e-3, abs=1e-12)
    z = 0.3  # zero inflation scales the expectation by 1 - z (log1p(0) = 0)
    heads["logit_z"] = torch.tensor([special.logit(z)], dtype=torch.float64)
    got_zip = LIKELIHOODS["zip"].expected_log1p(heads, scale).item()
    assert got_zip == pytest.approx((1 - z) * ref, rel=1e-3, abs=1e-12)


@pytest.mark.parametrize("rate", [0.5, 10.0, 20.0, 200.0])
def test_expected_log1p_nb_matches_scipy_where_theta_is_large(rate):
    theta = 5.0  # the documented accuracy: under 0.01 in log units for theta >= 5
    p = theta / (theta + rate)
    ref = _expected_log1p_ref(lambda y: stats.nbinom.pmf(y, theta, p), 2.0, 100_000)
    heads = {
        "log_rate": torch.tensor([np.log(rate)], dtype=torch.float64),
        "log_theta": torch.tensor([np.log(theta)], dtype=torch.float64),
    }
    assert LIKELIHOODS["nb"].expected_log1p(heads, 2.0).item() == pytest.approx(ref, abs=0.01)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expected_log1p_is_finite_and_below_log1p_of_the_mean(name, dtype):
    log_rate = torch.tensor([-float("inf"), -80.0, -5.0, 0.0, 2.7, 3.0, 10.0, 30.0], dtype=dtype)
    heads = {
        "log_rate": log_rate,
        "logit_z": torch.full_like(log_rate, -2.0),
        "log_theta": torch.full_like(log_rate, 1.0),
    }
    for scale in (1e-6, 1.0, 1e4):
        got = LIKELIHOODS[name].expected_log1p(heads, scale)
        assert torch.isfinite(got).all() and (got >= 0).all()
        assert got[0] < 1e-30  # a rate of 0 gives 0
        # Jensen: never above log1p of the mean (beyond float rounding)
        bound = torch.log1p(scale * LIKELIHOODS[name].mean(heads))
        assert (got <= bound * (1 + 1e-5) + 1e-6).all()
