#!/usr/bin/env bash
# Corpus preparation of egs/librispeech (w2p.sh stages 0 and 1 call it with --stage N --stop_stage N):
#   stage 0: check that the local corpora named in db.sh exist (the error names the variable to fix);
#   stage 1: Kaldi-style ${datadir}/<set>/ from LibriSpeech, Europarl-ST or CoVoST 2, SLURP and the optional
#            spoken-QA sources (local/data_prep.py maps the sets; README "Local corpora").
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
sets="train dev test st_fewshot st_test st_es_fewshot st_es_test slu_fewshot slu_test"
optional_sets=""     # w2p.sh: <task>_<set> of further test sets, prepared if the corpus has them (these have none)
python=python
fewshot_utts=300     # utterances of each <task>_fewshot set
train_subsets="train-clean-100"   # LibriSpeech training subsets; 960 h: "train-clean-100 train-clean-360 train-other-500"
max_skip_frac=0.1    # a set that would skip more than this fraction of its utterances stops with the list

usage() {
  echo "Usage: $0 [--stage ${stage}] [--stop_stage ${stop_stage}] [--max_utts ${max_utts}] [--datadir ${datadir}]"
  echo "       [--sets \"${sets}\"] [--optional_sets \"${optional_sets}\"] [--fewshot_utts ${fewshot_utts}]"
  echo "       [--python ${python}] [--train_subsets \"${train_subsets}\"] [--max_skip_frac ${max_skip_frac}]"
  echo "Corpus paths come from db.sh: LIBRISPEECH=${LIBRISPEECH} ST_CORPUS=${ST_CORPUS} EUROPARL_ST=${EUROPARL_ST}"
  echo "  COVOST2=${COVOST2} COVOST2_CLIPS=${COVOST2_CLIPS} SLURP=${SLURP} SLURP_AUDIO=${SLURP_AUDIO}"
  echo "  SQQA=${SQQA} SQA=${SQA}"
}

. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; usage >&2; exit 1; }

# shellcheck disable=SC1091
. ./path.sh

# shellcheck disable=SC2206
prep=(${python} local/data_prep.py --sets ${sets} --librispeech "${LIBRISPEECH}" --train_subsets "${train_subsets}"
      --st_corpus "${ST_CORPUS}" --europarl_st "${EUROPARL_ST}" --covost2 "${COVOST2}"
      --covost2_clips "${COVOST2_CLIPS}" --slurp "${SLURP}" --slurp_audio "${SLURP_AUDIO}"
      --sqqa "${SQQA}" --sqa "${SQA}"
      --fewshot_utts ${fewshot_utts} --max_utts ${max_utts} --max_skip_frac ${max_skip_frac})

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
  log "local/data.sh stage 0: check the local corpora named in db.sh"
  "${prep[@]}" --check_only
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "local/data.sh stage 1: data preparation -> ${datadir}/{$(echo ${sets} | tr ' ' ,)}"
  "${prep[@]}" --out ${datadir}
  [ -z "${optional_sets// /}" ] || log "no local corpus has the sets ${optional_sets}: not prepared"
fi
