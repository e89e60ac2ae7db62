"""A recipe's systems file (conf/systems.yaml): the one list of the systems it trains, decodes and scores.

  python -m w2p.bin.systems conf/systems.yaml --stage 5     # what w2p.sh trains in stage 5, one line per system:
                                                            #   name config init tasks [train_args...]
  python -m w2p.bin.systems conf/systems.yaml --stage 7 --names

A system named X lives in exp/X (trained model, logs, decode_<task>_<set>/ dirs); a stage-7 (few-shot) system
has one model per task, exp/X/<task>. Keys of a system (all optional, but see the checks in ``load_systems``):

  stage       the w2p.sh stage that trains it: 4 (Wav2Prompt), 5 (baselines) or 7 (few-shot, one model per task)
  config      its training config: a path relative to the recipe dir, or a run.sh option (``--fewshot_config``)
              whose value is the path
  init        the system whose trained model it starts from
  train_args  extra options for the trainer (w2p.bin.train; stage 7: w2p.bin.finetune)
  tasks       stage 7: the tasks it is fine-tuned on (default: every task of run.sh --tasks)
  kind        how it is decoded: wav2prompt | encoder_llm | cascade | gold (none: trained only, not decoded)
  model       the system whose trained model it decodes (the cascade runs the CTC ASR asr_ctc); default: itself
  label       its row in RESULTS.md (required with kind)
"""
from __future__ import annotations

import argparse
import os
import re
import sys

TRAIN_STAGES = (4, 5, 7)
FEWSHOT_STAGE = 7  # w2p.sh stage 7 fine-tunes one model per task: exp/<system>/<task>
KINDS = ("wav2prompt", "encoder_llm", "cascade", "gold")
KEYS = ("stage", "config", "init", "train_args", "tasks", "kind", "model", "label")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")  # used in exp paths and bash words


class SystemsError(ValueError):
    """A systems file that cannot be used; the message names the file, the system and the fix."""


def load_systems(path: str) -> dict[str, dict]:
    """The systems of ``path`` in file order, checked: {name: {key: value}} with every key of KEYS present."""
    import yaml

    if not os.path.isfile(path):
        raise SystemsError(f"systems file {path} not found (a recipe lists its systems in conf/systems.yaml; "
                           f"run.sh --systems_config names another)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SystemsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict) or not raw:
        raise SystemsError(f"{path}: expected a mapping of system names to their settings")
    systems: dict[str, dict] = {}
    for name, spec in raw.items():
        where = f"{path}: system {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise SystemsError(f"{where}: a name is a letter then letters, digits or '_' (it names exp/<name>)")
        if not isinstance(spec, dict):
            raise SystemsError(f"{where}: expected a mapping of {', '.join(KEYS)}")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise SystemsError(f"{where}: unknown key(s) {unknown}; known: {', '.join(KEYS)}")
        s = {k: spec.get(k) for k in KEYS}
        _check(where, s, systems)
        systems[name] = s
    for name, s in systems.items():  # `model` may name a system listed later
        if s["model"] is not None:
            m = systems.get(s["model"])
            if m is None or m["stage"] is None:
                raise SystemsError(f"{path}: system {name!r}: model {s['model']!r} is not a trained system of "
                                   f"this file (one with a stage)")
            if m["stage"] == FEWSHOT_STAGE:
                raise SystemsError(f"{path}: system {name!r}: model {s['model']!r} is a few-shot system (one "
                                   f"model per task); give {name!r} its own stage-{FEWSHOT_STAGE} entry instead")
    return systems


def _check(where: str, s: dict, earlier: dict[str, dict]) -> None:
    stage, kind = s["stage"], s["kind"]
    if stage is not None:
        if stage not in TRAIN_STAGES:
            raise SystemsError(f"{where}: stage {stage!r} does not train systems (one of {TRAIN_STAGES})")
        if not isinstance(s["config"], str) or not s["config"]:
            raise SystemsError(f"{where}: a trained system needs `config` (a path, or a run.sh option such as "
                               f"--train_config)")
        if stage == FEWSHOT_STAGE and s["init"] is None:
            raise SystemsError(f"{where}: a few-shot system is fine-tuned from a trained one: set `init`")
        if s["init"] is not None:
            init = earlier.get(s["init"])
            if init is None or init["stage"] is None:
                raise SystemsError(f"{where}: init {s['init']!r} is not a trained system listed above it")
            if init["stage"] == FEWSHOT_STAGE or init["stage"] > stage:
                raise SystemsError(f"{where}: init {s['init']!r} is trained in stage {init['stage']}, not before "
                                   f"stage {stage}")
        if s["model"] is not None:
            raise SystemsError(f"{where}: `model` is for systems that decode another system's model; a trained "
                               f"system decodes its own")
    else:
        for k in ("config", "init", "train_args", "tasks"):
            if s[k] is not None:
                raise SystemsError(f"{where}: `{k}` needs `stage` (the stage that trains the system)")
    if s["tasks"] is not None:
        if stage != FEWSHOT_STAGE:
            raise SystemsError(f"{where}: `tasks` is for stage-{FEWSHOT_STAGE} systems (one model per task)")
        if isinstance(s["tasks"], str):
            s["tasks"] = s["tasks"].split()
        if not s["tasks"] or not all(isinstance(t, str) for t in s["tasks"]):
            raise SystemsError(f"{where}: `tasks` is a list of task names, e.g. [st]")
    if s["train_args"] is not None and not isinstance(s["train_args"], str):
        raise SystemsError(f"{where}: `train_args` is one string of trainer options")
    if kind is None:
        if s["label"] is not None or s["model"] is not None:
            raise SystemsError(f"{where}: `label` and `model` are for decoded systems: give it a `kind`")
        if stage is None:
            raise SystemsError(f"{where}: neither trained (`stage`) nor decoded (`kind`)")
        return
    if kind not in KINDS:
        raise SystemsError(f"{where}: kind {kind!r} is not one of {' | '.join(KINDS)}")
    if not isinstance(s["label"], str) or not s["label"].strip():
        raise SystemsError(f"{where}: a decoded system needs a `label` (its RESULTS.md row)")
    if kind == "gold":
        if stage is not None or s["model"] is not None:
            raise SystemsError(f"{where}: kind gold decodes the reference text: no stage and no model")
    elif stage is None and s["model"] is None:
        raise SystemsError(f"{where}: kind {kind} needs a trained model: a `stage` or a `model` system")


def per_task(systems: dict[str, dict], name: str) -> bool:
    return systems[name]["stage"] == FEWSHOT_STAGE


def decode_specs(systems: dict[str, dict], expdir: str = "exp") -> dict[str, dict]:
    """The decode config's ``systems`` (w2p.decode) of every decoded system: {name: {kind, exp, out, label}}.

    exp: the trained model's dir, exp/<model>, or exp/<name>/{task} for a few-shot system (one model per task);
    out: exp/<name>, the parent of its decode_<task>_<set>/ dirs."""
    out = {}
    for name, s in systems.items():
        if s["kind"] is None:
            continue
        spec = {"kind": s["kind"], "out": os.path.join(expdir, name), "label": s["label"]}
        if s["kind"] != "gold":
            model = s["model"] or name
            spec["exp"] = os.path.join(expdir, model)
            if per_task(systems, model):
                spec["exp"] = os.path.join(spec["exp"], "{task}")
        out[name] = spec
    return out


def systems_of(conf: dict, systems_config: str | None, expdir: str = "exp") -> dict[str, dict]:
    """The systems a decode/score run uses: the decode config's ``systems``, or, with ``systems_config``, those of
    the recipe's systems file (decode_specs). Never both: there is one list."""
    if not systems_config:
        return conf["systems"]
    if conf["systems"]:
        raise SystemExit(f"systems are listed both in the decode config ({', '.join(conf['systems'])}) and in "
                         f"{systems_config}: keep one list, remove `systems:` from the decode config")
    try:
        return decode_specs(load_systems(systems_config), expdir)
    except SystemsError as e:
        raise SystemExit(str(e)) from e


def stage_lines(systems: dict[str, dict], stage: int, path: str = "conf/systems.yaml") -> list[str]:
    """w2p.sh's view of the systems a stage trains: ``name config init tasks [train_args...]`` ('-' = none).

    A config that is a run.sh option (``--train_config``) is printed as such; w2p.sh substitutes its value."""
    lines = []
    for name, s in systems.items():
        if s["stage"] != stage:
            continue
        conf = s["config"]
        if not conf.startswith("--") and not os.path.isfile(conf):
            raise SystemsError(f"{path}: system {name!r}: config {conf} not found (paths are relative to the recipe "
                               f"dir)")
        fields = [name, conf, s["init"] or "-", ",".join(s["tasks"]) if s["tasks"] else "-"]
        if any(not f or any(c.isspace() for c in f) for f in fields):
            raise SystemsError(f"{path}: system {name!r}: config, init and tasks must not contain spaces")
        lines.append(" ".join(fields + ([s["train_args"]] if s["train_args"] else [])))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("systems_config", help="the recipe's systems file (conf/systems.yaml)")
    p.add_argument("--stage", type=int, required=True, choices=TRAIN_STAGES, help="list the systems this stage trains")
    p.add_argument("--names", action="store_true", help="print the names only")
    a = p.parse_args(argv)
    try:
        systems = load_systems(a.systems_config)
        if a.names:
            lines = [n for n, s in systems.items() if s["stage"] == a.stage]
        else:
            lines = stage_lines(systems, a.stage, a.systems_config)
    except SystemsError as e:
        print(f"w2p.bin.systems: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
