"""Recipe stage 3: cache the frozen LLM, tokenise every transcript with it, train the BPE model for CTC.

    python -m w2p.bin.prepare_llm --llm smollm2-135m --dump_dir dump/fbank --train_set train \\
        --bpe_dir data/lang/bpe --nbpe 500

Writes
  <cache>/llm/<name>/              converted safetensors LLM (once; see w2p.llm.resolve_llm)
  dump/fbank/<set>/llm_tokens      utt -> LLM token ids of the transcript (no special tokens): CIF/MSE targets
  data/lang/bpe/bpe.model, .vocab  sentencepiece model trained on the train transcripts; tokens.txt (id piece)
  dump/fbank/<set>/bpe_tokens      utt -> sentencepiece ids (0..nbpe-1, <unk> = 0; CTC models put the blank
                                   at index nbpe)
for every set under dump_dir that has a ``text`` file.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from w2p.errors import cli_main, positive_int

log = logging.getLogger("w2p.prepare_llm")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="w2p.bin.prepare_llm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="smollm2-135m", help="LLM source: smollm2-135m | HF dir | file.gguf")
    p.add_argument("--cache_root", default=None, help="LLM cache root (default <repo>/tools/cache/llm)")
    p.add_argument("--dump_dir", default="dump/fbank", help="parent of the per-set dump dirs")
    p.add_argument("--sets", nargs="*", default=None, help="sets to tokenise (default: all with a text file)")
    p.add_argument("--train_set", default="train", help="set whose transcripts train the BPE model")
    p.add_argument("--bpe_dir", default="data/lang/bpe", help="output dir of the sentencepiece model")
    p.add_argument("--nbpe", type=positive_int, default=500, help="BPE vocabulary size")
    p.add_argument("--bpe_type", default="bpe", choices=["bpe", "unigram", "char"],
                   help="sentencepiece model type (char: one piece per character; nbpe is then an upper bound)")
    p.add_argument("--no_bpe", action="store_true", help="skip the BPE model")
    return p


def train_bpe(text_file: str, bpe_dir: str, nbpe: int, model_type: str) -> str:
    import sentencepiece as spm

    from w2p.io import atomic_path, read_kv, write_atomic

    texts = list(read_kv(text_file).values())
    if not texts:
        raise ValueError(f"{text_file}: no transcripts to train the BPE model on")
    os.makedirs(bpe_dir, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix=".tmp-bpe-", dir=bpe_dir)
    corpus = os.path.join(tmpdir, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in texts)
    prefix = os.path.join(tmpdir, "bpe")
    opts = dict(input=corpus, model_prefix=prefix, vocab_size=nbpe, model_type=model_type, character_coverage=1.0,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, input_sentence_size=10_000_000,
                minloglevel=2, num_threads=1)
    try:
        spm.SentencePieceTrainer.train(**opts)
    except RuntimeError as e:
        if "Vocabulary size" not in str(e):
            raise
        # small corpora cannot fill a large vocabulary: let sentencepiece stop below nbpe
        log.warning("BPE: %s -> hard_vocab_limit=false", str(e).splitlines()[-1])
        spm.SentencePieceTrainer.train(**opts, hard_vocab_limit=False)
    for ext in ("model", "vocab"):
        with atomic_path(os.path.join(bpe_dir, f"bpe.{ext}")) as tmp:
            shutil.copyfile(f"{prefix}.{ext}", tmp)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(bpe_dir, "bpe.model"))
    write_atomic(os.path.join(bpe_dir, "tokens.txt"),
                 "".join(f"{i} {sp.id_to_piece(i)}\n" for i in range(sp.get_piece_size())))
    shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("BPE model %s/bpe.model: %d pieces (%s) from %d transcripts", bpe_dir, sp.get_piece_size(),
             model_type, len(texts))
    return os.path.join(bpe_dir, "bpe.model")


@cli_main
def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from transformers import AutoTokenizer

    from w2p.llm import resolve_llm
    from w2p.io import read_kv, write_kv_atomic

    path = resolve_llm(args.llm, args.cache_root)
    log.info("LLM %s cached at %s", args.llm, path)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    if not os.path.isdir(args.dump_dir):
        print(f"{args.dump_dir} not found: run stage 2 first", file=sys.stderr)
        return 1
    sets = args.sets or sorted(d for d in os.listdir(args.dump_dir)
                               if os.path.isfile(os.path.join(args.dump_dir, d, "text")))
    if not sets:
        print(f"no <set>/text under {args.dump_dir}: run stage 2 first", file=sys.stderr)
        return 1
    sp = None
    if not args.no_bpe:
        import sentencepiece as spm

        train_text = os.path.join(args.dump_dir, args.train_set, "text")
        if not os.path.isfile(train_text):
            print(f"{train_text} not found (needed for the BPE model)", file=sys.stderr)
            return 1
        sp = spm.SentencePieceProcessor(model_file=train_bpe(train_text, args.bpe_dir, args.nbpe, args.bpe_type))
    for s in sets:
        d = os.path.join(args.dump_dir, s)
        text = read_kv(os.path.join(d, "text"))
        empty = [u for u, t in text.items() if not t.strip()]
        if empty:
            raise ValueError(f"{d}/text: empty transcript for {empty[0]} (and {len(empty) - 1} more)")
        utts = sorted(text)
        ids = tok([text[u] for u in utts], add_special_tokens=False)["input_ids"]
        write_kv_atomic(os.path.join(d, "llm_tokens"), ((u, " ".join(map(str, i))) for u, i in zip(utts, ids)))
        n_tok = sum(len(i) for i in ids)
        msg = f"{s}: {len(utts)} utts, {n_tok} LLM tokens"
        if sp is not None:
            bpe = sp.encode([text[u] for u in utts])
            write_kv_atomic(os.path.join(d, "bpe_tokens"), ((u, " ".join(map(str, b))) for u, b in zip(utts, bpe)))
            msg += f", {sum(len(b) for b in bpe)} BPE tokens"
        log.info(msg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
