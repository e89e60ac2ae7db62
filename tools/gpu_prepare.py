"""CPU-side preparation of tools/gpu_check.sh: what the CUDA machine (no network, no project venv) needs, written
under one git-ignored folder (default tools/gpu_carry/) that travels with the working tree.

    tools/venv/bin/python tools/gpu_prepare.py [--carry tools/gpu_carry] [--max_utts 600] [--feature_mb 12]
        [--features_from DUMP_FBANK --bpe_model BPE.model] [--no_wheels]

Writes
  wheels/       the Python packages the CUDA image lacks, cp312 manylinux wheels fetched with
                ``pip download --no-deps --only-binary=:all: --python-version 3.12`` at the versions this repo pins
                (tools/requirements*.txt); installed there with ``pip install --no-index --no-deps --target``
  llm/smollm2-135m-embeddings.gguf
                the default LLM's tokenizer, config metadata and input-embedding table (token_embd.weight, its
                quantised bytes as shipped) and nothing else: the embeddings-only load reads it
                (``FrozenLLM.load(..., embeddings_only=True)``; the whole GGUF is 98 MB, over the transfer limit)
  data/{train,dev}/   real mini_en speech features (espeak-ng synthesis through egs/mini_en stages 0-3, or
                ``--features_from``), Kaldi-compressed (1 byte a value) to fit ``--feature_mb``, with text,
                llm_tokens, bpe_tokens, utt2num_frames, cmvn.npz; data/bpe.model (the CTC units)
  MANIFEST.json every file with its size; the total must stay under the 64 MiB a GPU lease carries with the tree
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what w2p's training, CIF tests and benchmark import that the CUDA image does not hold (found by importing them here
# and subtracting the image's package list). Versions: this repo's pins.
WHEELS = ("espnet", "typeguard", "kaldiio", "torch-cif", "gguf")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT_MB = 60.0  # of the 64 MiB a GPU lease carries with the working tree; the rest is the repository itself
EMB_GGUF = "smollm2-135m-embeddings.gguf"


def pinned(name: str) -> str:
    norm = re.sub(r"[-_.]+", "-", name).lower()
    for req in ("requirements.txt", "requirements-nodeps.txt"):
        with open(os.path.join(ROOT, "tools", req)) as f:
            for line in f:
                m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
                if m and re.sub(r"[-_.]+", "-", m.group(1)).lower() == norm:
                    return f"{m.group(1)}=={m.group(2)}"
    raise SystemExit(f"gpu_prepare: {name} is not pinned in tools/requirements*.txt")


def download_wheels(dest: str) -> list[str]:
    os.makedirs(dest, exist_ok=True)
    have = os.listdir(dest)
    for name in WHEELS:
        spec = pinned(name)
        stem = re.sub(r"[-_.]+", "_", spec.split("==")[0]).lower() + "-" + spec.split("==")[1] + "-"
        if any(w.lower().startswith(stem) for w in have):
            continue
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", dest, spec]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return sorted(os.listdir(dest))


def write_embeddings_gguf(dest: str) -> str:
    """The default LLM's GGUF with every metadata key (tokenizer, config) and only token_embd.weight."""
    import torch
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from w2p.llm import DEFAULT_LLM, FrozenLLM, _default_gguf, read_gguf_embeddings

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    src = GGUFReader(_default_gguf())
    arch = src.fields["general.architecture"].contents()
    tmp = dest + ".tmp"
    w = GGUFWriter(tmp, arch=arch)
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        w.add_key_value(name, field.contents(), vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY
                        else None)
    t = next(t for t in src.tensors if t.name == "token_embd.weight")
    w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the table read back is exactly the one the full LLM uses here
    full = FrozenLLM.load(DEFAULT_LLM, embeddings_only=True)
    if not torch.equal(read_gguf_embeddings(tmp), full.embedding_weight):
        raise SystemExit(f"gpu_prepare: {tmp}: its embedding table differs from {DEFAULT_LLM}'s")
    os.replace(tmp, dest)
    return dest


def synthesise(work: str, max_utts: int) -> tuple[str, str]:
    """egs/mini_en stages 0-3 (espeak-ng speech, fbank, LLM tokens, character CTC units) into ``work``."""
    recipe = os.path.join(ROOT, "egs", "mini_en", "w2p1")
    cmd = (f"./run.sh --stage 0 --stop_stage 3 --nj 2 --max_utts {max_utts} --tasks '' --test_sets '' "
           f"--local_data_opts '--corpus_dir {work}/corpus' --datadir {work}/data --dumpdir {work}/dump")
    env = dict(os.environ, PYTHONPATH=ROOT)
    print("+", cmd, flush=True)
    subprocess.run(["bash", "-c", cmd], cwd=recipe, env=env, check=True)
    return os.path.join(work, "dump", "fbank"), os.path.join(work, "data", "lang", "bpe", "bpe.model")


def _read_kv(path: str) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(" ")
            if k:
                out[k] = v
    return out


def pack_set(src: str, dest: str, budget_bytes: int, max_utts: int | None = None) -> int:
    """Copy utterances of the dump dir ``src`` into ``dest`` as a Kaldi-compressed ark until ``budget_bytes``."""
    import kaldiio
    import numpy as np

    os.makedirs(dest, exist_ok=True)
    feats = kaldiio.load_scp(os.path.join(src, "feats.scp"))
    fields = {f: _read_kv(os.path.join(src, f)) for f in ("text", "llm_tokens", "bpe_tokens")
              if os.path.isfile(os.path.join(src, f))}
    missing = {"text", "llm_tokens", "bpe_tokens"} - set(fields)
    if missing:
        raise SystemExit(f"gpu_prepare: {src} lacks {sorted(missing)} (run stage 3 with the CTC units)")
    import io

    kept, mats, used = [], {}, 0
    for utt in sorted(feats):
        if max_utts and len(kept) >= max_utts:
            break
        mat = np.asarray(feats[utt], dtype=np.float32)
        buf = io.BytesIO()
        kaldiio.save_ark(buf, {utt: mat}, compression_method=2)
        if used + buf.tell() > budget_bytes and kept:
            break
        used += buf.tell()
        kept.append((utt, mat.shape[0]))
        mats[utt] = mat
    ark, scp = os.path.join(dest, "feats.ark"), os.path.join(dest, "feats.scp")
    kaldiio.save_ark(ark, mats, scp=scp, compression_method=2)
    # scp paths relative to the repository root when the carry folder is inside it (gpu_check.sh runs from there)
    ark_ref = os.path.relpath(ark, ROOT) if os.path.abspath(ark).startswith(ROOT + os.sep) else os.path.abspath(ark)
    with open(scp) as f:
        lines = [line.replace(f" {ark}:", f" {ark_ref}:", 1) for line in f]
    with open(scp, "w") as f:
        f.writelines(lines)
    with open(os.path.join(dest, "utt2num_frames"), "w") as f:
        f.writelines(f"{u} {n}\n" for u, n in kept)
    for name, kv in fields.items():
        with open(os.path.join(dest, name), "w", encoding="utf-8") as f:
            f.writelines(f"{u} {kv[u]}\n" for u, _ in kept)
    if os.path.isfile(os.path.join(src, "cmvn.npz")):
        shutil.copy(os.path.join(src, "cmvn.npz"), os.path.join(dest, "cmvn.npz"))
    return len(kept)


def manifest(carry: str) -> dict:
    files = {}
    for d, _, names in os.walk(carry):
        for n in names:
            if n == "MANIFEST.json":
                continue
            p = os.path.join(d, n)
            files[os.path.relpath(p, carry)] = os.path.getsize(p)
    total = sum(files.values()) / 2**20
    out = {"files": dict(sorted(files.items())), "total_mib": round(total, 2), "limit_mib": LIMIT_MB}
    with open(os.path.join(carry, "MANIFEST.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--carry", default=os.path.join(ROOT, "tools", "gpu_carry"))
    p.add_argument("--max_utts", type=int, default=600, help="utterances synthesised per set (stages 0-3)")
    p.add_argument("--feature_mb", type=float, default=12.0, help="budget of the training features (MB)")
    p.add_argument("--features_from", default=None, help="a dump/fbank dir with train/ and dev/ (no synthesis)")
    p.add_argument("--bpe_model", default=None, help="the CTC units' sentencepiece model (with --features_from)")
    p.add_argument("--no_wheels", action="store_true", help="skip the wheel download (no network)")
    args = p.parse_args(argv)
    carry = os.path.abspath(args.carry)
    os.makedirs(carry, exist_ok=True)
    if not args.no_wheels:
        print("wheels:", ", ".join(download_wheels(os.path.join(carry, "wheels"))), flush=True)
    gguf = os.path.join(carry, "llm", EMB_GGUF)
    if not os.path.isfile(gguf):
        write_embeddings_gguf(gguf)
    print(f"llm: {gguf} ({os.path.getsize(gguf) / 2**20:.1f} MiB)", flush=True)
    data = os.path.join(carry, "data")
    if not os.path.isfile(os.path.join(data, "dev", "feats.scp")):
        with tempfile.TemporaryDirectory(prefix="w2p_gpu_prepare_") as work:
            if args.features_from:
                dump, bpe = args.features_from, args.bpe_model
            else:
                dump, bpe = synthesise(work, args.max_utts)
            if not bpe or not os.path.isfile(bpe):
                raise SystemExit(f"gpu_prepare: the CTC units' bpe.model not found ({bpe}); give --bpe_model")
            budget = int(args.feature_mb * 1e6)
            n_train = pack_set(os.path.join(dump, "train"), os.path.join(data, "train"), budget)
            n_dev = pack_set(os.path.join(dump, "dev"), os.path.join(data, "dev"), budget // 8, max_utts=60)
            shutil.copy(bpe, os.path.join(data, "bpe.model"))
        print(f"features: {n_train} train / {n_dev} dev utterances under {data}", flush=True)
    m = manifest(carry)
    print(f"carry: {carry}: {len(m['files'])} files, {m['total_mib']} MiB (limit {LIMIT_MB} MiB)")
    if m["total_mib"] > LIMIT_MB:
        raise SystemExit(f"gpu_prepare: {carry} holds {m['total_mib']} MiB, over {LIMIT_MB} MiB: lower --feature_mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
