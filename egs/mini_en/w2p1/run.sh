#!/usr/bin/env bash
# mini_en: English synthesised by espeak-ng and flite (ASR; test_heldout by festival) + zero-shot ST/SLU/SQQA/SQA
# sets; runs offline on CPU.
set -e
set -u
set -o pipefail

./w2p.sh \
  --train_set train --valid_set dev --test_sets "test test_heldout" \
  --tasks "st slu sqqa sqa" \
  --llm smollm2-135m \
  --systems_config conf/systems.yaml \
  --nbpe 100 --bpe_type char \
  --nproc 2 \
  --train_config conf/train_wav2prompt.yaml --ce_config conf/train_wav2prompt_ce.yaml \
  --fewshot_config conf/finetune_fewshot.yaml \
  --decode_config conf/decode.yaml \
  "$@"
