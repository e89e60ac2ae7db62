# Local corpus locations (override by exporting the variables before ./run.sh).
#   LIBRISPEECH   : holds train-clean-100/, dev-clean/, test-clean/ (<spk>/<chapter>/*.flac + *.trans.txt)
#   COVOST2       : holds covost_v2.en_fr.{train,dev,test}.tsv (columns path sentence translation client_id)
#   COVOST2_CLIPS : Common Voice English clips/*.mp3 referenced by the tsv
#   SLURP         : SLURP checkout, holds dataset/slurp/{train,devel,test}.jsonl
#   SLURP_AUDIO   : slurp_real/ audio (*.flac) referenced by recordings[].file
# Paths must not contain spaces.
LIBRISPEECH=${LIBRISPEECH:-downloads/LibriSpeech}
COVOST2=${COVOST2:-downloads/covost2}
COVOST2_CLIPS=${COVOST2_CLIPS:-${COVOST2}/clips}
SLURP=${SLURP:-downloads/slurp}
SLURP_AUDIO=${SLURP_AUDIO:-${SLURP}/audio/slurp_real}
