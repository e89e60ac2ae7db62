#!/usr/bin/env bash
# Wav2Prompt recipe template (ESPnet style). Recipes call it from egs/<recipe>/w2p1/run.sh.
# Stages 0-1 run the recipe's own local/data.sh (its corpora); every other stage is a `log` line plus Python entry
# points under w2p/bin (jobs go through ${cmd}); stages 4-9 take their systems from the recipe's conf/systems.yaml.
# Stage blocks are delimited by "# Stage N:" headers; owners replace only their block's body.
set -e
set -u
set -o pipefail

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
SECONDS=0

# ----------------------------------------------------------------------------- options
# General
stage=0              # first stage to run
stop_stage=10000     # last stage to run
nj=2                 # parallel jobs for corpus synthesis / feature extraction
nproc=1              # CPU threads per training/decoding process
ngpu=0               # GPUs per training job and node (0 = CPU)
num_nodes=1          # nodes per training job (> 1: cmd_backend=slurm; one torchrun per node, see utils/slurm.pl)
seed=0               # global seed (corpus generation, training)
python=python        # python of tools/venv (path.sh activates it)

# Corpus / data (stages 0-1 run the recipe's local/data.sh: the corpus is the recipe's business)
max_utts=0           # cap every set at this many utterances (0 = full corpus; for quick tests)
datadir=data         # Kaldi-style data dirs data/<set>
dumpdir=dump         # features: ${dumpdir}/fbank/<set>
expdir=exp           # experiments
train_set=train
valid_set=dev
test_sets="test"
tasks="st slu sqqa sqa"   # zero-shot tasks; sets <task>_fewshot and <task>_test
resample=true        # resample audio that is not 16 kHz (false: such files are errors)
feats_type=fbank     # stage 2: fbank (features dumped) | raw (audio references; fbank computed on the fly)
augment_config=""    # stage 2: augment ${train_set} into ${train_set}_aug, trained on instead ("" = none; w2p.augment)
local_data_opts=""   # extra options for local/data.sh (e.g. mini_en: "--corpus_dir corpus")

# LLM and systems (used by stages 3-10)
llm=smollm2-135m     # frozen LLM: name or local path (w2p.llm.resolve_llm)
systems_config=conf/systems.yaml          # the systems stages 4-9 train, decode and score (w2p.bin.systems)
train_config=conf/train_wav2prompt.yaml   # Wav2Prompt (stage 4; systems.yaml: config --train_config)
ce_config=""         # stage 4 CE phase, laid over train_config: + the frozen LLM's cross-entropy ("" = none)
fewshot_config=conf/finetune_fewshot.yaml # few-shot fine-tuning (stage 7; systems.yaml: config --fewshot_config)
decode_config=conf/decode.yaml            # decoding and scoring settings (stages 6, 8, 9)
nbpe=500
bpe_type=bpe       # sentencepiece type of the CTC units: bpe | unigram | char

# --help: a function, so that it shows the values in force when --help is parsed (run.sh passes the recipe's own
# options before "$@"), not only the defaults above
usage() {
  local o='  %-44s %s\n'
  echo "Usage: $0 [options]"
  echo "Stages: 0 corpus | 1 data prep | 2 fbank+cmvn | 3 LLM prep | 4 Wav2Prompt training | 5 baselines"
  echo "        6 zero-shot decoding | 7 few-shot fine-tuning | 8 few-shot decoding | 9 scoring | 10 pack model"
  echo "Options (the values this recipe passes, else the template defaults):"
  # shellcheck disable=SC2059
  {
  printf "$o" "--stage ${stage}" "first stage"
  printf "$o" "--stop_stage ${stop_stage}" "last stage"
  printf "$o" "--nj ${nj}" "parallel jobs (corpus, features)"
  printf "$o" "--nproc ${nproc}" "CPU threads per process"
  printf "$o" "--ngpu ${ngpu}" "GPUs per node for training (0 = CPU)"
  printf "$o" "--num_nodes ${num_nodes}" "nodes per training job (> 1: Slurm, utils/slurm.pl)"
  printf "$o" "--seed ${seed}" "global seed"
  printf "$o" "--max_utts ${max_utts}" "cap each set (0 = full; for quick tests)"
  printf "$o" "--datadir ${datadir}" "Kaldi-style data dirs <datadir>/<set>"
  printf "$o" "--dumpdir ${dumpdir}" "features <dumpdir>/fbank/<set>"
  printf "$o" "--expdir ${expdir}" "experiments: system X in <expdir>/X"
  printf "$o" "--train_set ${train_set}" "training set"
  printf "$o" "--valid_set ${valid_set}" "validation set"
  printf "$o" "--test_sets \"${test_sets}\"" "ASR test sets (each further set S: + the corpus' <task>_S)"
  printf "$o" "--tasks \"${tasks}\"" "zero-shot tasks (sets <task>_fewshot, <task>_test)"
  printf "$o" "--resample ${resample}" "resample non-16 kHz audio (false: error)"
  printf "$o" "--feats_type ${feats_type}" "stage 2: fbank (dump features) | raw (fbank on the fly)"
  printf "$o" "--augment_config \"${augment_config}\"" "stage 2: train on ${train_set}_aug (speed/noise/reverb)"
  printf "$o" "--local_data_opts \"${local_data_opts}\"" "extra options for local/data.sh (stages 0-1)"
  printf "$o" "--llm ${llm}" "frozen LLM"
  printf "$o" "--systems_config ${systems_config}" "the systems of stages 4-9 (trained, decoded, scored)"
  printf "$o" "--train_config ${train_config}" "Wav2Prompt (stage 4)"
  printf "$o" "--ce_config \"${ce_config}\"" "laid over train_config: stage 4's CE phase (\"\" = none)"
  printf "$o" "--fewshot_config ${fewshot_config}" "few-shot fine-tuning (stage 7)"
  printf "$o" "--decode_config ${decode_config}" "decoding and scoring (stages 6, 8, 9)"
  printf "$o" "--nbpe ${nbpe}" "BPE size for the CTC units (an upper bound for --bpe_type char)"
  printf "$o" "--bpe_type ${bpe_type}" "sentencepiece type of the CTC units (bpe | unigram | char)"
  }
}

cmdline="$0 $*"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC1091
. "${here}/utils/parse_options.sh"
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; usage >&2; exit 1; }
log "${cmdline}"

# shellcheck disable=SC1091
. ./path.sh
# shellcheck disable=SC1091
. ./cmd.sh

task_sets=""; task_tests=""; task_map=""
for t in ${tasks}; do task_sets+="${t}_fewshot ${t}_test "; task_tests+="${t}_test "; task_map+="--tasks.${t} ${t}_test "; done
# shellcheck disable=SC2086
task_csv=$(echo ${tasks} | tr " " ,)   # stages 6 and 9: the --tasks list for w2p.bin.decode / w2p.bin.score
# Task T on every test set S after the first: the set T_S (the rule <task>_<test set>), where the corpus has one
# (mini_en --heldout: sqqa_test_heldout). Stage 1 prepares those the corpus has; stages 2-6 take those there.
optional_sets=""; n_test=0
for s in ${test_sets}; do
  n_test=$((n_test + 1)); [ ${n_test} -gt 1 ] || continue
  for t in ${tasks}; do optional_sets+="${t}_${s} "; done
done
present_sets() {  # those of ${optional_sets} with a dir under $1
  local s
  for s in ${optional_sets}; do if [ -d "$1/${s}" ]; then echo -n "${s} "; fi; done
}
asr_sets="${train_set} ${valid_set} ${test_sets}"
all_sets="${asr_sets} ${task_sets}"
data_sets=${all_sets}  # what stage 1 writes
if [ -n "${augment_config}" ]; then  # stage 2 writes ${train_set}_aug from it; stages 2- use it in its place
  train_src=${train_set}
  train_set=${train_set}_aug
  all_sets="${train_set} ${valid_set} ${test_sets} ${task_sets}"
fi
fbankdir=${dumpdir}/fbank

# Validate data dirs (kind data|dump); $1 = hint naming the stage that makes them.
validate() {
  local kind=$1 hint=$2; shift 2
  local dirs=()
  for s in "$@"; do dirs+=("$s"); done
  ${python} -m w2p.bin.validate_data_dir --kind "${kind}" --hint "${hint}" "${dirs[@]}" >/dev/null
}
prefixed() { local p=$1; shift; for s in "$@"; do echo -n "${p}/${s} "; done; }
# Systems (stages 4-9): ${systems_config} is the one list, read through w2p.bin.systems; system X lives in
# ${expdir}/X. systems_of N: the systems stage N trains, one line each: name config init tasks [train_args...]
# ('-' = none), in file order (an init before its users).
systems_of() { ${python} -m w2p.bin.systems ${systems_config} --stage "$1"; }
# A config given as a run.sh option in the systems file (--train_config) -> the option's value.
config_path() {
  case $1 in
    --*) local v=${1#--}
         if ! [[ ${v} =~ ^[a-z_]+_config$ ]] || ! declare -p "${v}" >/dev/null 2>&1; then
           echo "$0: ${systems_config}: config $1 is not a run.sh option (--*_config)" >&2; exit 1
         fi
         echo "${!v}" ;;
    *) echo "$1" ;;
  esac
}
# Train one system with w2p.bin.train on the ASR data: train_system <exp dir> <config> [trainer options...]
train_system() {
  local out=$1 conf=$2; shift 2
  # --resume: a killed run continues from its last checkpoint (a finished one only re-averages)
  ${train_cmd} ${train_res} ${out}/log/train.run.log ${python} -m w2p.bin.train --config ${conf} --llm ${llm} \
    --train_dir ${fbankdir}/${train_set} --valid_dir ${fbankdir}/${valid_set} --output_dir ${out} \
    --num_threads ${nproc} --ngpu ${ngpu} --num_nodes ${num_nodes} --resume "$@"
}
# what a training job asks the queue for (slurm.pl: --gres=gpu:${ngpu} on each of ${num_nodes} nodes; run.pl
# ignores it)
train_res="--gpu ${ngpu} --num_nodes ${num_nodes}"
device=$([ ${ngpu} -gt 0 ] && echo cuda || echo cpu)
# Stages 0-1: the recipe's own corpus preparation, local/data.sh (the template knows no corpus). Every recipe's
# script takes these options (--sets: to prepare; --optional_sets: to prepare if its corpus has them, else skip);
# ${local_data_opts} come last, so they can add or override.
local_data() {
  [ -x local/data.sh ] || {
    echo "$0: $(pwd)/local/data.sh missing or not executable: a recipe prepares its corpus there (stages 0-1;" \
      "see egs/mini_en/w2p1/local/data.sh)" >&2; exit 1; }
  # shellcheck disable=SC2086
  local/data.sh "$@" --nj ${nj} --seed ${seed} --max_utts ${max_utts} --datadir ${datadir} --sets "${data_sets}" \
    --optional_sets "${optional_sets}" --python ${python} ${local_data_opts}
}

# ============================================================================ Stage 0: corpus
if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
  log "Stage 0: corpus (local/data.sh stage 0: synthesise it, or check the local corpora named in db.sh)"
  local_data --stage 0 --stop_stage 0
fi

# ============================================================================ Stage 1: data prep
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
  log "Stage 1: data preparation (local/data.sh stage 1) -> ${datadir}/{$(echo ${data_sets} | tr ' ' ,)}"
  [ -z "${optional_sets}" ] || log "  + those of ${optional_sets% } that the corpus has"
  local_data --stage 1 --stop_stage 1
  # shellcheck disable=SC2046
  validate data "local/data.sh stage 1 wrote an invalid data dir" $(prefixed ${datadir} ${data_sets} \
    $(present_sets ${datadir}))
fi

# ============================================================================ Stage 2: fbank + CMVN
if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
  log "Stage 2: 80-dim fbank (feats_type ${feats_type}) -> ${fbankdir}/<set> (nj=${nj}), global CMVN ->" \
    "${fbankdir}/${train_set}/cmvn.npz"
  if [ -n "${augment_config}" ]; then
    log "Stage 2: augmenting ${datadir}/${train_src} -> ${datadir}/${train_set} (${augment_config}, nj=${nj})"
    validate data "run stage 1 (data prep) first" ${datadir}/${train_src}
    ${cmd} JOB=1:${nj} ${fbankdir}/log/augment.JOB.log ${python} -m w2p.bin.augment_data_dir \
      --src ${datadir}/${train_src} --dst ${datadir}/${train_set} --config ${augment_config} --seed ${seed} \
      --nj ${nj} --job JOB
    ${python} -m w2p.bin.augment_data_dir --src ${datadir}/${train_src} --dst ${datadir}/${train_set} \
      --config ${augment_config} --seed ${seed} --finalize
  fi
  dump_sets="${all_sets} $(present_sets ${datadir})"  # + the tasks' sets on further test sets stage 1 prepared
  # shellcheck disable=SC2046
  validate data "run stage 1 (data prep) first" $(prefixed ${datadir} ${dump_sets})
  # fbank: each job dumps features of its share; raw: each job reads only its files' headers (frame counts), and
  # the loaders compute the same fbank from the audio (no feature dump for a 960 h corpus)
  ${cmd} JOB=1:${nj} ${fbankdir}/log/fbank.JOB.log \
    ${python} -m w2p.bin.make_fbank --data_dir ${datadir} --dump_dir ${fbankdir} --sets ${dump_sets} \
      --nj ${nj} --job JOB --resample ${resample} --feats_type ${feats_type}
  # merge the shards, validate every dump dir, global CMVN stats (count, sum, sum_square) of the training set
  # (raw: of a sample of up to 5000 utterances, all of a smaller set)
  ${python} -m w2p.bin.make_fbank --data_dir ${datadir} --dump_dir ${fbankdir} --sets ${dump_sets} --nj ${nj} \
    --merge --cmvn_set ${train_set} --feats_type ${feats_type}
fi

# ============================================================================ Stage 3: LLM prep
if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
  log "Stage 3: LLM prep (${llm}): cache, tokenise transcripts, BPE for CTC"
  llm_sets="${all_sets} $(present_sets ${fbankdir})"
  # shellcheck disable=SC2046
  validate dump "run stage 2 (features) first" $(prefixed ${fbankdir} ${llm_sets})
  # converts the LLM once into tools/cache/llm/<name>/; writes <set>/llm_tokens (+ bpe_tokens), data/lang/bpe/
  ${python} -m w2p.bin.prepare_llm --llm ${llm} --dump_dir ${fbankdir} --sets ${llm_sets} \
    --train_set ${train_set} --bpe_dir ${datadir}/lang/bpe --nbpe ${nbpe} --bpe_type ${bpe_type}
fi

# ============================================================================ Stage 4: Wav2Prompt training
if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
  validate dump "run stages 2-3 first" ${fbankdir}/${train_set} ${fbankdir}/${valid_set}
  lines=$(systems_of 4)
  # shellcheck disable=SC2034
  while read -r -u 3 name conf init _tasks targs; do
    [ -n "${name}" ] || continue  # a stage without systems
    conf=$(config_path ${conf})
    log "Stage 4: Wav2Prompt training: ${name} (${conf})"
    w2p_exp=${expdir}/${name}
    init_opt=""; [ "${init}" = - ] || init_opt="--init ${expdir}/${init}/model.pt"
    # With a CE phase, the embedding-regression model goes to ${name}_pre and the CE phase (the same architecture:
    # ${ce_config} is laid over ${conf}) continues from it into ${w2p_exp}, the system of later stages.
    pre_exp=${w2p_exp}; readout_exps=${w2p_exp}
    [ -n "${ce_config}" ] && { pre_exp=${expdir}/${name}_pre; readout_exps="${pre_exp} ${w2p_exp}"; }
    # shellcheck disable=SC2086
    train_system ${pre_exp} ${conf} ${init_opt} ${targs}
    if [ -n "${ce_config}" ]; then
      log "  CE phase (${conf} + ${ce_config}) from ${pre_exp} -> ${w2p_exp}"
      # shellcheck disable=SC2086
      train_system ${w2p_exp} ${conf} --config ${ce_config} --init ${pre_exp}/model.pt ${targs}
    fi
    for s in ${test_sets}; do
      for e in ${readout_exps}; do
        log "  readout (what the LLM hears) of ${e} on ${s} -> ${e}/readout_${s}/scores.json"
        ${python} -m w2p.bin.readout --model_dir ${e} --data_dir ${fbankdir}/${s} --llm ${llm} \
          --num_threads ${nproc} >/dev/null
      done
    done
  done 3<<< "${lines}"
fi

# ============================================================================ Stage 5: baselines
if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
  log "Stage 5: baselines (the stage-5 systems of ${systems_config})"
  validate dump "run stages 2-3 first" ${fbankdir}/${train_set} ${fbankdir}/${valid_set}
  lines=$(systems_of 5)
  # shellcheck disable=SC2034
  while read -r -u 3 name conf init _tasks targs; do
    [ -n "${name}" ] || continue  # a stage without systems
    conf=$(config_path ${conf})
    init_opt=""; [ "${init}" = - ] || init_opt="--init ${expdir}/${init}/model.pt"
    log "  train ${name} (${conf}) ${init_opt} ${targs}"
    # shellcheck disable=SC2086
    train_system ${expdir}/${name} ${conf} ${init_opt} ${targs}
  done 3<<< "${lines}"
fi

# ============================================================================ Stage 6: zero-shot decoding
if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
  log "Stage 6: zero-shot decoding of every system of ${systems_config}: tasks '${tasks}' (task T on T_test)," \
    "ASR on '${test_sets}'"
  # shellcheck disable=SC2046
  validate dump "run stage 2 first" $(prefixed ${fbankdir} ${test_sets} ${task_tests} $(present_sets ${fbankdir}))
  # beam, caps: ${decode_config}; systems: ${systems_config} (all but the few-shot ones); which tasks and sets:
  # --tasks / --test_sets (${decode_config}'s own task list is only the default of w2p.bin.decode run by hand).
  # The first ASR test set is decoded with the tasks (one LLM load); every further one S on its own, with each
  # task T whose set T_S was dumped (-> <system>/decode_T_T_S/).
  decode_zero() {
    local logname=$1 tlist=$2; shift 2
    # shellcheck disable=SC2086
    ${decode_cmd} ${expdir}/decode/log/${logname}.log ${python} -m w2p.bin.decode --config ${decode_config} \
      --systems_config ${systems_config} --expdir ${expdir} --dump_dir ${fbankdir} --llm ${llm} \
      --num_threads ${nproc} --device ${device} --tasks ${tlist} ${task_map} "$@"
  }
  if [ -z "${test_sets// /}" ]; then
    [ -z "${tasks// /}" ] || decode_zero decode "${task_csv}"
  else
    first=true
    for s in ${test_sets}; do
      if ${first}; then
        decode_zero decode "asr${task_csv:+,${task_csv}}" --tasks.asr ${s}; first=false
      else
        tlist=asr; tmap=""; absent=""
        for t in ${tasks}; do
          if [ -d ${fbankdir}/${t}_${s} ]; then
            tlist+=",${t}"; tmap+="--tasks.${t} ${t}_${s} "
          else
            absent+=" ${t}_${s}"
          fi
        done
        log "  ${s}: tasks ${tlist}${absent:+ (not dumped, so not decoded:${absent})}"
        # shellcheck disable=SC2086
        decode_zero decode_${s} ${tlist} --tasks.asr ${s} ${tmap}
      fi
    done
  fi
fi

# ============================================================================ Stage 7: few-shot fine-tuning
if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ]; then
  log "Stage 7: few-shot fine-tuning (the stage-7 systems of ${systems_config})"
  # shellcheck disable=SC2046
  validate dump "run stage 2 first" $(for t in ${tasks}; do echo -n "${fbankdir}/${t}_fewshot "; done)
  # One model per system and task, fine-tuned from its init system on the task's <task>_fewshot set (same cost as
  # one model on the union: every utterance is seen once per epoch) -> ${expdir}/<system>/<task>. A system with
  # `tasks` in the systems file is fine-tuned on those tasks only.
  lines=$(systems_of 7)
  for t in ${tasks}; do
    while read -r -u 3 name conf init only targs; do
      [ -n "${name}" ] || continue
      [ "${only}" = - ] || [[ ",${only}," == *",${t},"* ]] || continue
      conf=$(config_path ${conf})
      log "  fine-tune ${name}/${t} (${conf}) from ${expdir}/${init} ${targs}"
      # shellcheck disable=SC2086
      ${train_cmd} ${train_res} ${expdir}/${name}/${t}/log/finetune.log ${python} -m w2p.bin.finetune \
        --config ${conf} --init_exp ${expdir}/${init} --train_sets ${fbankdir}/${t}_fewshot \
        --output_dir ${expdir}/${name}/${t} --llm ${llm} --num_threads ${nproc} --ngpu ${ngpu} \
        --num_nodes ${num_nodes} --resume ${targs}
    done 3<<< "${lines}"
  done
fi

# ============================================================================ Stage 8: few-shot decoding
if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ]; then
  log "Stage 8: decoding of the fine-tuned models"
  # shellcheck disable=SC2046
  validate dump "run stage 2 first" $(for t in ${tasks}; do echo -n "${fbankdir}/${t}_test "; done)
  # the stage-6 decoder and ${decode_config} on each task's test set; output in the stage-6 layout,
  # ${expdir}/<system>/decode_<task>_<set>/. One process per model: LoRA adapters are injected into the LLM of
  # the process that loads them. No SLU calibration: subtracting the label scores of a content-free TEXT input
  # corrects the zero-shot label prior, but a fine-tuned prompt was trained on the labels (calibrated, every
  # utterance got the same intent).
  names=$(${python} -m w2p.bin.systems ${systems_config} --stage 7 --names)
  for t in ${tasks}; do
    for name in ${names}; do
      [ -f ${expdir}/${name}/${t}/model.pt ] || continue
      log "  decode ${name}/${t} on ${t}_test"
      ${decode_cmd} ${expdir}/${name}/log/decode_${t}.log ${python} -m w2p.bin.decode --config ${decode_config} \
        --systems_config ${systems_config} --expdir ${expdir} --systems ${name} --tasks ${t} --tasks.${t} ${t}_test \
        --dump_dir ${fbankdir} --llm ${llm} --num_threads ${nproc} --device ${device} --calibrate false
    done
  done
fi

# ============================================================================ Stage 9: scoring
if [ ${stage} -le 9 ] && [ ${stop_stage} -ge 9 ]; then
  log "Stage 9: scoring of tasks '${tasks}' and ASR on '${test_sets}' -> RESULTS.md (+ images/cif_alignment.png," \
    "images/training_curves.png)"
  # every decoded system of ${systems_config}, in its order and with its label; those not decoded are left out.
  # The columns are --tasks (+ ASR on the first --test_sets set); with further test sets, a table of every system
  # on each set: ASR and each task T decoded on a further set (T_<set>), beside the first set's.
  score_tasks=${task_csv}; asr_opt=""
  if [ -n "${test_sets// /}" ]; then
    score_tasks="asr${task_csv:+,${task_csv}}"; asr_opt="--tasks.asr ${test_sets%% *}"
  fi
  # shellcheck disable=SC2086
  ${python} -m w2p.bin.score --config ${decode_config} --systems_config ${systems_config} --expdir ${expdir} \
    --dump_dir ${fbankdir} --llm ${llm} --out RESULTS.md --image_dir images --skip_missing \
    --tasks "${score_tasks}" --asr_sets "${test_sets}" ${task_map} ${asr_opt}
fi

# ============================================================================ Stage 10: pack model
if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
  log "Stage 10: pack ${expdir}/wav2prompt -> ${expdir}/packed/wav2prompt, then a smoke test of the inference CLI"
  ${python} -m w2p.bin.pack_model --exp_dir ${expdir}/wav2prompt --cmvn ${fbankdir}/${train_set}/cmvn.npz \
    --llm ${llm} --out_dir ${expdir}/packed/wav2prompt
  head -n 2 ${datadir}/${test_sets%% *}/wav.scp > ${expdir}/packed/smoke.scp
  ${python} -m w2p.bin.infer --model ${expdir}/packed/wav2prompt --task st --wav_scp ${expdir}/packed/smoke.scp \
    --beam 1 | tee ${expdir}/packed/smoke.out
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
