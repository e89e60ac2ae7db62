"""Python steps of tools/gpu_check.sh (run there by the CUDA machine's python3).

    python3 tools/gpu_check_steps.py sanitize        the CUDA CIF kernels' forward and backward, for compute-sanitizer
    python3 tools/gpu_check_steps.py smoke EXP_DIR   loss trend and throughput of the training smoke (exit 1 if the
                                                     validation loss did not fall or fewer than 200 steps ran)
"""
from __future__ import annotations

import datetime
import json
import re
import sys


def sanitize() -> int:
    """The training call (forced lengths) and the inference call, forward + backward, fp32 and bf16, with a length-1
    and an empty row: every CUDA kernel of the op runs on small inputs (sanitizers are slow)."""
    import torch

    from w2p import _ext
    from w2p.cif import cif

    if not _ext.cuda_built():
        raise SystemExit("w2p._C has no CUDA kernels")
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.bfloat16):
        h = torch.randn(4, 300, 64, generator=g).to("cuda", dt).requires_grad_()
        a = (torch.rand(4, 300, generator=g) * 0.9 + 0.05).to("cuda", dt).requires_grad_()
        lengths = torch.tensor([300, 250, 1, 0], device="cuda")
        for tgt in (torch.tensor([40, 30, 1, 0], device="cuda"), None):
            r = cif(h, a, lengths, target_lengths=tgt, backend="ext")
            torch.autograd.grad((r.out.float() ** 2).sum(), (h, a))
    torch.cuda.synchronize()
    print("forward and backward kernels ran (fp32, bf16; training and inference calls)")
    return 0


def smoke(exp: str) -> int:
    rows = [json.loads(x) for x in open(f"{exp}/metrics.jsonl")]
    tr = [r for r in rows if r["phase"] == "train"]
    va = [r for r in rows if r["phase"] == "valid"]
    print("train loss by step: " + " ".join(f"{r['step']}:{r['loss']:.3f}" for r in tr))
    print("valid loss by epoch: " + " ".join(f"{r['epoch']}:{r['loss']:.3f}" for r in va))
    stamps = []
    for line in open(f"{exp}/train.log"):
        m = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+),(\d+) .* step (\d+): ", line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1e3
            stamps.append((int(m.group(3)), t))
    if len(stamps) >= 2:
        (s0, t0), (s1, t1) = stamps[0], stamps[-1]
        print(f"throughput: {(s1 - s0) / (t1 - t0):.2f} optimiser steps/s from step {s0} to {s1} "
              "(epoch-end validation and checkpoints included)")
    for line in open(f"{exp}/train.log"):
        if "trainable parameters" in line or "epoch 1 done" in line:
            print(line.split(" INFO ", 1)[-1].rstrip())
    # the training loss changes terms at the end of the CTC warm-up (CTC only, then every term), the validation
    # loss is always the full loss: the trend is judged on it
    print(f"train loss {tr[0]['loss']:.3f} (step {tr[0]['step']}) -> {tr[-1]['loss']:.3f} over {tr[-1]['step']} steps")
    if len(va) < 2:
        print("fewer than 2 validations: no trend")
        return 1
    print(f"valid loss {va[0]['loss']:.3f} (epoch {va[0]['epoch']}) -> {va[-1]['loss']:.3f} (epoch {va[-1]['epoch']})")
    return 0 if va[-1]["loss"] < va[0]["loss"] and tr[-1]["step"] >= 200 else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "sanitize":
        sys.exit(sanitize())
    if len(sys.argv) == 3 and sys.argv[1] == "smoke":
        sys.exit(smoke(sys.argv[2]))
    sys.exit(__doc__)
