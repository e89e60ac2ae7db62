#!/usr/bin/env bash
# LibriSpeech (ASR training) with zero-shot ST on CoVoST 2 En->Fr and SLU on SLURP (local copies named in db.sh;
# local/data.sh checks and prepares them).
set -e
set -u
set -o pipefail

./w2p.sh \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "st slu" \
  --llm smollm2-135m \
  --systems_config conf/systems.yaml \
  --train_config conf/train_wav2prompt.yaml \
  --fewshot_config conf/finetune_fewshot.yaml \
  --decode_config conf/decode.yaml \
  "$@"
