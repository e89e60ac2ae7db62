"""Continuous integrate-and-fire (CIF, Dong & Xu 2020): oracle, vectorised PyTorch, C++/CUDA op.

Semantics (shared bit-for-bit in the firing decisions by every backend)
------------------------------------------------------------------------
Row ``b`` has ``L = lengths[b]`` valid frames; frames ``t >= L`` are padding (their alphas and
hidden vectors are ignored).  Alphas must be finite and ``>= 0``; values above the threshold
are allowed.  Let ``S_t = alpha_0 + ... + alpha_t`` be the running sum, accumulated sequentially
in **float64** (so ``T = 5000`` frames do not drift), ``S_{-1} = 0`` and ``total = S_{L-1}``.
Frame ``t`` owns the weight interval ``(S_{t-1}, S_t]``.  The threshold boundaries are the
float64 products ``k * beta`` (``k >= 1``).

* **Fire.** Output ``i`` integrates the interval ``[i*beta, (i+1)*beta]``:
  ``out_i = sum_t w_{i,t} h_t`` with ``w_{i,t} = |(S_{t-1}, S_t] ∩ [i*beta, (i+1)*beta]|``.
  It fires at the first frame with ``S_t >= (i+1)*beta`` (an exact hit fires).  A frame whose
  interval crosses one or several boundaries splits its weight between the adjacent outputs, so
  ``alpha > beta`` fires several times in one frame (the middle outputs get ``beta * h_t``).
  Outputs are *not* normalised: a regular output's weights sum to ``beta``.
* **Inference** (``target_lengths is None``): ``n = #{k >= 1 : k*beta <= total}`` regular fires.
  The leftover ``r = total - n*beta`` fires one more (tail) output when ``r > 0`` and
  ``r >= tail_threshold``; it integrates ``[n*beta, total]`` and is *normalised*: multiplied by
  ``beta / r`` so its weights sum to ``beta`` like a full fire.  ``tail_threshold = inf``
  disables the tail.
* **Training** (``target_lengths`` given, ``U = target_lengths[b]``): ``cif()`` first scales the
  row's (masked) alphas by ``beta * U / sum(alphas)`` so they sum to ``beta * U`` (``= U`` for
  the default ``beta = 1``).  The op then fires **exactly** ``U`` times whatever the rounding:
  outputs ``0 .. U-2`` fire regularly and output ``U-1`` integrates everything from
  ``(U-1)*beta`` to ``total``, so a last fire lost to fp rounding (``total = U - 1e-7``) is not
  lost, and a rounding surplus is not dropped.  No tail is added.  A row whose alphas sum to 0
  gives ``U`` zero vectors.
* ``fire_frames[b, i]`` is the frame where output ``i``'s integration ends: the firing frame for a
  regular fire, and for the tail / the last training output the last frame that carries weight
  (first ``t`` with ``S_t >= total``; 0 when the row carries no weight).  ``-1`` pads.
* ``alpha_sum`` is the sum of the masked alphas **before** scaling (for the quantity loss).

Gradients (analytic; no autograd through a loop).  ``out`` is piecewise linear in ``S``: with
``k(t)`` the output open at ``S_t`` (the one a small increase of ``S_t`` feeds),
``dL/dh_t = sum_i scale_i w_{i,t} g_i`` and
``dL/dS_t = scale_k (<g_k, h_t> - <g_k, h_{t+1}>)`` (``S_t`` ends frame ``t`` and starts frame
``t+1``), plus ``-<g_tail, out_tail> / r`` at the last frame for the tail normaliser ``beta / r``;
``dL/dalpha_s = sum_{t >= s} dL/dS_t``.  Fire counts and boundaries are piecewise constant
(zero gradient).  The training scaling ``alphas * beta U / sum`` is plain autograd in ``cif()``,
so the gradient w.r.t. the *unscaled* alphas is the total derivative through the scaling (its
component along the row's alphas is removed, since the scaled sum is constant).

Deliberate differences from ``torch-cif`` 0.2.0 (``torch_cif.cif_function``), which otherwise
gives the same outputs (tested):

1. Training scaling: torch-cif scales to ``beta*U + eps`` (``eps = 1e-4``) so its fp32 cumsum does
   not lose the last fire; we scale to exactly ``beta*U`` and force ``U`` fires instead.  With
   ``eps=0`` torch-cif matches us to 1e-5.
2. Positions ``>= out_lengths`` are exactly zero; torch-cif (training) leaves the eps leftover of
   shorter rows in their first padded position.
3. Tail: torch-cif detaches the ``beta / r`` normaliser; our gradient includes it.  With
   ``r == 0`` and ``tail_threshold <= 0`` torch-cif produces NaN (``beta / 0``); we fire no tail.
4. Running sum kept in fp64; torch-cif stores its cumsum in float32 (~3e-5 resolution at a sum of
   500), so a running sum that ends within that distance of a boundary may fire one frame apart.
5. Alphas above 1 are accepted (torch-cif asserts ``alpha <= 1`` unless ``unbound_alpha``); a
   training row whose alphas sum to 0 gives zeros (torch-cif: NaN); lengths may be 0.
6. ``fire_frames`` (frame index of each fire) instead of torch-cif's ``delays``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = [
    "CifOutput",
    "cif",
    "cif_reference",
    "cif_reference_backward",
    "cif_torch",
    "CifWeightPredictor",
    "BACKENDS",
]

BACKENDS = ("auto", "ext", "torch", "reference")


@dataclass
class CifOutput:
    out: Tensor  # (B, U_max, C), zero beyond out_lengths
    out_lengths: Tensor  # (B,) long
    alpha_sum: Tensor  # (B,) sum of the masked, unscaled alphas
    fire_frames: Tensor  # (B, U_max) long, -1 padded


# ----------------------------------------------------------------------------------------------
# shared helpers (mirror csrc/cif/cif_common.h exactly)
# ----------------------------------------------------------------------------------------------
def _count_fires(s: float, beta: float) -> int:
    """#{k >= 1 : k*beta <= s} with the float64 boundaries k*beta."""
    if not s >= beta:
        return 0
    n = int(math.floor(s / beta))
    while float(n + 1) * beta <= s:
        n += 1
    while n > 0 and float(n) * beta > s:
        n -= 1
    return n


def _count_fires_t(s: Tensor, beta: float) -> Tensor:
    """Vectorised _count_fires on a float64 tensor."""
    n = torch.floor(s / beta).clamp_min(0)
    n = torch.where((n + 1) * beta <= s, n + 1, n)
    n = torch.where((n > 0) & (n * beta > s), n - 1, n)
    return n.long()


def _lengths_tensor(lengths, B: int, T: int, device) -> Tensor:
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.is_floating_point():
        raise ValueError(f"cif: lengths must be integers (frame counts), got dtype {lengths.dtype}")
    return lengths.long()


def _validate_shapes(hidden: Tensor, alphas: Tensor, lengths: Tensor, threshold, target_lengths, tail_threshold):
    if hidden.dim() != 3:
        raise ValueError(f"cif: hidden must have shape (B, T, C), got {tuple(hidden.shape)}")
    B, T, _ = hidden.shape
    if alphas.dim() != 2 or tuple(alphas.shape) != (B, T):
        raise ValueError(f"cif: alphas must have shape (B, T) = ({B}, {T}) to match hidden, got {tuple(alphas.shape)}")
    if not hidden.is_floating_point() or not alphas.is_floating_point():
        raise ValueError(f"cif: hidden and alphas must be floating point, got {hidden.dtype} and {alphas.dtype}")
    if alphas.device != hidden.device:
        raise ValueError(f"cif: all inputs must be on one device: hidden on {hidden.device}, alphas on {alphas.device}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"cif: lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    if target_lengths is not None and (target_lengths.dim() != 1 or target_lengths.shape[0] != B):
        raise ValueError(f"cif: target_lengths must have shape (B,) = ({B},), got {tuple(target_lengths.shape)}")
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"cif: threshold must be finite and > 0, got {threshold}")
    if math.isnan(tail_threshold):
        raise ValueError("cif: tail_threshold must not be NaN")


def _validate_values(alphas: Tensor, lengths: Tensor, target_lengths: Optional[Tensor]):
    T = alphas.shape[1]
    bad = (lengths < 0) | (lengths > T)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"cif: lengths[{b}] = {int(lengths[b])} is outside [0, T = {T}]; "
                         "lengths must count the valid frames of each row")
    if target_lengths is not None and (target_lengths < 0).any():
        b = int((target_lengths < 0).nonzero()[0, 0])
        raise ValueError(f"cif: target_lengths[{b}] = {int(target_lengths[b])} is negative")
    valid = torch.arange(T, device=alphas.device)[None, :] < lengths[:, None]
    a = alphas.detach()
    bad = valid & ~(torch.isfinite(a) & (a >= 0))
    if bad.any():
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"cif: alphas must be finite and >= 0, got alphas[{b}, {t}] = {float(a[b, t])}")


def _row_plan(total: float, beta: float, target: Optional[int], tail_threshold: float):
    """(m, n_out, end_scale, tail_r): see RowPlan in csrc/cif/cif_common.h."""
    n = _count_fires(total, beta)
    if target is not None:
        return min(n, target - 1), target, 1.0, 0.0
    r = total - float(n) * beta
    tail = r > 0.0 and r >= tail_threshold
    return n, n + int(tail), (beta / r if tail else 1.0), (r if tail else 0.0)


def _interval(i: int, m: int, total: float, end_scale: float, beta: float):
    """[lo, hi] and scale of output i, or None when it carries no weight."""
    if i < m:
        return float(i) * beta, float(i + 1) * beta, 1.0
    if i == m:
        return float(i) * beta, total, end_scale
    return None


# ----------------------------------------------------------------------------------------------
# oracle: a readable loop over time, straight from the definition
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def cif_reference(hidden: Tensor, alphas: Tensor, lengths: Optional[Tensor] = None, threshold: float = 1.0,
                  target_lengths: Optional[Tensor] = None, tail_threshold: float = 0.5):
    """Oracle CIF (float64 loop over time).  ``alphas`` are used as given (already scaled in
    training).  Returns ``(out, out_lengths, fire_frames)``; ``out`` has hidden's dtype."""
    B, T, C = hidden.shape
    lengths = _lengths_tensor(lengths, B, T, hidden.device)
    beta = float(threshold)
    rows, row_frames = [], []
    for b in range(B):
        L = int(lengths[b])
        a = alphas[b, :L].double().tolist()
        h = hidden[b].double()
        U = None if target_lengths is None else int(target_lengths[b])
        vecs, frames = [], []
        acc = torch.zeros(C, dtype=torch.float64, device=hidden.device)
        S, k, sums = 0.0, 0, []
        for t in range(L):
            S_prev, S = S, S + a[t]
            lo = S_prev  # start of the part of frame t not yet integrated
            # fire every boundary (k+1)*beta this frame reaches; in training only U-1 regular fires
            while (U is None or k < U - 1) and float(k + 1) * beta <= S:
                acc = acc + (float(k + 1) * beta - lo) * h[t]
                vecs.append(acc)
                frames.append(t)
                acc = torch.zeros_like(acc)
                k += 1
                lo = float(k) * beta
            if S - lo > 0:
                acc = acc + (S - lo) * h[t]
            sums.append(S)
        total = S
        t_end = next((t for t, s in enumerate(sums) if s >= total), 0)  # last frame carrying weight
        if U is not None:
            if U > 0:  # the last output absorbs the remainder; any missing ones are zeros
                vecs.append(acc)
                vecs.extend(torch.zeros_like(acc) for _ in range(U - 1 - k))
                frames.extend([t_end] * (U - k))
        else:
            r = total - float(k) * beta
            if r > 0.0 and r >= tail_threshold:
                vecs.append(acc * (beta / r))
                frames.append(t_end)
        rows.append(vecs)
        row_frames.append(frames)
    U_max = max((len(v) for v in rows), default=0)
    out = torch.zeros(B, U_max, C, dtype=torch.float64, device=hidden.device)
    fire = torch.full((B, U_max), -1, dtype=torch.long, device=hidden.device)
    for b in range(B):
        for i, v in enumerate(rows[b]):
            out[b, i] = v
            fire[b, i] = row_frames[b][i]
    out_lengths = torch.tensor([len(v) for v in rows], dtype=torch.long, device=hidden.device)
    return out.to(hidden.dtype), out_lengths, fire


@torch.no_grad()
def cif_reference_backward(grad_out: Tensor, hidden: Tensor, alphas: Tensor, lengths: Optional[Tensor] = None,
                           threshold: float = 1.0, target_lengths: Optional[Tensor] = None,
                           tail_threshold: float = 0.5, out: Optional[Tensor] = None):
    """Analytic backward of the oracle, as a readable loop (see the module docstring)."""
    B, T, C = hidden.shape
    lengths = _lengths_tensor(lengths, B, T, hidden.device)
    beta = float(threshold)
    g = grad_out.double()
    h = hidden.double()
    grad_h = torch.zeros(B, T, C, dtype=torch.float64, device=hidden.device)
    grad_a = torch.zeros(B, T, dtype=torch.float64, device=hidden.device)
    for b in range(B):
        L = int(lengths[b])
        sums, S = [], 0.0
        for v in alphas[b, :L].double().tolist():
            S += v
            sums.append(S)
        U = None if target_lengths is None else int(target_lengths[b])
        m, n_out, end_scale, tail_r = _row_plan(S, beta, U, tail_threshold)
        n_out = min(n_out, grad_out.shape[1])
        if n_out <= 0:  # no outputs (target 0): no gradient; m = -1 would index output -1
            continue

        def open_index(s):
            return min(_count_fires(s, beta), m)

        dS = [0.0] * L
        for t in range(L):
            s0, s1 = (sums[t - 1] if t > 0 else 0.0), sums[t]
            for i in range(open_index(s0), min(open_index(s1), n_out - 1) + 1):
                iv = _interval(i, m, S, end_scale, beta)
                if iv is None:
                    continue
                w = max(min(s1, iv[1]) - max(s0, iv[0]), 0.0)
                grad_h[b, t] += (w * iv[2]) * g[b, i]
            k = open_index(s1)
            if k < n_out:
                d = float(g[b, k] @ h[b, t]) - (float(g[b, k] @ h[b, t + 1]) if t + 1 < L else 0.0)
                dS[t] = (1.0 if k < m else end_scale) * d
            if t == L - 1 and tail_r > 0 and m < n_out:
                dS[t] -= float(g[b, m] @ out[b, m].double()) / tail_r
        run = 0.0
        for t in range(L - 1, -1, -1):
            run += dS[t]
            grad_a[b, t] = run
    return grad_h.to(hidden.dtype), grad_a.to(alphas.dtype)


class _CifFunction(torch.autograd.Function):
    """Shared autograd plumbing of the reference and ext backends: subclasses give the kernel pair
    ``_fwd(hidden, alphas, lengths, threshold, target_lengths, tail_threshold) -> (out, out_lengths, fire)`` and
    ``_bwd(grad_out, hidden, alphas, lengths, out, threshold, target_lengths, tail_threshold) -> (gh, ga)``."""

    @classmethod
    def forward(cls, ctx, hidden, alphas, lengths, threshold, target_lengths, tail_threshold):
        out, out_lengths, fire = cls._fwd(hidden, alphas, lengths, threshold, target_lengths, tail_threshold)
        ctx.save_for_backward(hidden, alphas, lengths, out, target_lengths)
        ctx.args = (threshold, tail_threshold)
        ctx.mark_non_differentiable(out_lengths, fire)
        return out, out_lengths, fire

    @classmethod
    @torch.autograd.function.once_differentiable
    def backward(cls, ctx, grad_out, _gl, _gf):
        hidden, alphas, lengths, out, target_lengths = ctx.saved_tensors
        threshold, tail_threshold = ctx.args
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        gh, ga = cls._bwd(grad_out, hidden, alphas, lengths, out, threshold, target_lengths, tail_threshold)
        return gh, ga, None, None, None, None


class _CifReferenceFn(_CifFunction):
    @staticmethod
    def _fwd(hidden, alphas, lengths, threshold, target_lengths, tail_threshold):
        return cif_reference(hidden, alphas, lengths, threshold, target_lengths, tail_threshold)

    @staticmethod
    def _bwd(grad_out, hidden, alphas, lengths, out, threshold, target_lengths, tail_threshold):
        return cif_reference_backward(grad_out, hidden, alphas, lengths, threshold, target_lengths,
                                      tail_threshold, out=out)


# ----------------------------------------------------------------------------------------------
# vectorised PyTorch: prefix sums of alpha*h in float64, each output = difference of two
# interpolated prefix values (no (B, U, T) matrix, no loop over time); autograd gives the
# same piecewise-linear derivative as the analytic backward.
# ----------------------------------------------------------------------------------------------
def cif_torch(hidden: Tensor, alphas: Tensor, lengths: Optional[Tensor] = None, threshold: float = 1.0,
              target_lengths: Optional[Tensor] = None, tail_threshold: float = 0.5):
    """Vectorised CIF, differentiable by autograd. Returns ``(out, out_lengths, fire_frames)``.
    Memory: three (B, T, C) float64 temporaries at peak."""
    B, T, C = hidden.shape
    dev = hidden.device
    lengths = _lengths_tensor(lengths, B, T, dev)
    beta = float(threshold)
    valid_t = torch.arange(T, device=dev)[None, :] < lengths[:, None]
    a = torch.where(valid_t, alphas.double(), torch.zeros((), dtype=torch.float64, device=dev))
    S = a.cumsum(1)  # sequential fp64 running sum on CPU, like the kernels
    total = S[:, -1] if T > 0 else torch.zeros(B, dtype=torch.float64, device=dev)
    n = _count_fires_t(total.detach(), beta)
    if target_lengths is not None:
        tl = target_lengths.to(dev).long()
        m, n_out = torch.minimum(n, tl - 1), tl
        end_scale = torch.ones_like(total)
    else:
        m = n
        r = total - m.double() * beta
        tail = (r.detach() > 0) & (r.detach() >= tail_threshold)
        n_out = m + tail.long()
        end_scale = torch.where(tail, beta / torch.where(tail, r, torch.ones_like(r)), torch.ones_like(r))
    U = int(n_out.max()) if B > 0 else 0
    i = torch.arange(U, device=dev)[None, :]
    valid = i < n_out[:, None]
    natural = i < m[:, None]
    is_end = (i == m[:, None]) & valid
    tot = total[:, None].expand(B, U)
    ib = i.double() * beta
    lo = torch.where(natural | is_end, ib.expand(B, U), tot)
    hi = torch.where(natural, (i + 1).double().expand(B, U) * beta, tot)
    scale = torch.where(is_end, end_scale[:, None].expand(B, U), torch.ones_like(tot))
    if T == 0:
        out = hidden.new_zeros(B, U, C)
        fire = torch.where(valid, 0, -1).long()
        return out, n_out, fire
    Sd = S.detach().contiguous()
    P = torch.cat([hidden.new_zeros(B, 1, C, dtype=torch.float64), (a[..., None] * hidden.double()).cumsum(1)], 1)
    Sz = torch.cat([S.new_zeros(B, 1), S], 1)

    def H(x):  # integral of the piecewise-constant h over [0, x]: P_{j-1} + (x - S_{j-1}) h_j
        j = torch.searchsorted(Sd, x.detach().contiguous(), side="left").clamp_max(T - 1)
        jc = j[..., None].expand(B, U, C)
        return (P.gather(1, jc) + (x - Sz.gather(1, j))[..., None] * hidden.gather(1, jc).double())

    out = scale[..., None] * (H(hi) - H(lo))
    out = torch.where(valid[..., None], out, torch.zeros((), dtype=out.dtype, device=dev)).to(hidden.dtype)
    end_pt = torch.where(natural, hi, tot).detach().contiguous()
    fire = torch.searchsorted(Sd, end_pt, side="left")
    fire = torch.minimum(fire, (lengths[:, None] - 1).clamp_min(0))
    fire = torch.where(valid, fire, torch.full_like(fire, -1))
    return out, n_out.clone(), fire


# ----------------------------------------------------------------------------------------------
# the extension op (C++ CPU / CUDA) with its analytic backward
# ----------------------------------------------------------------------------------------------
class _CifExtFn(_CifFunction):
    @staticmethod
    def _fwd(hidden, alphas, lengths, threshold, target_lengths, tail_threshold):
        return torch.ops.w2p.cif_forward(hidden, alphas, lengths, threshold, target_lengths, tail_threshold)

    @staticmethod
    def _bwd(grad_out, hidden, alphas, lengths, out, threshold, target_lengths, tail_threshold):
        return torch.ops.w2p.cif_backward(grad_out.contiguous(), hidden, alphas, lengths, out, threshold,
                                          target_lengths, tail_threshold)


def _ext_supports(hidden: Tensor) -> bool:
    from w2p import _ext

    if not _ext.available():
        return False
    if hidden.device.type == "cpu":
        return hidden.dtype in (torch.float32, torch.float64)
    if hidden.device.type == "cuda":
        return _ext.cuda_built() and hidden.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return False


def cif(hidden: Tensor, alphas: Tensor, lengths: Optional[Tensor] = None, *, threshold: float = 1.0,
        target_lengths: Optional[Tensor] = None, tail_threshold: float = 0.5, backend: str = "auto") -> CifOutput:
    """Continuous integrate-and-fire (semantics in the module docstring).

    hidden (B, T, C); alphas (B, T) >= 0; lengths (B,) valid frames (None: all T);
    target_lengths (B,) (training: scale alphas to ``threshold * U`` and fire exactly U times);
    backend: "auto" (the C++/CUDA op where it has a kernel, else "torch"), "ext", "torch",
    "reference" (the float64 loop oracle, with a loop backward; slow).
    Differentiable w.r.t. hidden and alphas.
    """
    if backend not in BACKENDS:
        raise ValueError(f"cif: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if hidden.dim() != 3:
        raise ValueError(f"cif: hidden must have shape (B, T, C), got {tuple(hidden.shape)}")
    B, T, _ = hidden.shape
    lengths = _lengths_tensor(lengths, B, T, hidden.device)
    if target_lengths is not None:
        target_lengths = torch.as_tensor(target_lengths, device=hidden.device)
        if target_lengths.is_floating_point():
            raise ValueError(f"cif: target_lengths must be integers, got dtype {target_lengths.dtype}")
        target_lengths = target_lengths.long()
    threshold, tail_threshold = float(threshold), float(tail_threshold)
    _validate_shapes(hidden, alphas, lengths, threshold, target_lengths, tail_threshold)
    if backend == "auto":
        backend = "ext" if _ext_supports(hidden) else "torch"
    if backend == "ext":
        if not _ext_supports(hidden):
            raise ValueError(f"cif: backend='ext' has no kernel for {hidden.dtype} on {hidden.device} "
                             "(CPU: float32/float64; CUDA only when w2p._C was built with CUDA); use backend='torch'")
        from w2p import _ext

        _ext.load()
    if backend != "ext" or target_lengths is not None:
        # the op validates values itself; scaling could hide negative alphas, so check first
        _validate_values(alphas, lengths, target_lengths)

    valid = torch.arange(T, device=hidden.device)[None, :] < lengths[:, None]
    a = torch.where(valid, alphas, torch.zeros((), dtype=alphas.dtype, device=alphas.device))
    alpha_sum = a.sum(1)
    if target_lengths is not None:
        # scale each row to sum to threshold * U; rows summing to 0 stay 0 (no NaN in the graph)
        s64 = a.double().sum(1)
        pos = s64 > 0
        factor = torch.where(pos, threshold * target_lengths.double() / torch.where(pos, s64, torch.ones_like(s64)),
                             torch.zeros_like(s64))
        a = a * factor.to(a.dtype)[:, None]

    if backend == "ext":
        if hidden.device.type == "cpu" or hidden.dtype in (torch.float32, torch.float64):
            a = a.to(hidden.dtype)
        elif a.dtype != hidden.dtype:
            a = a.float()
        out, out_lengths, fire = _CifExtFn.apply(hidden.contiguous(), a.contiguous(), lengths.contiguous(),
                                                 threshold, target_lengths, tail_threshold)
    elif backend == "torch":
        out, out_lengths, fire = cif_torch(hidden, a, lengths, threshold, target_lengths, tail_threshold)
    else:
        out, out_lengths, fire = _CifReferenceFn.apply(hidden, a, lengths, threshold, target_lengths, tail_threshold)
    return CifOutput(out=out, out_lengths=out_lengths, alpha_sum=alpha_sum, fire_frames=fire)


# ----------------------------------------------------------------------------------------------
# weight predictor
# ----------------------------------------------------------------------------------------------
class CifWeightPredictor(nn.Module):
    """Frame weights from encoder states: Conv1d(k) + ReLU + dropout + Linear(idim, 1), then
    ``alpha = 0.95 * sigmoid(logit) + 0.05`` (the author's style, alpha in (0.05, 1)); zero at padding."""

    def __init__(self, idim: int, conv_kernel: int = 3, dropout: float = 0.1):
        super().__init__()
        if conv_kernel < 1 or conv_kernel % 2 == 0:
            raise ValueError(f"CifWeightPredictor: conv_kernel must be odd and >= 1 (keeps T), got {conv_kernel}")
        self.conv = nn.Conv1d(idim, idim, conv_kernel, padding=conv_kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(idim, 1)

    def forward(self, h: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """h (B, T, D); mask (B, T) or (B, 1, T), True on valid frames (None: all valid) -> alphas (B, T)."""
        B, T, _ = h.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=h.device)
        mask = mask.reshape(B, T).bool()
        x = h.masked_fill(~mask[..., None], 0.0)  # padding must not leak into valid frames via the conv
        x = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        logit = self.proj(self.dropout(x)).squeeze(-1)
        alphas = 0.95 * torch.sigmoid(logit) + 0.05
        return alphas.masked_fill(~mask, 0.0)
