#!/usr/bin/env bash
# LibriSpeech (ASR training) with zero-shot ST on CoVoST 2 En->Fr and SLU on SLURP (local copies, see db.sh).
set -e
set -u
set -o pipefail

. ./db.sh

./w2p.sh \
  --corpus librispeech \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "st slu" \
  --local_data_opts "--librispeech ${LIBRISPEECH} --covost2 ${COVOST2} --covost2_clips ${COVOST2_CLIPS} --slurp ${SLURP} --slurp_audio ${SLURP_AUDIO}" \
  --llm smollm2-135m \
  --train_config conf/train_wav2prompt.yaml \
  --asr_config conf/train_asr_ctc.yaml \
  --encllm_config conf/train_encoder_llm.yaml \
  --nomse_config conf/train_wav2prompt_nomse.yaml \
  --fewshot_config conf/finetune_fewshot.yaml \
  --decode_config conf/decode.yaml \
  "$@"
