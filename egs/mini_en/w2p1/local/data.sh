#!/usr/bin/env bash
# Corpus preparation of egs/mini_en (w2p.sh stages 0 and 1 call it with --stage N --stop_stage N):
#   stage 0: synthesise the mini_en corpus (espeak-ng and flite; test_heldout: festival) into ${corpus_dir}
#            (w2p.synth.make_corpus, nj jobs);
#   stage 1: Kaldi-style ${datadir}/<set>/ from its manifests (local/data_prep.py).
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
nj=1                 # parallel synthesis jobs
seed=0               # the corpus is a function of the seed (texts, voices)
max_utts=0           # cap every set (0 = full corpus; for quick tests)
engines=espeak,flite # synthesis engines of every set but test_heldout (espeak alone: the pre-issue-20 corpus)
open_vocab=0         # fraction of train drawn from WordNet example sentences (0 = off; needs apt wordnet-base)
heldout=300          # size of the test_heldout set (0 = none): new sentences and words, spoken by ${heldout_engines}
heldout_engines=festival  # engines of test_heldout only, none of them in ${engines} (leave-one-engine-out)
datadir=data
sets="train dev test"
optional_sets=""     # prepared when the corpus has them (w2p.sh: <task>_<set> for every further test set)
python=python
corpus_dir=${MINI_EN}   # where stage 0 writes wav/<set>/*.wav + <set>.jsonl manifests (db.sh)

usage() {
  echo "Usage: $0 [--stage ${stage}] [--stop_stage ${stop_stage}] [--nj ${nj}] [--seed ${seed}] [--max_utts ${max_utts}]"
  echo "       [--datadir ${datadir}] [--sets \"${sets}\"] [--optional_sets \"${optional_sets}\"]"
  echo "       [--corpus_dir ${corpus_dir}] [--python ${python}]"
  echo "       [--engines ${engines}] [--open_vocab ${open_vocab}] [--heldout ${heldout}]"
  echo "       [--heldout_engines ${heldout_engines}]   (list test_heldout in the sets to prepare it in stage 1;"
  echo "       sqqa_test_heldout comes with it through --optional_sets)"
}

. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; usage >&2; exit 1; }

# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. ./cmd.sh

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
  log "local/data.sh stage 0: synthesise the mini_en corpus with ${engines} into ${corpus_dir} (nj=${nj})"
  ${cmd} JOB=1:${nj} ${corpus_dir}/log/synth.JOB.log \
    ${python} -m w2p.synth.make_corpus --corpus ${corpus_dir} --seed ${seed} --max_utts ${max_utts} \
      --engines ${engines} --open_vocab ${open_vocab} --heldout ${heldout} --heldout_engines ${heldout_engines} \
      --nj ${nj} --job JOB
  ${python} -m w2p.synth.make_corpus --corpus ${corpus_dir} --seed ${seed} --max_utts ${max_utts} \
    --engines ${engines} --open_vocab ${open_vocab} --heldout ${heldout} --heldout_engines ${heldout_engines} \
    --finalize
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "local/data.sh stage 1: ${corpus_dir} manifests -> ${datadir}/{$(echo ${sets} | tr ' ' ,)}"
  if [ ! -f "${corpus_dir}/stats.json" ]; then
    echo "$0: ${corpus_dir}/stats.json missing: the corpus is not synthesised; run stage 0 first" >&2; exit 1
  fi
  # shellcheck disable=SC2086
  ${python} local/data_prep.py --src ${corpus_dir} --out ${datadir} --sets ${sets} --optional_sets ${optional_sets}
fi
