"""Decoding (recipe stages 6 and 8): every system x every task on the test sets, one frozen LLM.

  python -m w2p.bin.decode --config conf/decode.yaml --systems_config conf/systems.yaml [--expdir exp]
         [--dump_dir dump/fbank] [--systems wav2prompt,cascade] [--tasks st,slu] [--llm smollm2-135m]
         [--key value overrides, e.g. --beam 5 --max_utts null]

The systems come from the recipe's systems file (w2p.bin.systems; system X decodes into exp/X), or, without
--systems_config, from the decode config's own ``systems``. Without --systems, every system except the few-shot
ones is decoded (stage 6); a few-shot system (one model per task, exp/X/<task>) is decoded by naming it with
--systems and one task with --tasks (stage 8): LoRA adapters are injected into the LLM of the process that loads
them, so each of its models gets its own process.
Writes <system out dir>/decode_<task>_<set>/{hyp,ref,timing.json} (+ asr_hyp for the cascade).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

from w2p.errors import cli_main


@cli_main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="decode YAML (conf/decode.yaml)")
    p.add_argument("--systems_config", default=None, help="the recipe's systems file (conf/systems.yaml)")
    p.add_argument("--expdir", default="exp", help="with --systems_config: system X lives in <expdir>/X")
    p.add_argument("--dump_dir", default="dump/fbank", help="parent of the <set> feature dirs")
    p.add_argument("--systems", default=None, help="comma-separated subset of the systems")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks of w2p.tasks (asr, st, st_es, st_de, slu, sqqa, sqa); a task's test "
                        "set: the config's tasks map, or --tasks.<task> <set>")
    p.add_argument("--llm", default=None, help="frozen LLM source (overrides the config)")
    p.add_argument("--skip_missing", action="store_true",
                   help="skip (with a warning) systems whose trained model is missing instead of failing")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from w2p.decode import load_config

    conf = load_config(args.config, extra)
    if args.llm:
        conf["llm"] = args.llm
    if conf.get("num_threads"):
        torch.set_num_threads(int(conf["num_threads"]))

    from w2p.bin.systems import systems_of
    from w2p.decode import System, decode_task, load_set, out_dir_of, references, write_decode_dir
    from w2p.llm import FrozenLLM
    from w2p.models import load_trained
    from w2p.tasks import get_task

    systems = systems_of(conf, args.systems_config, args.expdir)
    per_task = {n for n, s in systems.items() if "{task}" in (s.get("exp") or "")}
    names = args.systems.split(",") if args.systems else [n for n in systems if n not in per_task]
    for n in names:
        if n not in systems:
            raise SystemExit(f"unknown system '{n}'; {args.systems_config or 'the config'} defines: "
                             f"{', '.join(systems)}")
    tasks = conf["tasks"]
    tnames = args.tasks.split(",") if args.tasks else list(tasks)
    for t in tnames:
        get_task(t)
        if t not in tasks:
            raise SystemExit(f"task '{t}' has no test set in the config's tasks: {tasks}")
    if per_task & set(names) and len(tnames) != 1:
        raise SystemExit(f"few-shot system(s) {', '.join(sorted(per_task & set(names)))} have one model per task: "
                         f"decode one task per process (--tasks st)")

    if str(conf["device"]).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {conf['device']}, but this torch sees no CUDA device (a CPU-only torch?); "
                         "use --device cpu")
    llm = FrozenLLM.load(conf["llm"], dtype=getattr(torch, conf["llm_dtype"]), device=conf["device"])
    sets = {t: load_set(os.path.join(args.dump_dir, tasks[t]), max_utts=conf["max_utts"],
                        allow_pipes=bool(conf["allow_scp_pipes"])) for t in tnames}
    t_all = time.perf_counter()
    for name in names:
        spec = systems[name]
        model = None
        if spec["kind"] != "gold":
            exp = spec["exp"].format(task=tnames[0]) if name in per_task else spec["exp"]
            if not os.path.isfile(os.path.join(exp, "config.yaml")) and args.skip_missing:
                logging.warning("system %s: %s has no trained model, skipped", name, exp)
                continue
            model, _ = load_trained(exp, llm, device=conf["device"])
        system = System(name, spec["kind"], model, asr_beam=int(conf["asr_beam"]))
        for t in tnames:
            ts = sets[t]
            hyps, timing = decode_task(llm, system, t, ts, beam=int(conf["beam"]),
                                       repetition_penalty=float(conf["repetition_penalty"]),
                                       max_new_tokens=(conf.get("max_new_tokens") or {}).get(t),
                                       batch_size=int(conf["batch_size"]),
                                       template=(conf.get("templates") or {}).get(t), calibrate=conf["calibrate"])
            out = os.path.join(out_dir_of(spec, name), f"decode_{t}_{ts.name}")
            write_decode_dir(out, hyps, references(t, ts), timing, text=ts.text)
            logging.info("%s / %s: %d utts in %.1f s (RTF %.3f) -> %s", name, t, len(hyps), timing["decode_sec"],
                         timing["decode_sec"] / max(1e-9, timing["audio_sec"]), out)
    logging.info("decoding done in %.1f s", time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
