"""Run a packed Wav2Prompt model on audio: zero-shot tasks through the frozen LLM.

  python -m w2p.bin.infer --model exp/packed --task st --wav a.wav [--wav b.wav]
  python -m w2p.bin.infer --model exp/packed --task sqa --wav a.wav --question "What colour is the box?"
  python -m w2p.bin.infer --model exp/packed --task slu --intents set_alarm,play_music --wav_scp wav.scp
  python -m w2p.bin.infer --model exp/packed --template "Summarise in three words: {speech}" --wav a.wav

Output: one line per utterance, "<utt> <answer>" (utt = wav.scp key, or the wav path).
Tasks: asr (repeat), st (to French), slu (intent from --intents), sqqa (spoken question), sqa (needs --question).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from w2p.errors import cli_main, positive_float, positive_int


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model dir (w2p.bin.pack_model / recipe stage 10)")
    p.add_argument("--task", default="asr", help="asr | st | slu | sqqa | sqa (ignored with --template)")
    p.add_argument("--template", default=None, help="custom prompt with a {speech} placeholder (+ {question} ...)")
    p.add_argument("--wav", action="append", default=[], help="audio file (repeatable)")
    p.add_argument("--wav_scp", default=None, help="Kaldi wav.scp (utt path) to read audio from")
    p.add_argument("--question", default=None, help="{question} for sqa / custom templates")
    p.add_argument("--intents", default=None, help="comma-separated intent labels for slu, or a file, one per line")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="any other template variable (repeatable)")
    p.add_argument("--beam", type=positive_int, default=None, help="beam width (default: the pack's decode.json)")
    p.add_argument("--repetition_penalty", type=positive_float, default=None, help="1.0 = none")
    p.add_argument("--max_new_tokens", type=positive_int, default=None)
    p.add_argument("--llm", default=None, help="override the LLM named in the packed llm.json")
    p.add_argument("--batch_size", type=positive_int, default=8)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    return p


def read_wav_scp(path: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: wav.scp not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise SystemExit(f"{path}:{n}: expected '<utt> <wav path>', got {line.strip()!r}")
            if parts[1].strip().endswith("|"):
                raise SystemExit(f"{path}:{n}: piped wav.scp commands are not supported; give file paths")
            out.append((parts[0], parts[1].strip()))
    return out


@cli_main
def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    items = [(w, w) for w in args.wav]
    if args.wav_scp:
        items += read_wav_scp(args.wav_scp)
    if not items:
        raise SystemExit("no audio: give --wav a.wav (repeatable) or --wav_scp wav.scp")
    from w2p.tasks import check_template, get_task

    fields = {}
    if args.question is not None:
        fields["question"] = args.question
    if args.intents is not None:
        if os.path.isfile(args.intents):
            with open(args.intents, encoding="utf-8") as f:
                fields["intents"] = [x.strip() for x in f if x.strip()]
        elif "," not in args.intents and (os.sep in args.intents or args.intents.endswith((".txt", ".list"))):
            raise SystemExit(f"error: --intents {args.intents}: file not found (give a file of labels, one per "
                             "line, or comma-separated labels)")
        else:
            fields["intents"] = [x.strip() for x in args.intents.split(",") if x.strip()]
    for kv in args.var:
        if "=" not in kv:
            raise SystemExit(f"--var {kv!r}: expected NAME=VALUE")
        k, v = kv.split("=", 1)
        fields[k] = v
    # fail fast on bad task / template before loading anything heavy
    try:
        if args.template:
            check_template(args.template, given=list(fields))
        else:
            t = get_task(args.task)
            if t.mode != "choice":
                check_template(t.template, given=list(fields))
            elif "intents" not in fields:
                raise ValueError(f"task {args.task} needs --intents (comma-separated labels or a file)")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}, but this torch sees no CUDA device (a CPU-only torch?); "
                         "use --device cpu")
    from w2p.data.audio import AudioError
    from w2p.infer import Wav2PromptPipeline

    try:
        # stdout carries one line per utterance: libraries' notices while loading go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            pipe = Wav2PromptPipeline.from_pretrained(args.model, llm_source=args.llm, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    for s in range(0, len(items), args.batch_size):
        chunk = items[s:s + args.batch_size]
        try:
            out = pipe.generate([w for _, w in chunk], task=None if args.template else args.task,
                                template=args.template, beam=args.beam, repetition_penalty=args.repetition_penalty,
                                max_new_tokens=args.max_new_tokens, **fields)
        except (AudioError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
        for (utt, _), o in zip(chunk, out):
            print(utt, " ".join(o.split()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
