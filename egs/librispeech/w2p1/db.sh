# Local corpus locations (override by exporting the variables before ./run.sh). Exact layouts, what stage 0
# checks and the error for a wrong path: README.md, "Local corpora".
#   LIBRISPEECH   : holds train-clean-100/ (+ train-clean-360/, train-other-500/), dev-clean/, test-clean/
#                   (<spk>/<chapter>/*.flac + <spk>-<chapter>.trans.txt)
#   ST_CORPUS     : where the ST tasks come from: europarl_st (st = En->Fr, st_es = En->Es) or covost2 (st_de)
#   EUROPARL_ST   : Europarl-ST v1.1 root: en/audios/*.m4a, en/{fr,es}/{train,dev,test}/segments.{lst,en,fr|es}
#   COVOST2       : holds covost_v2.en_<lang>.{train,dev,test}.tsv (columns path sentence translation client_id)
#   COVOST2_CLIPS : Common Voice English clips/*.mp3 referenced by the tsv
#   SLURP         : SLURP checkout, holds dataset/slurp/{train,devel,test}.jsonl
#   SLURP_AUDIO   : slurp_real/ audio (*.flac) referenced by recordings[].file
#   SQQA, SQA     : optional spoken-QA sources (<dir>/{fewshot,test}.jsonl); empty = the task is skipped
# Paths must not contain spaces.
LIBRISPEECH=${LIBRISPEECH:-downloads/LibriSpeech}
ST_CORPUS=${ST_CORPUS:-europarl_st}
EUROPARL_ST=${EUROPARL_ST:-downloads/europarl-st/v1.1}
COVOST2=${COVOST2:-downloads/covost2}
COVOST2_CLIPS=${COVOST2_CLIPS:-${COVOST2}/clips}
SLURP=${SLURP:-downloads/slurp}
SLURP_AUDIO=${SLURP_AUDIO:-${SLURP}/audio/slurp_real}
SQQA=${SQQA:-}
SQA=${SQA:-}
