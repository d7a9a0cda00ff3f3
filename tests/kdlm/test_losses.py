"""Tests for kdlm.losses: exactness against full-tensor references, hand-computed values, chunking,
masking, numerics (extreme / -inf logits, bfloat16), statistics, hyperparameter validation, the generic
per-token path, and what importing the package leaves alone."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdlm
from kdlm.losses import HPARAMS, IGNORE_INDEX, LOSSES, akl, decoupled, kl, skew, validate_hparams
from kdlm.losses.akl_rows import head_gap
from kdlm.losses.engine import NEG_LARGE, per_token, per_token_loss, run, softmax_and_log
from kdlm.losses.reference import REFERENCE, _prep
from kdlm.losses.reference import _tckd_nckd as _ref_tckd_nckd
from kdlm.losses.signal import HiddenStates
from kdlm.methods import LOSS_NAMES

KD_LOSSES = [name for name in LOSSES if name != "sft"]
# (name, hparams) variants checked against the references
VARIANTS = [(name, {}) for name in LOSSES] + [
    ("jsd", {"forward_ratio": 0.3}),
    ("gjsd", {"beta": 0.1}),
    ("gjsd", {"beta": 0.9}),
    ("gjsd", {"beta": 0.0}),
    ("gjsd", {"beta": 1.0}),
    ("skl", {"alpha": 0.5}),
    ("srkl", {"alpha": 0.5}),
    ("dkd", {"alpha": 0.5, "beta": 2.0}),
    ("atkd", {"setting": "reverse"}),
    ("atkd", {"lam": 0.7, "hard_fraction": 0.25}),
    ("atkd", {"hard_fraction": 1.0}),
    ("akl", {"mu": 0.2}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in hp.items())}" for n, hp in VARIANTS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _batch(B=2, T=5, V=13, dtype=torch.float64, scale=3.0, n_ignored=3):
    """Random student/teacher logits (B, T, V) and labels (B, T) with some ignored positions."""
    s = (torch.randn(B, T, V, dtype=dtype) * scale).requires_grad_()
    t = torch.randn(B, T, V, dtype=dtype) * scale
    y = torch.randint(0, V, (B, T))
    y.view(-1)[torch.randperm(B * T)[:n_ignored]] = IGNORE_INDEX
    return s, t, y


def _value_and_grad(fn, s, t, y, **hp):
    loss = fn(s, t, y, **hp)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------------
# exactness, gradients, chunking, masking
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_reference_float64(name, hp, temperature):
    s, t, y = _batch()
    got, g_got = _value_and_grad(LOSSES[name], s, t, y, temperature=temperature, chunk_size=3, **hp)
    want, g_want = _value_and_grad(REFERENCE[name], s, t, y, temperature=temperature, **hp)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=IDS)
def test_chunked_equals_unchunked(name, hp):
    s, t, y = _batch(B=3, T=7)
    whole, g_whole = _value_and_grad(LOSSES[name], s, t, y, chunk_size=10_000, **hp)
    for chunk in (1, 4):
        part, g_part = _value_and_grad(LOSSES[name], s, t, y, chunk_size=chunk, **hp)
        torch.testing.assert_close(part, whole, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_part, g_whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_ignored_gives_zero_and_zero_grad(name):
    s, t, y = _batch(dtype=torch.float32)
    y[:] = IGNORE_INDEX
    loss, grad = _value_and_grad(LOSSES[name], s, t, y)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(s))


@pytest.mark.parametrize("name", list(LOSSES))
def test_ignored_positions_get_no_gradient_and_do_not_matter(name):
    s, t, y = _batch()
    loss, grad = _value_and_grad(LOSSES[name], s, t, y)
    ignored = y == IGNORE_INDEX
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))
    s2 = s.detach().clone()
    s2[ignored] = torch.randn_like(s2[ignored]) * 100
    t2 = t.clone()
    t2[ignored] = torch.randn_like(t2[ignored])
    torch.testing.assert_close(LOSSES[name](s2, t2, y), loss, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "hp"), [v for v in VARIANTS if v[0] != "akl"], ids=[i for i in IDS if not i.startswith("akl")])
def test_gradcheck(name, hp):
    s, t, y = _batch(B=1, T=4, V=5, n_ignored=1)
    fn = LOSSES[name]
    assert torch.autograd.gradcheck(lambda x: fn(x, t, y, chunk_size=2, **hp), (s,), eps=1e-6, atol=1e-7)


def test_akl_gradient_treats_weights_as_constants():
    # Wu et al. detach the student inside the head/tail weights; gradcheck does not apply, so compare with
    # autograd through the reference (which detaches too) at several temperatures.
    for temperature in (0.7, 1.0, 3.0):
        s, t, y = _batch(B=1, T=6, V=7, n_ignored=0)
        _, g = _value_and_grad(LOSSES["akl"], s, t, y, temperature=temperature, chunk_size=2)
        _, g_ref = _value_and_grad(REFERENCE["akl"], s, t, y, temperature=temperature)
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-12)


def test_teacher_gets_no_gradient_and_grad_output_scales():
    s, t, y = _batch()
    t.requires_grad_()
    for name in KD_LOSSES:
        loss = LOSSES[name](s, t, y)
        (g1,) = torch.autograd.grad(loss, s, retain_graph=True)
        total = 3.0 * LOSSES[name](s, t, y) + (s**2).sum()
        gs, gt = torch.autograd.grad(total, (s, t), allow_unused=True)
        assert gt is None
        torch.testing.assert_close(gs, 3.0 * g1 + 2 * s.detach())


@pytest.mark.parametrize(("name", "hp"), VARIANTS, ids=IDS)
def test_counted_rows_equal_the_masked_batch(name, hp):
    # the trainer hands the losses (1, N, V) logits of the counted positions only: the same loss, and the
    # gradient rows of the masked (B, T, V) batch at the counted positions (the rest are zeros)
    s, t, y = _batch(B=3, T=7, n_ignored=8)
    counted = y != IGNORE_INDEX
    rows = s.detach()[counted][None].clone().requires_grad_()  # (1, N, V)
    for chunk in (1, 4, 10_000):
        whole, g_whole = _value_and_grad(LOSSES[name], s, t, y, chunk_size=chunk, **hp)
        got, g_got = _value_and_grad(LOSSES[name], rows, t[counted][None], y[counted][None], chunk_size=chunk, **hp)
        torch.testing.assert_close(got, whole, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_got[0], g_whole[counted], rtol=1e-12, atol=1e-14)
        assert torch.equal(g_whole[~counted], torch.zeros_like(g_whole[~counted]))


@pytest.mark.parametrize("name", KD_LOSSES)
@pytest.mark.parametrize("layout", ["masked", "counted"])
def test_teacher_as_hidden_states_equals_its_logits(name, layout):
    # the teacher given as hidden states x output layer (a chunk of logits at a time) gives the loss and
    # gradient of its logits, with contiguous and gathered chunks (masked rows) alike
    B, T, V, d = 3, 7, 13, 5
    s, _, y = _batch(B=B, T=T, V=V, n_ignored=8)
    hidden = torch.randn(B, T, d, dtype=torch.float64)
    weight = torch.randn(V + 3, d, dtype=torch.float64)  # a padded output layer: rows past V are cut
    bias = torch.randn(V + 3, dtype=torch.float64)
    if layout == "counted":
        counted = y != IGNORE_INDEX
        s, hidden, y = s.detach()[counted][None].clone().requires_grad_(), hidden[counted][None], y[counted][None]
    logits = hidden @ weight[:V].T + bias[:V]  # (., ., V)
    for b in (bias, None):
        t = logits if b is not None else logits - bias[:V]
        want, g_want = _value_and_grad(LOSSES[name], s, t, y, chunk_size=4)
        got, g_got = _value_and_grad(LOSSES[name], s, HiddenStates(hidden, weight, b, V), y, chunk_size=4)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_and_log_match_log_softmax(dtype):
    # the engine's one-softmax probabilities and log-probabilities, also with -inf entries and a row of
    # NEG_LARGE only (what the -inf retry makes of an all -inf row)
    z = torch.randn(6, 50, dtype=dtype) * 4
    z[1, :10] = -math.inf
    z[2, 3] = 200.0
    z[3, :] = NEG_LARGE
    z[4] *= 100
    tol = {"rtol": 1e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-12}
    # the log-normalizer read off the largest entry (no target), off the targets' entries (rows whose
    # targets' probabilities are normal floats), and off the largest where one underflows (row 1's target
    # has a -inf logit)
    good = torch.tensor([5, 12, 3, 7])  # rows 0-3
    cases = [(z, None, z.amax(-1, keepdim=True)), (z[:4], good, z[:4].gather(1, good[:, None])),
             (z[:4], torch.tensor([5, 3, 3, 7]), z[:4].amax(-1, keepdim=True))]  # fmt: skip
    for zz, target, ref_want in cases:
        log_p, p = torch.empty_like(zz), torch.empty_like(zz)
        ref, _ = softmax_and_log(zz, log_p, p, target)
        assert torch.equal(ref, ref_want)
        torch.testing.assert_close(p, torch.softmax(zz, -1), **tol)
        torch.testing.assert_close(log_p, torch.log_softmax(zz, -1), **tol)


def test_sft_ignores_teacher_and_matches_cross_entropy():
    s, _, y = _batch()
    loss = LOSSES["sft"](s, None, y)
    counted = y != IGNORE_INDEX
    want = torch.nn.functional.cross_entropy(s[counted], y[counted])
    torch.testing.assert_close(loss, want)
    assert LOSSES["sft"](s, torch.randn_like(s), y).item() == pytest.approx(loss.item())


# ---------------------------------------------------------------------------------------------------
# hand-computed values on a tiny tensor: 1 x 2 tokens x 3 vocabulary entries
# ---------------------------------------------------------------------------------------------------

S_TINY = [[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]]
T_TINY = [[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]]
Y_TINY = [0, 2]


def _sm(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _per_token(name, ps, pt, g):
    """The loss of one token with default hyperparameters, from probability lists."""
    if name == "forward":
        return _kl(pt, ps)
    if name == "reverse":
        return _kl(ps, pt)
    if name == "jsd":
        return 0.9 * _kl(pt, ps) + 0.1 * _kl(ps, pt)
    if name == "gjsd":
        m = [(a + b) / 2 for a, b in zip(pt, ps, strict=True)]
        return 0.5 * _kl(pt, m) + 0.5 * _kl(ps, m)
    if name == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(ps, pt, strict=True))
    if name == "skl":
        return _kl(pt, [0.1 * a + 0.9 * b for a, b in zip(pt, ps, strict=True)])
    if name == "srkl":
        return _kl(ps, [0.9 * a + 0.1 * b for a, b in zip(pt, ps, strict=True)])
    if name == "sft":
        return -math.log(ps[g])
    raise AssertionError(name)


def _tckd_nckd(ps, pt, g):
    b_s, b_t = [ps[g], 1 - ps[g]], [pt[g], 1 - pt[g]]
    hat_s = [p / (1 - ps[g]) for j, p in enumerate(ps) if j != g]
    hat_t = [p / (1 - pt[g]) for j, p in enumerate(pt) if j != g]
    return _kl(b_t, b_s), _kl(hat_t, hat_s)


def _hand_value(name):
    toks = [(_sm(s), _sm(t), g) for s, t, g in zip(S_TINY, T_TINY, Y_TINY, strict=True)]
    if name == "dkd":
        return sum(a + 8 * b for a, b in (_tckd_nckd(ps, pt, g) for ps, pt, g in toks)) / 2
    if name == "atkd":
        # u = 1 - p_t[g]: token 0 has u ~ 0.24, token 1 u ~ 0.10; torch.median of two = the lower one,
        # so token 1 (u == threshold) is hard and token 0 (u > threshold) is hard too: easy is empty.
        us = [1 - pt[g] for _, pt, g in toks]
        thr = sorted(us)[0]
        easy = [tok for tok, u in zip(toks, us, strict=True) if u < thr]
        hard = [tok for tok, u in zip(toks, us, strict=True) if u >= thr]
        assert not easy and len(hard) == 2
        hard_loss = sum(sum(_tckd_nckd(ps, pt, g)) for ps, pt, g in hard) / len(hard)
        return 0.8 * hard_loss
    if name == "akl":
        total = 0.0
        for ps, pt, _ in toks:
            order = sorted(range(3), key=lambda j: -pt[j])
            csum, head = 0.0, []
            for rank, j in enumerate(order):
                csum += pt[j]
                if rank == 0 or csum <= 0.5:
                    head.append(j)
            err = [abs(pt[j] - ps[j]) for j in range(3)]
            gh = sum(err[j] for j in head)
            wh = gh / sum(err)
            total += wh * _kl(pt, ps) + (1 - wh) * _kl(ps, pt)
        return total / 2
    return sum(_per_token(name, ps, pt, g) for ps, pt, g in toks) / 2


@pytest.mark.parametrize("name", ["forward", "reverse", "jsd", "gjsd", "tvd", "skl", "srkl", "dkd", "atkd", "akl", "sft"])
def test_hand_computed_value(name):
    s = torch.tensor([S_TINY])
    t = torch.tensor([T_TINY])
    y = torch.tensor([Y_TINY])
    assert LOSSES[name](s, t, y).item() == pytest.approx(_hand_value(name), rel=1e-5)


def test_atkd_easy_hard_split_hand_computed():
    # four tokens, teacher uncertainties u = 1 - p_t[g] known by construction; median = 2nd smallest
    V = 4
    s = torch.randn(1, 4, V, dtype=torch.float64)
    t = torch.zeros(1, 4, V, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 3]])
    for i, logit in enumerate([4.0, 3.0, 2.0, 1.0]):  # higher target logit -> lower u
        t[0, i, y[0, i]] = logit
    stats: dict = {}
    loss = LOSSES["atkd"](s, t, y, stats=stats)
    u = 1 - torch.softmax(t, -1)[0, torch.arange(4), y[0]]
    assert stats["atkd_threshold"] == pytest.approx(u.sort().values[1].item())
    assert (stats["atkd_n_easy"], stats["atkd_n_hard"]) == (1.0, 3.0)
    per = [LOSSES["dkd"](s[:, i : i + 1], t[:, i : i + 1], y[:, i : i + 1], alpha=1.0, beta=0.0) for i in range(4)]
    nc = [LOSSES["dkd"](s[:, i : i + 1], t[:, i : i + 1], y[:, i : i + 1], alpha=0.0, beta=1.0) for i in range(4)]
    easy = nc[0]
    hard = sum(per[i] + nc[i] for i in (1, 2, 3)) / 3
    torch.testing.assert_close(loss, 0.2 * easy + 0.8 * hard)
    assert stats["atkd_loss_easy"] == pytest.approx(easy.item())
    assert stats["atkd_loss_hard"] == pytest.approx(hard.item())


# ---------------------------------------------------------------------------------------------------
# identities and properties
# ---------------------------------------------------------------------------------------------------


def test_decomposition_identity_kl_equals_tckd_plus_weighted_nckd():
    s, t, y = _batch(B=1, T=8, V=11, n_ignored=0)
    pt = torch.softmax(t, -1)
    for i in range(8):
        one = (s[:, i : i + 1], t[:, i : i + 1], y[:, i : i + 1])
        kl = LOSSES["forward"](*one)
        tckd = LOSSES["dkd"](*one, alpha=1.0, beta=0.0)
        nckd = LOSSES["dkd"](*one, alpha=0.0, beta=1.0)
        torch.testing.assert_close(kl, tckd + (1 - pt[0, i, y[0, i]]) * nckd, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", KD_LOSSES)
def test_identical_inputs_give_zero(name):
    s, _, y = _batch()
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = s.detach().to(dtype).requires_grad_()
        loss, grad = _value_and_grad(LOSSES[name], x, x.detach().clone(), y)
        assert abs(loss.item()) < tol
        assert grad.abs().max().item() < tol


def test_tvd_bounded_and_gjsd_symmetric_and_limits():
    s, t, y = _batch(scale=10.0)
    assert 0.0 <= LOSSES["tvd"](s, t, y).item() <= 1.0
    # disjoint supports: TVD -> 1
    far_s = torch.full((1, 1, 4), -1e4)
    far_s[..., 0] = 1e4
    far_t = torch.full((1, 1, 4), -1e4)
    far_t[..., 1] = 1e4
    assert LOSSES["tvd"](far_s, far_t, torch.tensor([[2]])).item() == pytest.approx(1.0)
    sd = s.detach()
    torch.testing.assert_close(LOSSES["gjsd"](sd, t, y, beta=0.5), LOSSES["gjsd"](t, sd, y, beta=0.5))
    assert LOSSES["gjsd"](sd, t, y, beta=0.5).item() <= math.log(2) + 1e-12
    torch.testing.assert_close(LOSSES["gjsd"](sd, t, y, beta=0.0), LOSSES["forward"](sd, t, y))
    torch.testing.assert_close(LOSSES["gjsd"](sd, t, y, beta=1.0), LOSSES["reverse"](sd, t, y))
    # the normalized small-beta limit approaches forward KL
    s1, t1, y1 = _batch(scale=1.0)
    s1 = s1.detach()
    small = LOSSES["gjsd"](s1, t1, y1, beta=1e-6) / 1e-6
    assert small.item() == pytest.approx(LOSSES["forward"](s1, t1, y1).item(), rel=1e-3)
    large = LOSSES["gjsd"](s1, t1, y1, beta=1 - 1e-6) / 1e-6
    assert large.item() == pytest.approx(LOSSES["reverse"](s1, t1, y1).item(), rel=1e-3)
    # the paper's "jsd" is the forward/reverse mixture, not a JSD
    torch.testing.assert_close(
        LOSSES["jsd"](sd, t, y), 0.9 * LOSSES["forward"](sd, t, y) + 0.1 * LOSSES["reverse"](sd, t, y)
    )


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(list(LOSSES)),
    B=st.integers(1, 3),
    T=st.integers(1, 6),
    V=st.integers(2, 17),
    temperature=st.floats(0.3, 4.0),
    chunk=st.integers(1, 9),
    p_ignore=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(name, B, T, V, temperature, chunk, p_ignore, seed):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 4).requires_grad_()
    t = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, V, (B, T), generator=g)
    y[torch.rand(B, T, generator=g) < p_ignore] = IGNORE_INDEX
    got, g_got = _value_and_grad(LOSSES[name], s, t, y, temperature=temperature, chunk_size=chunk)
    want, g_want = _value_and_grad(REFERENCE[name], s, t, y, temperature=temperature)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-10)
    if name == "tvd":
        assert 0.0 <= got.item() <= 1.0 + 1e-12
    elif name != "sft":
        assert got.item() >= -1e-10


# ---------------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------------


def _extreme_batch(dtype=torch.float32):
    """Logits of +-1e4 so that p[g] -> 1 (confident) and p[g] -> 0 occur, plus -inf vocabulary entries."""
    B, T, V = 2, 6, 9
    sgn_s = torch.randn(B, T, V).sign()
    sgn_t = torch.randn(B, T, V).sign()
    s = (sgn_s * 1e4).to(dtype)
    t = (sgn_t * 1e4).to(dtype)
    y = torch.randint(0, V - 2, (B, T))
    s[0, 0], t[0, 0] = -1e4, -1e4
    s[0, 0, y[0, 0]], t[0, 0, y[0, 0]] = 1e4, 1e4  # both certain of the target: p[g] = 1
    t[0, 1, y[0, 1]] = -1e4  # teacher p[g] -> 0
    s[1, :, -2:] = -math.inf  # padded vocabulary entries, in both models
    t[1, :, -2:] = -math.inf
    return s, t, y


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_at_extreme_and_neg_inf_logits(name, dtype):
    s, t, y = _extreme_batch(dtype)
    s.requires_grad_()
    loss, grad = _value_and_grad(LOSSES[name], s, t, y, chunk_size=4)
    assert torch.isfinite(loss)
    assert grad.dtype == dtype
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("name", KD_LOSSES)
def test_neg_inf_entries_agree_with_dropping_them(name):
    # -inf logits in both models carry zero probability: the loss equals the loss on the vocabulary
    # without those entries (targets stay in the finite part)
    s, t, y = _batch(V=10)
    y = y.clamp(max=7)
    s_inf = s.detach().clone()
    t_inf = t.clone()
    s_inf[..., 8:] = -math.inf
    t_inf[..., 8:] = -math.inf
    s_inf.requires_grad_()
    got, g_got = _value_and_grad(LOSSES[name], s_inf, t_inf, y)
    s_cut = s.detach()[..., :8].clone().requires_grad_()
    want, g_want = _value_and_grad(LOSSES[name], s_cut, t[..., :8], y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got[..., :8], g_want, rtol=1e-10, atol=1e-12)
    assert torch.equal(g_got[..., 8:], torch.zeros_like(g_got[..., 8:]))


def _exact_tckd_nckd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
    """Per-token TCKD, NCKD (N,) from logsumexps over all / non-target logits: no 1 - p[g] anywhere."""
    s, t, y = s.detach()[0], t[0], y[0]  # (T, V), (T, V), (T,)
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, y[:, None], False)  # (T, V)
    s_nt, t_nt = s[keep].view(len(y), -1), t[keep].view(len(y), -1)  # (T, V-1)

    def parts(z, z_nt):
        lse = z.logsumexp(-1)
        return z.gather(1, y[:, None]).squeeze(1) - lse, z_nt.logsumexp(-1) - lse, z_nt.log_softmax(-1)

    lgs, l1s, hs = parts(s, s_nt)
    lgt, l1t, ht = parts(t, t_nt)
    tckd = lgt.exp() * (lgt - lgs) + l1t.exp() * (l1t - l1s)
    nckd = (ht.exp() * (ht - hs)).sum(-1)
    return tckd, nckd, l1t.exp()


def test_decoupled_exact_when_target_nearly_certain():
    # p[g] = 1 - 1e-30: 1 - p[g] underflows if taken as a difference; the non-target sum must not. And a
    # row whose non-target mass underflows entirely in float64 takes the exact log-space fallback.
    V = 6
    s = torch.randn(1, 4, V, dtype=torch.float64)
    t = torch.randn(1, 4, V, dtype=torch.float64)
    y = torch.tensor([[1, 2, 3, 4]])
    t[0, 0, 1] = 70.0
    s[0, 1, 2] = 800.0
    t[0, 3, 4] = 900.0
    tckd, nckd, u = _exact_tckd_nckd(s, t, y)
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    s.requires_grad_()
    got, g = _value_and_grad(LOSSES["dkd"], s, t, y)
    torch.testing.assert_close(got, tckd.mean() + 8 * nckd.mean(), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(g).all()
    got, g = _value_and_grad(LOSSES["atkd"], s, t, y)
    easy = u < u.median()
    want = 0.2 * nckd[easy].mean() + 0.8 * (tckd + nckd)[~easy].mean()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(g).all()


def test_bfloat16_close_to_float32():
    s, t, y = _batch(dtype=torch.float32)
    for name in LOSSES:
        ref = LOSSES[name](s.detach().bfloat16().float(), t.bfloat16().float(), y)
        got = LOSSES[name](s.detach().bfloat16(), t.bfloat16(), y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# statistics and validation
# ---------------------------------------------------------------------------------------------------


def test_stats_are_plain_floats():
    s, t, y = _batch()
    for name in LOSSES:
        stats: dict = {}
        LOSSES[name](s, t, y, stats=stats)
        assert stats["n_tokens"] == float((y != IGNORE_INDEX).sum())
        assert all(type(v) is float for v in stats.values())
    stats = {}
    LOSSES["atkd"](s, t, y, stats=stats)
    assert {"atkd_threshold", "atkd_n_easy", "atkd_n_hard", "atkd_loss_easy", "atkd_loss_hard"} <= set(stats)
    assert stats["atkd_n_easy"] + stats["atkd_n_hard"] == stats["n_tokens"]
    pt = torch.softmax(t, -1)
    counted = y != IGNORE_INDEX
    u = 1 - pt[counted].gather(1, y[counted].unsqueeze(1)).squeeze(1)
    assert stats["atkd_threshold"] == pytest.approx(u.median().item())
    assert stats["atkd_n_hard"] == float((u >= u.median()).sum())


def test_validate_hparams():
    for name, spec in HPARAMS.items():
        validate_hparams(name, {k: p.default for k, p in spec.items()})
    with pytest.raises(ValueError, match="unknown loss 'nope'.*atkd"):
        validate_hparams("nope", {})
    with pytest.raises(ValueError, match="'atkd'.*'lambda'.*allowed: .*lam"):
        validate_hparams("atkd", {"lambda": 0.2})
    with pytest.raises(ValueError, match="setting='both'.*vanilla\\|reverse"):
        validate_hparams("atkd", {"setting": "both"})
    with pytest.raises(ValueError, match="lam=1.5.*\\[0, 1\\]"):
        validate_hparams("atkd", {"lam": 1.5})
    with pytest.raises(ValueError, match="temperature=0"):
        validate_hparams("forward", {"temperature": 0})
    with pytest.raises(ValueError, match="chunk_size"):
        validate_hparams("dkd", {"chunk_size": 0})
    s, t, y = _batch()
    with pytest.raises(ValueError, match="beta"):
        LOSSES["gjsd"](s, t, y, beta=2.0)
    with pytest.raises(ValueError, match="labels"):
        LOSSES["forward"](s, t, y.clamp(min=0) + 100)
    with pytest.raises(ValueError, match="shape"):
        LOSSES["forward"](s, t[:, :-1], y)


def _sorted_head_gap(pt, ps, mu):
    """The definition, straightforwardly: sort (ties by column), cumulative mass <= mu, top token always."""
    sorted_p, order = pt.double().sort(dim=-1, descending=True, stable=True)
    head = sorted_p.cumsum(-1) <= mu
    head[:, 0] = True
    return ((pt - ps).double().gather(1, order).abs() * head).sum(-1)


HEAD_SEARCHES = {"rows": head_gap, "sorted": akl.head_gap_sorted}  # the CPU search, the tensor-op sort


@pytest.mark.parametrize("V", [3, 127, 1000, 9001, 50272])
@pytest.mark.parametrize("scale", [0.05, 0.5, 3.0, 20.0])
@pytest.mark.parametrize("search", list(HEAD_SEARCHES))
def test_akl_head_gap_matches_full_sort(V, scale, search):
    # scale 0.05 makes rows so flat that the block-maxima bound fails (the floor comes from bisection on
    # the row), 0.5 makes the head hundreds of tokens, 20 a single token; V < 128 has no whole block
    g = torch.Generator().manual_seed(V)
    pt = torch.softmax(torch.randn(6, V, dtype=torch.float64, generator=g) * scale, -1)
    ps = torch.softmax(torch.randn(6, V, dtype=torch.float64, generator=g) * scale, -1)
    pt[0] = torch.softmax(torch.randn(V, dtype=torch.float64, generator=g) * 20, -1)  # one peaked row mixed in
    pt[1] = torch.softmax(torch.randn(V, dtype=torch.float64, generator=g) * 0.01, -1)  # and one flat
    for mu in (0.0, 0.2, 0.5, 0.95, 1.0):
        torch.testing.assert_close(HEAD_SEARCHES[search](pt, ps, mu), _sorted_head_gap(pt, ps, mu), rtol=1e-12, atol=1e-15)
    # float32 probabilities (what training computes in): same head, sums to float32 precision
    pt32, ps32 = pt.float(), ps.float()
    torch.testing.assert_close(HEAD_SEARCHES[search](pt32, ps32, 0.5).double(), _sorted_head_gap(pt32, ps32, 0.5),
                               rtol=1e-5, atol=1e-9)  # fmt: skip


@pytest.mark.parametrize("V", [200, 1000, 50272])
@pytest.mark.parametrize("search", list(HEAD_SEARCHES))
def test_akl_head_gap_with_head_tokens_sharing_a_block_and_in_the_tail(V, search):
    # the block bound must not drop a head token that is not its block's maximum (blocks are strided,
    # columns b, b + V // 64, ...; consecutive columns are tested too), nor one in the columns after the
    # last whole stripe; zero probabilities (-inf logits) must not enter the head; ties go by column
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, V, dtype=torch.float64, generator=g)
    z[0, :5] += 9.0  # five large entries in consecutive columns
    z[1, torch.arange(6) * (V // 64)] += 9.0  # six in one strided block
    z[2, -3:] += 10.0  # three in the last columns (outside the stripes when 64 does not divide V)
    z[3, ::7] = -math.inf
    z[4, :] = 0.0
    z[4, torch.randperm(V, generator=g)[:30]] = 9.0  # thirty tied tokens; the head's edge falls among them
    pt, ps = torch.softmax(z, -1), torch.softmax(torch.randn(5, V, dtype=torch.float64, generator=g), -1)
    torch.testing.assert_close(HEAD_SEARCHES[search](pt, ps, 0.5), _sorted_head_gap(pt, ps, 0.5), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_tensor_kernels_match_reference(temperature):
    # each kernel's tensor-op version (.on_device: what runs on GPUs; the CPU runs the numba rows), on CPU tensors
    def decoupled_ref(s, t, y, temperature, reverse, alpha=0.7, beta=3.0):
        s_, t_, mask, n = _prep(s, t, y, temperature)
        tckd, nckd = _ref_tckd_nckd(s_, t_, y, reverse=reverse)
        return ((alpha * tckd + beta * nckd) * mask).sum() / n

    s, t, y = _batch(B=3, T=6, V=300)
    cases = [(akl.make_kernel(mu).on_device, {"akl": 1.0}, REFERENCE["akl"], {"mu": mu}) for mu in (0.2, 0.5)]
    cases += [(kl.jsd_kernel.on_device, {"forward": r, "reverse": 1.0 - r}, REFERENCE["jsd"], {"forward_ratio": r}) for r in (0.9, 0.3)]
    cases += [(decoupled.make_kernel(setting).on_device, {"tckd": 0.7, "nckd": 3.0}, decoupled_ref, {"reverse": setting == "reverse"})
              for setting in ("vanilla", "reverse")]  # fmt: skip
    cases += [(kl.tvd_kernel.on_device, {"tvd": 1.0}, REFERENCE["tvd"], {})]
    cases += [(kl.forward_kernel.on_device, {"kl": 1.0}, REFERENCE["forward"], {}),
              (kl.reverse_kernel.on_device, {"kl": 1.0}, REFERENCE["reverse"], {})]  # fmt: skip
    cases += [(skew.make_gjsd(b).on_device, {"gjsd": 1.0}, REFERENCE["gjsd"], {"beta": b}) for b in (0.1, 0.5)]
    cases += [(make(a).on_device, {name: 1.0}, REFERENCE[name], {"alpha": a})
              for name, make in (("skl", skew.make_skl), ("srkl", skew.make_srkl)) for a in (0.1, 0.5)]  # fmt: skip
    for kernel, coef, reference, hp in cases:
        got = run(s, t, y, kernel, coef, temperature, 4)[0]
        (g_got,) = torch.autograd.grad(got, s)
        want, g_want = _value_and_grad(reference, s, t, y, temperature=temperature, **hp)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# the registry and the generic per-token path
# ---------------------------------------------------------------------------------------------------


def test_every_loss_has_hparams_and_a_reference():
    assert set(LOSSES) == set(HPARAMS) == set(LOSS_NAMES) == set(REFERENCE)


def _forward_per_token(log_p_student, log_p_teacher, target):
    """KL(p_t || p_s) per token, written plainly; autograd takes the gradient."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)


def _tvd_per_token(log_p_student, log_p_teacher, target):
    return 0.5 * (log_p_student.exp() - log_p_teacher.exp()).abs().sum(-1)


def _jsd_per_token(log_p_student, log_p_teacher, target, forward_ratio):
    d = log_p_student - log_p_teacher
    fkl, rkl = -(log_p_teacher.exp() * d).sum(-1), (log_p_student.exp() * d).sum(-1)
    return forward_ratio * fkl + (1 - forward_ratio) * rkl


# existing losses written as per-token functions: (registered name whose hparams they take, fn, hparams)
PER_TOKEN = {
    "forward": ("forward", _forward_per_token, {}),
    "tvd": ("tvd", _tvd_per_token, {}),
    "jsd-0.3": ("jsd", _jsd_per_token, {"forward_ratio": 0.3}),
}


@pytest.mark.parametrize("case", list(PER_TOKEN))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk", [1, 3, 10_000])
def test_per_token_path_matches_hand_written_and_reference(case, temperature, chunk):
    name, fn, hp = PER_TOKEN[case]
    rows_seen = []

    def recorded(log_p_student, *args, **kwargs):
        rows_seen.append(log_p_student.shape[0])
        return fn(log_p_student, *args, **kwargs)

    generic = per_token_loss(name, recorded)
    s, t, y = _batch(B=3, T=7)
    stats: dict = {}
    loss = generic(s, t, y, temperature=temperature, chunk_size=chunk, stats=stats, **hp)
    (g_got,) = torch.autograd.grad(loss, s)
    got = loss.detach()
    assert max(rows_seen) <= chunk  # the function sees one chunk at a time
    assert stats == {"n_tokens": float((y != IGNORE_INDEX).sum())}
    hand, g_hand = _value_and_grad(LOSSES[name], s, t, y, temperature=temperature, chunk_size=chunk, **hp)
    want, g_want = _value_and_grad(REFERENCE[name], s, t, y, temperature=temperature, **hp)
    for value, grad in ((hand, g_hand), (want, g_want)):
        torch.testing.assert_close(got, value, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_got, grad, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # no gradient wanted: the function runs without a graph, same value
        torch.testing.assert_close(generic(s, t, y, temperature=temperature, chunk_size=chunk, **hp), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_path_low_precision_and_neg_inf(dtype):
    # -inf logits make the plain formula 0 * log 0 = nan: the engine redoes the chunk with them clamped
    s, t, y = _batch(B=2, T=6, V=10)
    s, t = s.detach().to(dtype), t.to(dtype)
    s[..., 8:] = -math.inf
    t[..., 8:] = -math.inf
    s.requires_grad_()
    got, g_got = _value_and_grad(per_token_loss("forward", _forward_per_token), s, t, y, chunk_size=4)
    hand, g_hand = _value_and_grad(LOSSES["forward"], s, t, y, chunk_size=4)
    assert got.dtype == torch.float32 and g_got.dtype == dtype
    torch.testing.assert_close(got, hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_got.float(), g_hand.float(), rtol=1e-2, atol=1e-4)
    assert torch.equal(g_got[..., 8:], torch.zeros_like(g_got[..., 8:]))


def test_per_token_kernel_runs_through_the_engine_with_term_weights():
    # the kernel alone, with non-uniform per-token weights (as ATKD gives its tokens)
    s, t, y = _batch(B=2, T=5)
    n = int((y != IGNORE_INDEX).sum())
    coef = {"loss": torch.linspace(0.1, 1.0, n, dtype=torch.float64)}
    got, g_got = _value_and_grad(lambda *a: run(*a, per_token(_forward_per_token), coef, 1.7, 3)[0], s, t, y)
    want, g_want = _value_and_grad(lambda *a: run(*a, kl.forward_kernel, {"kl": coef["loss"]}, 1.7, 3)[0], s, t, y)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# imports
# ---------------------------------------------------------------------------------------------------


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that imports this checkout's kdlm; its last stdout line as JSON."""
    root = str(Path(kdlm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_SETTINGS = """
import json, numba, torch
state = {"priority": list(numba.config.THREADING_LAYER_PRIORITY), "layer": numba.config.THREADING_LAYER,
         "numba_threads": numba.config.NUMBA_NUM_THREADS, "torch_threads": torch.get_num_threads(),
         "torch_interop": torch.get_num_interop_threads()}
"""


def test_importing_the_losses_changes_no_numba_or_torch_setting():
    fresh = _python(_SETTINGS + "print(json.dumps(state))")
    after = _python(
        "import importlib, pkgutil, kdlm.losses, kdlm.methods\n"
        "for m in pkgutil.iter_modules(kdlm.losses.__path__): importlib.import_module('kdlm.losses.' + m.name)\n"
        + _SETTINGS
        + "print(json.dumps(state))"
    )
    assert after == fresh


def test_methods_import_without_torch_or_numba():
    loaded = _python("import json, sys, kdlm.methods; print(json.dumps(sorted(sys.modules)))")
    assert not {"torch", "numba", "numpy"} & set(loaded)


def test_first_cpu_row_kernel_prefers_numbas_openmp_layer():
    # the threading layer is chosen on first use, not at import (unless the user chose one)
    state = _python(
        "import json, torch, numba\n"
        "from kdlm.losses import LOSSES\n"
        "LOSSES['tvd'](torch.randn(1, 2, 5), torch.randn(1, 2, 5), torch.tensor([[0, 1]]))\n"
        "print(json.dumps(list(numba.config.THREADING_LAYER_PRIORITY)))"
    )
    if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        assert state == ["omp", "tbb", "workqueue"]
