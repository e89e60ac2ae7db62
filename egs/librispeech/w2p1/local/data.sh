#!/usr/bin/env bash
# Corpus preparation of egs/librispeech (w2p.sh stages 0 and 1 call it with --stage N --stop_stage N):
#   stage 0: check that the local corpora named in db.sh exist (the error names the variable to fix);
#   stage 1: Kaldi-style ${datadir}/<set>/ from LibriSpeech, CoVoST 2 and SLURP (local/data_prep.py maps the sets).
set -e
set -u
set -o pipefail

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# shellcheck disable=SC1091
. ./db.sh

stage=0
stop_stage=1
# shellcheck disable=SC2034  # nj, seed: unused here (w2p.sh passes the same options to every recipe's local/data.sh)
nj=1
# shellcheck disable=SC2034
seed=0
max_utts=0           # cap every set (0 = all; for quick tests)
datadir=data
sets="train dev test st_fewshot st_test slu_fewshot slu_test"
python=python
fewshot_utts=300     # utterances of each <task>_fewshot set

usage() {
  echo "Usage: $0 [--stage ${stage}] [--stop_stage ${stop_stage}] [--max_utts ${max_utts}] [--datadir ${datadir}]"
  echo "       [--sets \"${sets}\"] [--fewshot_utts ${fewshot_utts}] [--python ${python}]"
  echo "Corpus paths come from db.sh: LIBRISPEECH=${LIBRISPEECH} COVOST2=${COVOST2} COVOST2_CLIPS=${COVOST2_CLIPS}"
  echo "  SLURP=${SLURP} SLURP_AUDIO=${SLURP_AUDIO}"
}

. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; usage >&2; exit 1; }

# shellcheck disable=SC1091
. ./path.sh

# shellcheck disable=SC2206
prep=(${python} local/data_prep.py --sets ${sets} --librispeech "${LIBRISPEECH}" --covost2 "${COVOST2}"
      --covost2_clips "${COVOST2_CLIPS}" --slurp "${SLURP}" --slurp_audio "${SLURP_AUDIO}"
      --fewshot_utts ${fewshot_utts} --max_utts ${max_utts})

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
  log "local/data.sh stage 0: check the local corpora named in db.sh"
  "${prep[@]}" --check_only
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "local/data.sh stage 1: data preparation -> ${datadir}/{$(echo ${sets} | tr ' ' ,)}"
  "${prep[@]}" --out ${datadir}
fi
