#!/usr/bin/env bash
# LibriSpeech (ASR training of the speech side) with zero-shot / few-shot tasks from local corpora named in db.sh:
# ST En->Fr and En->Es from Europarl-ST (or En->De from CoVoST 2: ST_CORPUS=covost2), SLU from SLURP, and SQQA/SQA
# when a local source is set. Paper-scale configs (GPU, a 7B LLM given by path: conf/*.yaml); the CPU smoke set that
# the test suite runs on fixture corpora: conf/tuning/*smoke*.yaml (README).
set -e
set -u
set -o pipefail

# shellcheck disable=SC1091
. ./db.sh
case ${ST_CORPUS} in
  europarl_st) tasks="st st_es" ;;
  covost2) tasks="st_de" ;;
  *) echo "$0: db.sh: ST_CORPUS=${ST_CORPUS}: expected europarl_st or covost2" >&2; exit 1 ;;
esac
tasks+=" slu"
for t in sqqa sqa; do
  v=${t^^}
  if [ -n "${!v}" ]; then
    tasks+=" ${t}"
  else
    echo "$(date '+%Y-%m-%dT%H:%M:%S') (run.sh) ${v} is not set in db.sh: task ${t} skipped (no local source)"
  fi
done

./w2p.sh \
  --train_set train --valid_set dev --test_sets "test" \
  --tasks "${tasks}" \
  --llm /path/to/bloomz-7b1 \
  --ngpu 1 \
  --systems_config conf/systems.yaml \
  --nbpe 5000 --bpe_type bpe \
  --train_config conf/train_wav2prompt.yaml --ce_config conf/train_wav2prompt_ce.yaml \
  --fewshot_config conf/finetune_fewshot.yaml \
  --decode_config conf/decode.yaml \
  "$@"
