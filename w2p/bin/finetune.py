"""Few-shot fine-tuning (recipe stage 7): a thin wrapper around the shared trainer (w2p.bin.train).

    python -m w2p.bin.finetune --config conf/finetune_fewshot.yaml --init_exp exp/wav2prompt \\
        --train_sets dump/fbank/st_fewshot --output_dir exp/wav2prompt_fewshot/st \\
        [--n_valid 12] [--llm_lora true] [--llm SRC] [--ngpu N] [--resume] [--key.sub value overrides]

What it adds to the trainer:
  1. one training dir from the union of the task sets (``<output_dir>/data/{train,valid}``): feats.scp lines,
     text, ref, llm_tokens, utt2num_frames are copied, and every utterance gets its ``task`` (from the set name
     ``<task>_fewshot`` or --tasks), its ``question`` (SQA) and its ``intent_set`` (the SLU label set as the
     {intents} prompt text). ``n_valid`` utterances per task are held out for validation (seeded, stable);
  2. the model config: the architecture (``model_conf``) is taken from the initial system's config.yaml and the
     fine-tuning keys of --config are laid over it; ``max_epoch_per_task: {st: 4}`` in --config sets max_epoch
     by task (the largest over the sets trained together). The fine-tuned model is chosen by the initial system:
     wav2prompt -> ``w2p_fewshot`` (w2p.models.fewshot.FewShotWav2Prompt); asr_ctc -> the cascade baseline
     ``cascade_lora`` (w2p.models.fewshot.CascadeLoRA; needs --llm_lora true: frozen ASR, LoRA-tuned LLM);
  3. ``--init <init_exp>/model.pt``, then the trainer as usual (resume, DDP, logs, n-best averaging).
Output: <output_dir>/{config.yaml, model.pt, train.log, ...}, decodable by w2p.bin.decode as any system.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys

import yaml

from w2p.errors import cli_main, nonnegative_int, positive_int
from w2p.io import write_atomic
from w2p.models.fewshot import INTENT_SET_FIELD, TASK_FIELD
from w2p.tasks import TASKS, intents_prompt

log = logging.getLogger("w2p.finetune")

FEWSHOT_MODELS = {"wav2prompt": "w2p_fewshot", "asr_ctc": "cascade_lora"}
# the stage-4 system's training-loss settings: not part of the fine-tuned model's architecture
_DROP_KEYS = {"ce_task", "ce_template", "ce_reduction", "ce_target", "ce_fields", "ce_weight", "ctc_weight",
              "mse_weight", "qua_weight", "ctc_warmup_steps", "tok_weight", "tok_temperature"}


def _read_kv(path: str) -> dict[str, str]:
    from w2p.train.dataset import read_kv

    return read_kv(path)


def _write_kv(path: str, items: dict[str, str]) -> None:
    write_atomic(path, "".join(f"{k} {items[k]}\n" if items[k] != "" else f"{k}\n" for k in sorted(items)))


def task_of(set_dir: str) -> str:
    name = os.path.basename(os.path.normpath(set_dir))
    task = name.split("_", 1)[0]
    if task not in TASKS:
        raise ValueError(f"{set_dir}: cannot tell the task from the set name (expected <task>_fewshot with task in "
                         f"{', '.join(TASKS)}); pass --tasks")
    return task


def build_union(set_dirs: list[str], tasks: list[str], out_dir: str, *, n_valid: int, seed: int = 0) -> dict:
    """Write <out_dir>/train and <out_dir>/valid from the task sets; returns {"train": n, "valid": n}."""
    rows: dict[str, dict[str, dict[str, str]]] = {"train": {}, "valid": {}}
    has_tokens = True
    for d, task in zip(set_dirs, tasks):
        if os.path.isfile(os.path.join(d, "feats_type")):
            raise ValueError(f"{d}: a raw-audio dump (stage 2 --feats_type raw); few-shot fine-tuning reads fbank "
                             "dumps: rerun stage 2 for the task sets with --feats_type fbank (they are small)")
        for f in ("feats.scp", "text", "ref"):
            if not os.path.isfile(os.path.join(d, f)):
                hint = "run stage 2 (features)" if f == "feats.scp" else "the set needs transcripts and references"
                raise FileNotFoundError(f"{d}/{f} not found ({hint})")
        feats = _read_kv(os.path.join(d, "feats.scp"))
        files = {f: _read_kv(os.path.join(d, f)) for f in ("text", "ref", "question", "llm_tokens", "utt2num_frames")
                 if os.path.isfile(os.path.join(d, f))}
        need = ["text", "ref"] + [f for f in TASKS[task].fields if f != "intents"]
        for f in need:
            if f not in files:
                raise FileNotFoundError(f"{d}/{f} not found: task {task} needs it")
            miss = [u for u in feats if u not in files[f]]
            if miss:
                raise ValueError(f"{d}/{f}: no entry for {miss[0]} (and {len(miss) - 1} more)")
        intent_set = ""
        if "intents" in TASKS[task].fields:
            p = os.path.join(d, "intents")
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p} not found: the {task} task needs its label set")
            with open(p, encoding="utf-8") as f:
                intent_set = intents_prompt([x.strip() for x in f if x.strip()])
        has_tokens &= "llm_tokens" in files
        utts = sorted(feats)
        held = set(random.Random(f"{seed}:{task}").sample(utts, min(n_valid, max(0, len(utts) - 1))))
        for u in utts:
            part = "valid" if u in held else "train"
            if u in rows["train"] or u in rows["valid"]:
                raise ValueError(f"{d}: utterance id {u} also occurs in another task set; ids must be unique")
            rows[part][u] = {
                "feats.scp": feats[u], "text": files["text"][u], "ref": files["ref"][u], TASK_FIELD: task,
                "question": files.get("question", {}).get(u, ""), INTENT_SET_FIELD: intent_set,
                "llm_tokens": files.get("llm_tokens", {}).get(u), "utt2num_frames":
                    files.get("utt2num_frames", {}).get(u)}
    if not rows["valid"]:
        raise ValueError("no validation utterances: use --n_valid >= 1 (and sets of >= 2 utterances)")
    counts = {}
    for part, utts in rows.items():
        d = os.path.join(out_dir, part)
        os.makedirs(d, exist_ok=True)
        keys = ["feats.scp", "text", "ref", TASK_FIELD, "question", INTENT_SET_FIELD]
        if has_tokens:
            keys.append("llm_tokens")
        if all(r["utt2num_frames"] is not None for r in utts.values()):
            keys.append("utt2num_frames")
        for stale in ("llm_tokens", "utt2num_frames"):
            if stale not in keys and os.path.exists(os.path.join(d, stale)):
                os.remove(os.path.join(d, stale))
        for k in keys:
            _write_kv(os.path.join(d, k), {u: r[k] for u, r in utts.items()})
        counts[part] = len(utts)
    return counts


def fewshot_config(ft_conf_path: str, init_exp: str) -> dict:
    """The fine-tuning YAML with the initial system's architecture (model_conf) underneath its own keys."""
    if not os.path.isfile(ft_conf_path):
        raise FileNotFoundError(f"config {ft_conf_path} not found")
    with open(ft_conf_path, encoding="utf-8") as f:
        ft = yaml.safe_load(f) or {}
    init_cfg = os.path.join(init_exp, "config.yaml")
    if not os.path.isfile(init_cfg):
        raise FileNotFoundError(f"{init_cfg} not found: train the initial system first (stage 4 / 5)")
    with open(init_cfg, encoding="utf-8") as f:
        base = yaml.safe_load(f) or {}
    src = base.get("model")
    if src not in FEWSHOT_MODELS:
        raise ValueError(f"{init_cfg}: model {src!r} has no few-shot variant (known: {', '.join(FEWSHOT_MODELS)})")
    mc = {k: v for k, v in (base.get("model_conf") or {}).items() if k not in _DROP_KEYS}
    if isinstance(mc.get("encoder"), dict):
        # CMVN statistics are buffers of the initial model.pt: do not depend on the stats file's path
        mc["encoder"] = {k: v for k, v in mc["encoder"].items() if k != "cmvn"}
    mc.update(ft.get("model_conf") or {})
    conf = dict(ft)
    conf.pop("max_epoch_per_task", None)  # ours, not the trainer's: resolved in main()
    conf["model"] = FEWSHOT_MODELS[src]
    conf["model_conf"] = mc
    if "llm" not in conf and base.get("llm"):
        conf["llm"] = base["llm"]
    return conf


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="w2p.bin.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="fine-tuning YAML (conf/finetune_fewshot.yaml)")
    p.add_argument("--init_exp", required=True,
                   help="initial system: exp/wav2prompt (Wav2Prompt) or exp/asr_ctc (cascade)")
    p.add_argument("--train_sets", nargs="+", required=True, help="task dump dirs (dump/fbank/<task>_fewshot)")
    p.add_argument("--tasks", nargs="+", default=None, help="task of each set (default: from the set names)")
    p.add_argument("--output_dir", required=True, help="exp dir of the fine-tuned system")
    p.add_argument("--n_valid", type=positive_int, default=12, help="utterances per task held out for validation")
    p.add_argument("--llm_lora", default=None, choices=["true", "false"],
                   help="also train LoRA adapters on the LLM (peft; base weights stay frozen)")
    p.add_argument("--llm", default=None, help="LLM source (default: the config's / initial system's)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pt")
    p.add_argument("--ngpu", type=nonnegative_int, default=0, help="GPUs (0 = CPU)")
    p.add_argument("--nproc", type=nonnegative_int, default=0, help="processes per node")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the validation hold-out")
    p.add_argument("--only_with_lora", action="store_true",
                   help="do nothing (exit 0) unless LoRA is on (recipe: the cascade's few-shot variant)")
    return p


@cli_main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = get_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tasks = args.tasks or [task_of(d) for d in args.train_sets]
    if len(tasks) != len(args.train_sets):
        raise SystemExit(f"--tasks names {len(tasks)} tasks for {len(args.train_sets)} --train_sets")
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t!r}; known: {', '.join(TASKS)}")
    if args.only_with_lora:
        with open(args.config, encoding="utf-8") as f:
            lora = bool(((yaml.safe_load(f) or {}).get("model_conf") or {}).get("llm_lora"))
        if args.llm_lora is not None:
            lora = args.llm_lora == "true"
        if not lora:
            log.info("LoRA is off (%s model_conf.llm_lora): nothing to fine-tune for %s, skipped", args.config,
                     args.output_dir)
            return 0
    conf = fewshot_config(args.config, args.init_exp)
    with open(args.config, encoding="utf-8") as f:
        per_task = (yaml.safe_load(f) or {}).get("max_epoch_per_task") or {}
    if not isinstance(per_task, dict) or any(t not in TASKS for t in per_task):
        raise SystemExit(f"{args.config}: max_epoch_per_task must map task names ({', '.join(TASKS)}) to epochs")
    if any(t in per_task for t in tasks):
        # the most any of the sets asks for (a cheap task such as st can afford more passes on CPU)
        conf["max_epoch"] = max(int(per_task.get(t, conf.get("max_epoch", 1))) for t in tasks)
    if args.llm_lora is not None:
        conf["model_conf"]["llm_lora"] = args.llm_lora == "true"
    if conf["model"] != "w2p_fewshot" and not conf["model_conf"].get("llm_lora"):
        raise SystemExit(f"{args.init_exp} is an ASR system: its few-shot variant (the cascade) only trains LoRA "
                         "adapters on the LLM; pass --llm_lora true")
    os.makedirs(args.output_dir, exist_ok=True)
    data = os.path.join(args.output_dir, "data")
    # one writer: torchrun's rank 0, on the first node of a multi-node job (the others wait at the rendezvous)
    rank0 = int(os.environ.get("RANK", "0")) == 0 and os.environ.get("SLURM_NODEID", "0") == "0"
    if rank0:  # under torchrun only the first process writes the union dir (it is built before the relaunch)
        counts = build_union(args.train_sets, tasks, data, n_valid=args.n_valid, seed=args.seed)
        log.info("fine-tuning data %s: %d train / %d valid utterances, tasks %s", data, counts["train"],
                 counts["valid"], ",".join(tasks))
    cfg_path = os.path.join(args.output_dir, "finetune_config.yaml")
    from w2p.config import save_config

    if rank0:
        save_config(conf, cfg_path)
    init = os.path.join(args.init_exp, "model.pt")
    if not os.path.isfile(init):
        raise SystemExit(f"{init} not found: the initial system has not finished training")
    from w2p.bin import train

    targs = ["--config", cfg_path, "--train_dir", os.path.join(data, "train"), "--valid_dir",
             os.path.join(data, "valid"), "--output_dir", args.output_dir, "--ngpu", str(args.ngpu)]
    if args.nproc:
        targs += ["--nproc", str(args.nproc)]
    if args.resume:
        targs.append("--resume")
    if args.llm:
        targs += ["--llm", args.llm]
    targs += ["--init", init]  # with --resume the trainer's checkpoint then replaces these weights
    return train.main(targs + list(extra))


if __name__ == "__main__":
    raise SystemExit(main())
