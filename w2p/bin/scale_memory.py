"""Measure, on the CPU, the activation memory that docs/scale.md's memory model extrapolates to a 7B LLM.

    python -m w2p.bin.scale_memory [--json out.json] [--threads 2]

1. Through the frozen LLM (the CE term): the bytes a forward keeps for the backward (live after the forward: the
   allocator's events replayed from the profiler), per token and decoder layer, at the real dimensions of the
   paper's 7B LLMs (Llama-2-7B: h=4096, MLP 11008, 32 heads, SDPA; BLOOMZ-7B1: h=4096, MLP 16384, 32 heads, ALiBi
   attention written out), random bf16 weights, as the difference between a 2-layer and a 1-layer model; at prompt
   lengths 64 and 256 (an L^2 attention map shows as growth with L), and with FrozenLLM.enable_checkpointing(),
   where the prediction is the layer's input only (h bf16 values a token).
2. The paper's speech encoder (conf/tuning/train_wav2prompt_paper.yaml: Conformer d=512, 16 blocks, macaron, bf16
   autocast): bytes kept for one utterance of 1000, 2000 and 3000 input frames, fitted as
   ``const + alpha*T' + beta*T'^2`` (T' = the frames after x4 subsampling; const: the bf16 weight copies autocast
   keeps; beta: the attention maps of the relative-position self-attention).
"""
from __future__ import annotations

import argparse
import sys

import torch

# the paper's two 7B LLMs: the real layer dimensions (one or two layers are built, in bf16)
LLM_7B = {
    "llama": ("LlamaConfig", {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                              "num_key_value_heads": 32, "tie_word_embeddings": False}, "num_hidden_layers"),
    "bloom": ("BloomConfig", {"hidden_size": 4096, "n_head": 32}, "n_layer"),  # MLP 4h = 16384
}


def live_bytes_after(fn) -> tuple[int, object]:
    """Bytes allocated by ``fn`` and still live when it returns (CPU allocator events from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        res = fn()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage), res


def layer_bytes_per_token(family: str, n_layers: int, L: int, checkpointing: bool, B: int = 1) -> float:
    """Bytes one forward of an ``n_layers`` 7B-dimension decoder (bf16, random weights, frozen) keeps for the
    backward, per token, the prompt embeddings requiring grad; the backward is run and must reach them only."""
    import transformers

    from w2p.llm import FrozenLLM

    name, kw, nkey = LLM_7B[family]
    cfg = getattr(transformers, name)(vocab_size=256, **kw, **{nkey: n_layers})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    class Tok:  # FrozenLLM reads eos/pad from its tokenizer; nothing is tokenised here
        eos_token_id, pad_token_id, chat_template = 0, 0, None

    llm = FrozenLLM(model, Tok(), path=f"{family}-7b-dims")
    if checkpointing:
        llm.enable_checkpointing()
    x = torch.randn(B, L, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    llm.hidden_states(x)  # warm-up (lazily built buffers)
    nbytes, out = live_bytes_after(lambda: llm.hidden_states(x))
    out.float().sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
    return nbytes / (B * L)


def per_layer(family: str, L: int, checkpointing: bool) -> float:
    """Bytes per token per decoder layer: the difference between 2 layers and 1 (embeddings, norm, output out)."""
    return layer_bytes_per_token(family, 2, L, checkpointing) - layer_bytes_per_token(family, 1, L, checkpointing)


def encoder_activation(frames_list=(1000, 2000, 3000)) -> dict:
    """Bytes the paper's encoder keeps per utterance of each length (bf16 autocast, training mode), after a
    warm-up forward at the longest length (the positional-encoding table is built lazily)."""
    import numpy as np

    from w2p.models.encoder import build_encoder

    torch.manual_seed(0)
    enc = build_encoder({"output_size": 512, "attention_heads": 8, "linear_units": 2048, "num_blocks": 16,
                         "cnn_module_kernel": 31, "macaron_style": True, "conv_norm": "batch_norm",
                         "dropout_rate": 0.1, "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1})
    enc.train()

    def fwd(frames):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return enc(torch.randn(1, frames, 80), torch.tensor([frames]))

    fwd(max(frames_list))
    pts = []
    for fr in frames_list:
        nbytes, (h, _) = live_bytes_after(lambda: fwd(fr))
        pts.append((int(h.shape[1]), nbytes))
    T = np.array([t for t, _ in pts], dtype=float)
    y = np.array([b for _, b in pts], dtype=float)
    # the constant: bf16 copies of the weights that autocast makes once per forward and keeps for the backward
    const, alpha, beta = np.linalg.lstsq(np.stack([np.ones_like(T), T, T * T], 1), y, rcond=None)[0]
    return {"params": sum(p.numel() for p in enc.parameters()), "points": pts, "const": float(const),
            "alpha": float(alpha), "beta": float(beta)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"llm": {}, "encoder": {}}
    print("1. activations kept for the backward through one decoder layer of the 7B LLMs (bf16, bytes per token)")
    for fam in LLM_7B:
        row = {}
        for L in (64, 256):
            row[f"L{L}"] = per_layer(fam, L, False)
        row["L64_ckpt"] = per_layer(fam, 64, True)
        res["llm"][fam] = row
        print(f"  {fam:<6} no checkpointing: {row['L64'] / 1024:.1f} KiB (L=64), {row['L256'] / 1024:.1f} KiB (L=256); "
              f"checkpointing: {row['L64_ckpt'] / 1024:.1f} KiB (L=64; prediction: the layer input, 4096 x 2 B = "
              "8.0 KiB)")
    print("2. paper encoder (d=512, 16 blocks, macaron, bf16 autocast): bytes kept per utterance")
    enc = encoder_activation()
    res["encoder"] = enc
    for t, b in enc["points"]:
        print(f"  T'={t}: {b / 2**20:.1f} MiB")
    print(f"  fit: bytes = {enc['const'] / 2**20:.0f} MiB + {enc['alpha'] / 2**20:.3f} MiB*T' + "
          f"{enc['beta']:.0f} B*T'^2 ({enc['params'] / 1e6:.1f}M parameters)")
    if args.json:
        from w2p.io import write_json

        write_json(args.json, res, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
