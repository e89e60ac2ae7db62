"""The CUDA CIF kernels on a GPU (run by tools/gpu_check.sh on a CUDA machine; skipped on CPU-only machines).

Oracles: the reference backend (``cif_reference``, the loop) on the CPU, on the same input values. Tolerances:
  * float32 / float64: 1e-5 / 1e-10 (the kernels accumulate in float32 / float64; fire decisions use a float64
    running sum in every backend, so fire frames and lengths must be equal);
  * bfloat16: 2e-2 absolute and relative (a few bf16 ulps: outputs accumulate in float32 and are rounded once to
    bf16, whose relative spacing is 2^-8 = 3.9e-3), float16: 4e-3 (spacing 2^-11 = 4.9e-4), both against the
    float32 oracle run on the bf16/fp16 input values (upcast), so only the kernel's rounding differs.
"""
import pytest
import torch

from w2p import _ext
from w2p.cif import cif

CUDA = torch.cuda.is_available() and _ext.available() and _ext.cuda_built()
pytestmark = pytest.mark.skipif(
    not CUDA, reason="no CUDA device or w2p._C built without CUDA: these run on a GPU machine via tools/gpu_check.sh")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _case(B, T, C, *, seed=0, alpha_scale=1.0, lengths=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g).to(dtype)
    a = (torch.rand(B, T, generator=g) * 0.9 * alpha_scale + 0.05).to(dtype)
    if lengths is None:
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
        lengths[0] = T
    return h, a, torch.as_tensor(lengths)


def _grads(res, h, a, w):
    return torch.autograd.grad((res.out * w[:, : res.out.shape[1]].to(res.out.dtype)).sum(), (h, a))


def _compare(h, a, lengths, dtype, *, target=None, threshold=1.0):
    """CUDA ext in ``dtype`` against the CPU oracle on the same values in float64 (float32 oracle for the
    half types), forward and backward."""
    # training: the scaling alphas * U / sum is plain autograd in the input dtype, so the float32 oracle scales the
    # same float32 values; inference: float64 (float32 for the half types, the "fp32 oracle")
    odt = torch.float64 if dtype == torch.float64 or (dtype == torch.float32 and target is None) else torch.float32
    w = torch.randn(h.shape[0], 4 * h.shape[1] + 8, h.shape[2], generator=torch.Generator().manual_seed(9))
    hc, ac = h.to("cuda", dtype).requires_grad_(), a.to("cuda", dtype).requires_grad_()
    tgt = None if target is None else target.cuda()
    res = cif(hc, ac, lengths.cuda(), target_lengths=tgt, threshold=threshold, backend="ext")
    ho, ao = hc.detach().cpu().to(odt).requires_grad_(), ac.detach().cpu().to(odt).requires_grad_()
    ref = cif(ho, ao, lengths, target_lengths=target, threshold=threshold, backend="reference")
    assert torch.equal(res.out_lengths.cpu(), ref.out_lengths)
    assert torch.equal(res.fire_frames.cpu(), ref.fire_frames)
    tol = TOL[dtype]
    torch.testing.assert_close(res.out.float().cpu(), ref.out.float(), atol=tol, rtol=tol)
    for got, want in zip(_grads(res, hc, ac, w.cuda()), _grads(ref, ho, ao, w)):
        torch.testing.assert_close(got.float().cpu(), want.float(), atol=tol * 4, rtol=tol * 4)


@pytest.mark.parametrize("dtype, training", [(torch.float32, False), (torch.float32, True), (torch.float64, False),
                                             (torch.float64, True), (torch.bfloat16, False), (torch.float16, False)])
def test_cuda_matches_the_oracle(dtype, training):
    """(The half types in inference only: training scales the alphas in the input dtype, and a bf16 scaling moves
    running sums across fire boundaries; Wav2Prompt always calls CIF in float32, autocast or not.)"""
    h, a, lengths = _case(4, 300, 67, seed=1)
    target = torch.tensor([40, 71, 3, 120]) if training else None
    _compare(h, a, lengths, dtype, target=target)


def test_cuda_alpha_above_threshold_long_input_and_empty_rows():
    # alpha > beta: several fires in one frame
    h, a, lengths = _case(3, 200, 16, seed=2, alpha_scale=3.0)
    _compare(h, a, lengths, torch.float32, threshold=0.8)
    # T = 5000 (a long running sum; fp64 in every backend, so no drift)
    h, a, lengths = _case(2, 5000, 32, seed=3, lengths=[5000, 4321])
    _compare(h, a, lengths, torch.float32)
    # empty rows: length 0, and all-zero alphas
    h, a, lengths = _case(3, 50, 8, seed=4, lengths=[50, 0, 50])
    a[2] = 0
    _compare(h, a, lengths, torch.float32)
    res = cif(h.cuda(), a.cuda(), lengths.cuda(), backend="ext")
    assert res.out_lengths.tolist()[1:] == [0, 0] and torch.count_nonzero(res.out[1:]) == 0


def test_cuda_gradcheck_float64():
    h, a, lengths = _case(2, 12, 3, seed=5, dtype=torch.float64)
    h, a, lengths = h.cuda().requires_grad_(), a.cuda().requires_grad_(), lengths.cuda()
    for kw in ({}, {"target_lengths": torch.tensor([4, 3], device="cuda")}):
        assert torch.autograd.gradcheck(lambda x, y: cif(x, y, lengths, backend="ext", **kw).out, (h, a))


def test_cuda_matches_torch_cif_on_the_gpu():
    torch_cif = pytest.importorskip("torch_cif")
    h, a, lengths = _case(4, 400, 64, seed=6)
    hc, ac, lc = h.cuda(), a.cuda(), lengths.cuda()
    pad = torch.arange(400, device="cuda")[None] >= lc[:, None]
    target = torch.tensor([50, 90, 120, 33], device="cuda")
    ours = cif(hc, ac, lc, target_lengths=target, backend="ext")
    ref = torch_cif.cif_function(hc, ac, padding_mask=pad, target_lengths=target, eps=0.0)
    assert torch.equal(ours.out_lengths, ref["cif_lengths"][0])
    torch.testing.assert_close(ours.out, ref["cif_out"][0], atol=1e-4, rtol=1e-4)
    ours = cif(hc, ac, lc, backend="ext")
    ref = torch_cif.cif_function(hc, ac, padding_mask=pad)
    assert torch.equal(ours.out_lengths, ref["cif_lengths"][0])
    torch.testing.assert_close(ours.out, ref["cif_out"][0], atol=1e-4, rtol=1e-4)
