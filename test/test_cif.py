"""CIF: every backend against the float64 loop oracle, analytic gradients, torch-cif peer test."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from w2p import _ext
from w2p.cif import (CifWeightPredictor, cif, cif_reference, cif_reference_backward, cif_torch)

_ext.load()
FAST_BACKENDS = ["ext", "torch"]
ALL_BACKENDS = ["ext", "torch", "reference"]
def HYP(n):
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def cif_case(draw, max_b=4, max_t=40, max_c=6):
    """Shapes, lengths (padding), thresholds and alphas, including alpha > beta, zeros and
    dyadic values (exact threshold hits)."""
    B = draw(st.integers(1, max_b))
    T = draw(st.integers(1, max_t))
    C = draw(st.integers(1, max_c))
    beta = draw(st.sampled_from([1.0, 0.5, 0.75, 1.5, 2.0, 0.9]))
    kind = draw(st.sampled_from(["uniform", "large", "dyadic", "zeros", "sparse"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        a = torch.rand(B, T, generator=g, dtype=torch.float64)
    elif kind == "large":  # alpha > beta: several fires in one frame
        a = torch.rand(B, T, generator=g, dtype=torch.float64) * 4 * beta
    elif kind == "dyadic":  # exact boundary hits (0.25 multiples are exact in binary)
        a = torch.randint(0, 5, (B, T), generator=g).double() * 0.25
    elif kind == "zeros":
        a = torch.zeros(B, T, dtype=torch.float64)
    else:
        a = torch.rand(B, T, generator=g, dtype=torch.float64) * (torch.rand(B, T, generator=g) < 0.3)
    lengths = torch.tensor(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    lengths[0] = T  # at least one full row, like a real batch
    hidden = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    training = draw(st.booleans())
    target = torch.tensor(draw(st.lists(st.integers(0, 6), min_size=B, max_size=B))) if training else None
    tail = draw(st.sampled_from([0.5, 0.0, 0.25, 1.0, math.inf]))
    return hidden, a, lengths, beta, target, tail


def _check_same(res, ref, atol):
    out, out_lengths, fire = ref
    assert torch.equal(res.out_lengths, out_lengths), (res.out_lengths, out_lengths)
    assert torch.equal(res.fire_frames, fire), (res.fire_frames, fire)
    assert res.out.shape == out.shape
    torch.testing.assert_close(res.out, out, atol=atol, rtol=atol)


@HYP(70)
@given(cif_case())
def test_backends_match_oracle_float64(case):
    hidden, a, lengths, beta, target, tail = case
    # the oracle gets the same already-scaled alphas that cif() passes to its backend
    valid = torch.arange(a.shape[1])[None] < lengths[:, None]
    am = a * valid
    if target is not None:
        s = am.sum(1)
        am = am * torch.where(s > 0, beta * target.double() / torch.where(s > 0, s, 1), 0)[:, None]
    ref = cif_reference(hidden, am, lengths, beta, target, tail)
    if target is not None:
        assert torch.equal(ref[1], target)  # training fires exactly U times
    for backend in ALL_BACKENDS:
        res = cif(hidden, a, lengths, threshold=beta, target_lengths=target, tail_threshold=tail, backend=backend)
        _check_same(res, ref, atol=1e-9)
        torch.testing.assert_close(res.alpha_sum, (a * valid).sum(1))  # before any scaling


@HYP(25)
@given(cif_case(max_t=60, max_c=16))
def test_backends_match_oracle_float32(case):
    hidden, a, lengths, beta, target, tail = case
    hidden, a = hidden.float(), a.float()
    ref_in = a * (torch.arange(a.shape[1])[None] < lengths[:, None])
    assume(target is None)  # training path is covered in float64; scaling rounds differently per dtype
    ref = cif_reference(hidden, ref_in, lengths, beta, None, tail)
    for backend in FAST_BACKENDS:
        res = cif(hidden, a, lengths, threshold=beta, tail_threshold=tail, backend=backend)
        assert res.out.dtype == torch.float32
        _check_same(res, ref, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_alpha_above_threshold_fires_several_times_in_one_frame(backend):
    h = torch.tensor([[[1.0], [10.0]]])
    a = torch.tensor([[2.5, 0.7]])
    res = cif(h, a, backend=backend)
    # frame 0 fills outputs 0 and 1 (weight 1 each) and gives 0.5 to output 2, frame 1 finishes it
    assert res.out_lengths.tolist() == [3]
    assert res.fire_frames.tolist() == [[0, 0, 1]]
    torch.testing.assert_close(res.out[0, :, 0], torch.tensor([1.0, 1.0, 5.5]))
    torch.testing.assert_close(res.alpha_sum, torch.tensor([3.2]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_zero_alphas(backend):
    h = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    a = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    res = cif(h, a, backend=backend)
    assert res.out.shape == (2, 0, 3) and res.out_lengths.tolist() == [0, 0]
    # training: U zero vectors, no NaN anywhere (also not in the gradient)
    res = cif(h, a, target_lengths=torch.tensor([2, 0]), backend=backend)
    assert res.out_lengths.tolist() == [2, 0]
    assert res.fire_frames.tolist() == [[0, 0], [-1, -1]]
    assert torch.count_nonzero(res.out) == 0
    res.out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_single_frame_and_tail(backend):
    h = torch.tensor([[[2.0, -1.0]]])
    res = cif(h, torch.tensor([[0.7]]), backend=backend)  # leftover 0.7 >= 0.5: normalised tail
    assert res.out_lengths.tolist() == [1] and res.fire_frames.tolist() == [[0]]
    torch.testing.assert_close(res.out[0, 0], h[0, 0])  # (1 / 0.7) * 0.7 * h
    res = cif(h, torch.tensor([[0.3]]), backend=backend)
    assert res.out_lengths.tolist() == [0]
    res = cif(h, torch.tensor([[0.3]]), tail_threshold=0.25, backend=backend)
    assert res.out_lengths.tolist() == [1]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_exact_threshold_hits(backend):
    h = torch.arange(8.0).reshape(1, 8, 1)
    a = torch.full((1, 8), 0.25)
    # tail_threshold 0 must not fire an empty tail when the sum ends exactly on a boundary
    res = cif(h, a, tail_threshold=0.0, backend=backend)
    assert res.fire_frames.tolist() == [[3, 7]]
    torch.testing.assert_close(res.out[0, :, 0], torch.tensor([0.25 * 6, 0.25 * 22]))
    res = cif(h, a, threshold=0.5, backend=backend)  # an exact hit every second frame
    assert res.fire_frames.tolist() == [[1, 3, 5, 7]]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_long_input_does_not_drift(backend):
    T = 5000
    # fp32(0.1) = 0.1000000015: boundary k is reached at frame 10k-1, exactly, only if the running
    # sum keeps ~1e-9 relative precision over 5000 frames (a float32 running sum drifts by ~1e-4)
    a = torch.full((1, T), 0.1)
    h = torch.randn(1, T, 4)
    res = cif(h, a, backend=backend)
    assert torch.equal(res.fire_frames[0], torch.arange(9, T, 10))
    naive = torch.zeros(())
    for v in a[0]:  # what a float32 accumulator would do
        naive = naive + v
    assert abs(float(naive) - 500.0) > 1e-3
    if backend != "reference":  # compare the values with the oracle on random alphas too
        a2 = torch.rand(2, T, generator=torch.Generator().manual_seed(0))
        ref = cif_reference(h.expand(2, T, 4), a2)
        _check_same(cif(h.expand(2, T, 4).contiguous(), a2, backend=backend), ref, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_training_rounding_never_loses_the_last_fire(backend):
    # find rows whose scaled float32 alphas sum (in fp64) to just below U
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        a = torch.rand(1, 37, generator=g) * 0.9 + 0.05
        U = 11
        scaled = a * (U / a.double().sum()).float()
        if scaled.double().sum() < U:
            break
    else:
        pytest.fail("no rounding-short row found")
    h = torch.randn(1, 37, 3, generator=g)
    lost = cif(h, scaled, tail_threshold=math.inf, backend=backend)
    assert lost.out_lengths.tolist() == [U - 1]  # a plain threshold rule loses the last fire
    res = cif(h, a, target_lengths=torch.tensor([U]), backend=backend)
    assert res.out_lengths.tolist() == [U]
    assert res.fire_frames[0, -1].item() == 36
    # the last output got (almost exactly) a full weight: compare with float64 arithmetic
    ref = cif(h.double(), a.double(), target_lengths=torch.tensor([U]), backend="reference")
    torch.testing.assert_close(res.out.double(), ref.out, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- gradients
def _grad_inputs(seed, B=2, T=7, C=3, amax=1.6):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    a = (torch.rand(B, T, generator=g, dtype=torch.float64) * amax + 0.05).requires_grad_()
    return h, a


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["inference", "tail", "training", "training_short"])
def test_gradcheck(backend, mode):
    h, a = _grad_inputs({"inference": 0, "tail": 1, "training": 2, "training_short": 3}[mode])
    lengths = torch.tensor([7, 5])
    kw = {}
    if mode == "tail":
        kw = dict(tail_threshold=0.0)
    elif mode == "training":
        kw = dict(target_lengths=torch.tensor([4, 9]))  # 9 targets in 5 frames: alpha > 1 after scaling
    elif mode == "training_short":
        kw = dict(target_lengths=torch.tensor([1, 3]))
    if mode == "tail":
        out = cif(h, a, lengths, backend=backend, **kw)
        no_tail = cif(h, a, lengths, backend=backend, tail_threshold=math.inf)
        assert out.out_lengths.tolist() != no_tail.out_lengths.tolist()
    assert torch.autograd.gradcheck(lambda x, y: cif(x, y, lengths, backend=backend, **kw).out, (h, a))


def test_gradcheck_threshold_and_ext_op_directly():
    h, a = _grad_inputs(5, B=3, T=6, amax=2.5)
    lengths = torch.tensor([6, 1, 4])

    def f(x, y):
        return cif(x, y, lengths, threshold=0.7, tail_threshold=0.2, backend="ext").out

    assert torch.autograd.gradcheck(f, (h, a))


def test_backward_backends_agree_on_larger_input():
    g = torch.Generator().manual_seed(11)
    B, T, C = 3, 60, 8
    h = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    a = torch.rand(B, T, generator=g, dtype=torch.float64) * 1.3
    lengths = torch.tensor([60, 41, 17])
    for target in (None, torch.tensor([20, 30, 5])):
        grads = {}
        for backend in ALL_BACKENDS:
            hh, aa = h.clone().requires_grad_(), a.clone().requires_grad_()
            res = cif(hh, aa, lengths, target_lengths=target, tail_threshold=0.3, backend=backend)
            w = torch.randn(res.out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            (res.out * w).sum().backward()
            grads[backend] = (hh.grad, aa.grad)
        for backend in FAST_BACKENDS:
            for x, y in zip(grads[backend], grads["reference"]):
                torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9)


def test_reference_backward_function_matches_op():
    h, a = _grad_inputs(7, B=2, T=9)
    lengths = torch.tensor([9, 6])
    out, _, _ = torch.ops.w2p.cif_forward(h.detach(), a.detach(), lengths, 1.0, None, 0.1)
    g = torch.randn_like(out)
    ref = cif_reference_backward(g, h.detach(), a.detach(), lengths, 1.0, None, 0.1, out=out)
    op = torch.ops.w2p.cif_backward(g, h.detach(), a.detach(), lengths, out, 1.0, None, 0.1)
    for x, y in zip(op, ref):
        torch.testing.assert_close(x, y)


def test_backward_of_a_row_without_outputs_is_zero():
    # target 0 gives a row no outputs (m = -1): nothing may be read from grad_out for it
    h, a = _grad_inputs(8, B=3, T=6)
    lengths, target = torch.tensor([6, 4, 5]), torch.tensor([2, 0, 3])
    out, out_lengths, _ = torch.ops.w2p.cif_forward(h.detach(), a.detach(), lengths, 1.0, target, 0.5)
    assert out_lengths.tolist() == [2, 0, 3]
    g = torch.randn_like(out)
    op = torch.ops.w2p.cif_backward(g, h.detach(), a.detach(), lengths, out, 1.0, target, 0.5)
    ref = cif_reference_backward(g, h.detach(), a.detach(), lengths, 1.0, target, 0.5, out=out)
    assert torch.count_nonzero(op[0][1]) == 0 and torch.count_nonzero(op[1][1]) == 0
    for x, y in zip(op, ref):
        torch.testing.assert_close(x, y)
    # a batch where no row has outputs
    none = torch.zeros(3, dtype=torch.long)
    out, _, _ = torch.ops.w2p.cif_forward(h.detach(), a.detach(), lengths, 1.0, none, 0.5)
    g = torch.zeros_like(out)
    op = torch.ops.w2p.cif_backward(g, h.detach(), a.detach(), lengths, out, 1.0, none, 0.5)
    ref = cif_reference_backward(g, h.detach(), a.detach(), lengths, 1.0, none, 0.5, out=out)
    for x, y in zip(op, ref):
        assert torch.count_nonzero(x) == 0 and torch.count_nonzero(y) == 0


def test_training_gradient_flows_through_the_scaling():
    h, a = _grad_inputs(9, B=1, T=10, amax=0.9)
    res = cif(h, a, target_lengths=torch.tensor([4]))
    res.out.sum().backward()
    # scaling to a fixed sum: the gradient has no component along the alphas themselves
    assert abs(float((a.grad * a.detach()).sum())) < 1e-9
    assert a.grad.abs().max() > 1e-3


# ---------------------------------------------------------------------------- CPU kernel layout
@HYP(30)
@given(cif_case(max_b=3, max_t=30), st.integers(1, 600).filter(lambda c: c % 8 != 0),
       st.sampled_from([torch.float64, torch.float32]), st.integers(0, 2**31 - 1))
def test_ext_matches_oracle_with_channels_not_a_multiple_of_the_vector_width(case, C, dtype, seed):
    # the C++ kernels process channels in vectors of 8 lanes plus a scalar remainder
    _, a, lengths, beta, target, tail = case
    B, T = a.shape
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g, dtype=torch.float64).to(dtype)
    a = a.to(dtype)
    kw = dict(threshold=beta, target_lengths=target, tail_threshold=tail)
    got, ref = {}, {}
    for backend, dst in (("ext", got), ("reference", ref)):
        hh, aa = h.clone().requires_grad_(), a.clone().requires_grad_()
        res = cif(hh, aa, lengths, backend=backend, **kw)
        w = torch.randn(res.out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        dst.update(res=res, grads=torch.autograd.grad((res.out * w.to(dtype)).sum(), (hh, aa), allow_unused=True))
    assert torch.equal(got["res"].out_lengths, ref["res"].out_lengths)
    assert torch.equal(got["res"].fire_frames, ref["res"].fire_frames)
    tol = dict(atol=1e-9, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["res"].out, ref["res"].out, **tol)
    for x, y in zip(got["grads"], ref["grads"]):
        x = torch.zeros_like(a if y is None or y.dim() == 2 else h) if x is None else x
        y = torch.zeros_like(x) if y is None else y
        scale = 1.0 if dtype == torch.float64 else max(1.0, float(y.abs().max()))  # fp32 dot products over C
        torch.testing.assert_close(x / scale, y / scale, **tol)


@pytest.mark.parametrize("B,T,C", [(1, 600, 203), (3, 257, 61)])
@pytest.mark.parametrize("training", [False, True])
def test_ext_results_do_not_depend_on_the_thread_count(B, T, C, training):
    # the kernels split rows into pieces of frames / outputs per thread; a piece boundary must not
    # change any sum (bit-identical outputs and gradients)
    g = torch.Generator().manual_seed(B * T + C)
    h = torch.randn(B, T, C, generator=g)
    a = torch.rand(B, T, generator=g) * 1.6
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    target = torch.randint(1, T // 2, (B,), generator=g) if training else None
    w = torch.randn(B, T, C, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            hh, aa = h.clone().requires_grad_(), a.clone().requires_grad_()
            res = cif(hh, aa, lengths, target_lengths=target, tail_threshold=0.2, backend="ext")
            grads = torch.autograd.grad((res.out * w[:, : res.out.shape[1]]).sum(), (hh, aa))
            results.append((res.out, res.fire_frames) + grads)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


# ---------------------------------------------------------------------------- torch-cif peer
torch_cif = pytest.importorskip("torch_cif")


def _tc(h, a, lengths, **kw):
    pm = torch.arange(a.shape[1])[None] >= lengths[:, None]
    return torch_cif.cif_function(h, a, padding_mask=pm, **kw)


def _boundary_safe(a, lengths, beta):
    """True when no running sum is within 1e-4 of a boundary (float32 vs float64 cumsum agree)."""
    am = a.double() * (torch.arange(a.shape[1])[None] < lengths[:, None])
    q = am.cumsum(1) / beta
    return bool(((q - q.round()).abs() > 1e-4).all())


@HYP(30)
@given(B=st.integers(1, 4), T=st.integers(1, 50), C=st.integers(1, 8), seed=st.integers(0, 10**6),
       beta=st.sampled_from([1.0, 0.8]), tail=st.sampled_from([0.5, 0.3, 0.9]), training=st.booleans())
def test_matches_torch_cif(B, T, C, seed, beta, tail, training):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g)
    a = torch.rand(B, T, generator=g) * 0.95 + 0.05  # torch-cif requires alpha <= 1
    lengths = torch.randint(1, T + 1, (B,), generator=g)  # torch-cif requires length >= 1
    lengths[0] = T
    target = torch.randint(1, 12, (B,), generator=g) if training else None
    if training:
        s = (a.double() * (torch.arange(T)[None] < lengths[:, None])).sum(1)
        assume(_boundary_safe(a * (beta * target / s).float()[:, None], lengths, beta))
        ref = _tc(h, a, lengths, beta=beta, target_lengths=target, eps=0.0)  # eps: see test below
    else:
        assume(_boundary_safe(a, lengths, beta))
        ref = _tc(h, a, lengths, beta=beta, tail_thres=tail)
    for backend in FAST_BACKENDS:
        res = cif(h, a, lengths, threshold=beta, target_lengths=target, tail_threshold=tail, backend=backend)
        assert torch.equal(res.out_lengths, ref["cif_lengths"][0])
        torch.testing.assert_close(res.out, ref["cif_out"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.alpha_sum, ref["alpha_sum"][0], atol=1e-5, rtol=1e-5)


def test_gradients_match_torch_cif_in_training():
    g = torch.Generator().manual_seed(4)
    B, T, C = 3, 30, 4
    h = torch.randn(B, T, C, generator=g)
    a = torch.rand(B, T, generator=g) * 0.9 + 0.05
    lengths, target = torch.tensor([30, 25, 12]), torch.tensor([10, 7, 4])
    w = torch.randn(B, 10, C, generator=g)
    hh, aa = h.clone().requires_grad_(), a.clone().requires_grad_()
    ref = torch.autograd.grad((_tc(hh, aa, lengths, target_lengths=target, eps=0.0)["cif_out"][0] * w).sum(), (hh, aa))
    for backend in FAST_BACKENDS:
        hh, aa = h.clone().requires_grad_(), a.clone().requires_grad_()
        res = cif(hh, aa, lengths, target_lengths=target, backend=backend)
        got = torch.autograd.grad((res.out * w).sum(), (hh, aa))
        for x, y in zip(got, ref):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_documented_differences_from_torch_cif():
    g = torch.Generator().manual_seed(5)
    B, T, C = 2, 20, 3
    h = torch.randn(B, T, C, generator=g)
    a = torch.rand(B, T, generator=g) * 0.9 + 0.05
    lengths, target = torch.tensor([20, 20]), torch.tensor([8, 5])
    ours = cif(h, a, lengths, target_lengths=target)
    ref = _tc(h, a, lengths, target_lengths=target)  # default eps = 1e-4
    # 1. torch-cif scales to U + eps: outputs differ by O(eps) instead of O(1e-7)
    diff = (ours.out[0] - ref["cif_out"][0][0]).abs().max()
    assert 1e-6 < diff < 1e-3
    # 2. torch-cif leaves the eps leftover of the shorter row in its first padded position; ours is 0
    assert ref["cif_out"][0][1, 5].abs().max() > 0
    assert torch.count_nonzero(ours.out[1, 5:]) == 0
    # 3a. a sum ending exactly on a boundary with tail_threshold 0: torch-cif divides by 0
    hq, aq = torch.ones(1, 4, 2), torch.full((1, 4), 0.5)
    assert torch.isnan(_tc(hq, aq, torch.tensor([4]), tail_thres=0.0)["cif_out"][0]).any()
    res = cif(hq, aq, tail_threshold=0.0)
    assert res.out_lengths.tolist() == [2] and torch.isfinite(res.out).all()
    # 3b. tail normaliser: torch-cif detaches beta / r, our alpha gradient includes it
    ht = torch.randn(1, 3, 2, generator=g)
    at = torch.tensor([[0.6, 0.7, 0.5]])
    grads = []
    for fn in (lambda x, y: cif(x, y).out, lambda x, y: _tc(x, y, torch.tensor([3]))["cif_out"][0]):
        aa = at.clone().requires_grad_()
        out = fn(ht, aa)
        assert out.shape[1] == 2  # one fire + a tail of 0.8
        grads.append(torch.autograd.grad(out.sum(), aa)[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-3
    # 5. alphas above 1 and zero-sum training rows
    assert cif(h, a * 3).out_lengths.sum() > 0
    assert torch.isfinite(cif(h, torch.zeros(B, T), target_lengths=target).out).all()


# ---------------------------------------------------------------------------- invalid input
def _args():
    return dict(hidden=torch.randn(2, 4, 3), alphas=torch.rand(2, 4), lengths=torch.tensor([4, 2]))


OP_ERRORS = [
    ("hidden_dim", lambda d: d.update(hidden=torch.randn(2, 4)), r"hidden must have shape \(B, T, C\)"),
    ("alphas_shape", lambda d: d.update(alphas=torch.rand(2, 5)), r"alphas must have shape \(B, T\)"),
    ("lengths_shape", lambda d: d.update(lengths=torch.tensor([4])), r"lengths must have shape \(B,\)"),
    ("lengths_dtype", lambda d: d.update(lengths=torch.tensor([4, 2], dtype=torch.int32)), "int64"),
    ("lengths_above_T", lambda d: d.update(lengths=torch.tensor([5, 2])), r"lengths\[0\] = 5 is outside \[0, T = 4\]"),
    ("lengths_negative", lambda d: d.update(lengths=torch.tensor([4, -1])), r"lengths\[1\] = -1 is outside"),
    ("alpha_negative", lambda d: d["alphas"].__setitem__((1, 0), -0.5), r"finite and >= 0.*alphas\[1, 0\]"),
    ("alpha_nan", lambda d: d["alphas"].__setitem__((0, 2), float("nan")), r"finite and >= 0.*alphas\[0, 2\]"),
    ("alpha_inf", lambda d: d["alphas"].__setitem__((0, 1), float("inf")), r"finite and >= 0.*alphas\[0, 1\]"),
    ("threshold_zero", lambda d: d.update(threshold=0.0), "threshold must be finite and > 0"),
    ("threshold_inf", lambda d: d.update(threshold=math.inf), "threshold must be finite and > 0"),
    ("tail_nan", lambda d: d.update(tail_threshold=math.nan), "tail_threshold must not be NaN"),
    ("target_negative", lambda d: d.update(target_lengths=torch.tensor([2, -3])),
     r"target_lengths\[1\] = -3 is negative"),
    ("target_shape", lambda d: d.update(target_lengths=torch.tensor([2, 3, 4])),
     r"target_lengths must have shape \(B,\)"),
    ("hidden_dtype", lambda d: d.update(hidden=torch.randn(2, 4, 3).half()), "float32 or float64"),
    ("alphas_dtype", lambda d: d.update(alphas=torch.rand(2, 4).double()), "alphas dtype"),
    ("hidden_noncontiguous", lambda d: d.update(hidden=torch.randn(2, 3, 4).transpose(1, 2)), "contiguous"),
    ("alphas_noncontiguous", lambda d: d.update(alphas=torch.rand(4, 2).t()), "contiguous"),
]


@pytest.mark.parametrize("name,mutate,msg", OP_ERRORS, ids=[e[0] for e in OP_ERRORS])
def test_op_rejects_invalid_input(name, mutate, msg):
    d = dict(_args(), threshold=1.0, target_lengths=None, tail_threshold=0.5)
    mutate(d)
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.w2p.cif_forward(d["hidden"], d["alphas"], d["lengths"], d["threshold"], d["target_lengths"],
                                  d["tail_threshold"])


CIF_ERRORS = [e for e in OP_ERRORS if e[0] not in ("lengths_dtype", "hidden_dtype", "alphas_dtype",
                                                   "hidden_noncontiguous", "alphas_noncontiguous")]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name,mutate,msg", CIF_ERRORS, ids=[e[0] for e in CIF_ERRORS])
def test_cif_rejects_invalid_input(backend, name, mutate, msg):
    d = dict(_args(), threshold=1.0, target_lengths=None, tail_threshold=0.5)
    mutate(d)
    with pytest.raises((ValueError, RuntimeError), match=msg):
        cif(d["hidden"], d["alphas"], d["lengths"], threshold=d["threshold"], target_lengths=d["target_lengths"],
            tail_threshold=d["tail_threshold"], backend=backend)


def test_cif_rejects_bad_backend_dtype_and_device():
    d = _args()
    with pytest.raises(ValueError, match="unknown backend"):
        cif(d["hidden"], d["alphas"], backend="cuda-magic")
    with pytest.raises(ValueError, match="no kernel for torch.float16"):
        cif(d["hidden"].half(), d["alphas"].half(), backend="ext")
    with pytest.raises(ValueError, match="one device"):
        cif(d["hidden"], d["alphas"].to("meta"))
    with pytest.raises(ValueError, match="lengths must be integers"):
        cif(d["hidden"], d["alphas"], torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match="negative alphas|finite and >= 0"):  # checked before the scaling
        cif(d["hidden"], -d["alphas"], target_lengths=torch.tensor([1, 1]), backend="ext")


def test_backward_op_rejects_mismatched_grad():
    d = _args()
    out, _, _ = torch.ops.w2p.cif_forward(d["hidden"], d["alphas"], d["lengths"], 1.0, None, 0.5)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(B, U, C\)"):
        torch.ops.w2p.cif_backward(torch.zeros(2, out.shape[1], 5), d["hidden"], d["alphas"], d["lengths"], out, 1.0,
                                   None, 0.5)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.w2p.cif_backward(torch.zeros(2, out.shape[1] + 1, 3), d["hidden"], d["alphas"], d["lengths"], out,
                                   1.0, None, 0.5)


# ---------------------------------------------------------------------------- predictor
def test_weight_predictor_range_and_padding():
    torch.manual_seed(0)
    pred = CifWeightPredictor(8, conv_kernel=3, dropout=0.1).eval()
    h = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    alphas = pred(h, mask)
    assert alphas.shape == (2, 6)
    assert ((alphas[mask] > 0.05) & (alphas[mask] < 1.0)).all()
    assert (alphas[~mask] == 0).all()
    h2 = h.clone()
    h2[1, 4:] = 100.0  # padding content must not leak into valid frames through the conv
    torch.testing.assert_close(pred(h2, mask.unsqueeze(1)), alphas)
    with pytest.raises(ValueError, match="odd"):
        CifWeightPredictor(8, conv_kernel=4)
    alphas.sum().backward()
    assert pred.proj.weight.grad.abs().sum() > 0


def test_auto_backend_uses_extension_on_cpu(monkeypatch):
    calls = []
    real = torch.ops.w2p.cif_forward

    import w2p.cif as mod

    class Spy:
        @staticmethod
        def apply(*args):
            calls.append(1)
            return real(*args)

    monkeypatch.setattr(mod, "_CifExtFn", Spy)
    d = _args()
    cif(d["hidden"], d["alphas"], d["lengths"])
    assert calls == [1]
    cif_torch(d["hidden"], d["alphas"], d["lengths"])  # direct use works without the dispatcher
    assert np.isfinite(cif(d["hidden"].half(), d["alphas"].half()).out.float().numpy()).all()  # auto -> torch
