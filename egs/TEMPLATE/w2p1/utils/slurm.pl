#!/usr/bin/env bash
# Slurm backend with the run.pl interface:
#   slurm.pl [--mem 4G] [--gpu N] [--num_nodes N] [--time 1:00:00] [--num_threads N] [--max-jobs-run N]
#            [JOB=1:N | JOB=n] LOGFILE COMMAND ...
# Submits one sbatch job array (one task per JOB index) and waits for it (sbatch --wait).
# Each task runs the command with JOB replaced by $SLURM_ARRAY_TASK_ID, logging like run.pl.
# --gpu N: --gres=gpu:N (GPUs per node; the last --gpu given wins, so w2p.sh's --gpu ${ngpu} overrides cmd.sh's).
# --num_nodes N > 1: each task gets N nodes; the command runs once per node through `srun` (one task per node),
#   with W2P_RDZV_ENDPOINT=<first node>:<port> and W2P_RDZV_ID=<job id> exported: w2p.bin.train --num_nodes N
#   then starts one torchrun per node that meets the others at that rendezvous (port: $W2P_RDZV_PORT, 29500).
# Extra sbatch options can be given in $SLURM_EXTRA_OPTS (e.g. "--partition=gpu").
set -u
opts=()
max_jobs=0
gpu=0
nodes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) opts+=("--mem=$2"); shift 2 ;;
    --gpu) gpu=$2; shift 2 ;;
    --num_nodes) nodes=$2; shift 2 ;;
    --time) opts+=("--time=$2"); shift 2 ;;
    --num_threads) opts+=("--cpus-per-task=$2"); shift 2 ;;
    --max-jobs-run) max_jobs=$2; shift 2 ;;
    --*) echo "slurm.pl: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ "$gpu" =~ ^[0-9]+$ ]] || { echo "slurm.pl: --gpu takes a number, got '$gpu'" >&2; exit 2; }
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || { echo "slurm.pl: --num_nodes takes a number >= 1, got '$nodes'" >&2; exit 2; }
[ "$gpu" -gt 0 ] && opts+=("--gres=gpu:$gpu")
[ "$nodes" -gt 1 ] && opts+=("--nodes=$nodes" "--ntasks-per-node=1")
if [ $# -lt 2 ]; then
  echo "usage: slurm.pl [options] [JOB=1:N | JOB=n] LOGFILE COMMAND ..." >&2; exit 2
fi
command -v sbatch >/dev/null || { echo "slurm.pl: sbatch not found; use run.pl in cmd.sh" >&2; exit 2; }
var="" ; first=1 ; last=1
if [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}; shift
elif [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)$ ]]; then
  var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=$first; shift
fi
logfile=$1; shift
cmd="" ; for w in "$@"; do cmd+="$(printf '%q' "$w") "; done
lf=$logfile
if [ -n "$var" ]; then
  cmd=${cmd//$var/\$\{SLURM_ARRAY_TASK_ID\}}
  lf=${lf//$var/\$\{SLURM_ARRAY_TASK_ID\}}
fi
run="( $cmd )"
if [ "$nodes" -gt 1 ]; then
  # the batch script runs on the first node of the allocation: it hosts the rendezvous
  run="export W2P_RDZV_ENDPOINT=\$(hostname):\${W2P_RDZV_PORT:-29500} W2P_RDZV_ID=\${SLURM_JOB_ID:-w2p}
srun --nodes=$nodes --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c $(printf '%q' "$cmd")"
fi
dir=$(dirname "${logfile//$var/1}")/q; mkdir -p "$dir"
script=$dir/$(basename "${logfile//$var/x}").sh
cat > "$script" <<SCRIPT
#!/usr/bin/env bash
cd "$PWD"
export SLURM_ARRAY_TASK_ID=\${SLURM_ARRAY_TASK_ID:-$first}
mkdir -p "\$(dirname "$lf")"
echo "# $cmd" > "$lf"; echo "# Started at \$(date) on \$(hostname) (nodes: $nodes)" >> "$lf"
$run >> "$lf" 2>&1; rc=\$?
echo "# Ended (code \$rc) at \$(date)" >> "$lf"
exit \$rc
SCRIPT
chmod +x "$script"
array="$first-$last"; [ "$max_jobs" -gt 0 ] && array+="%$max_jobs"
# shellcheck disable=SC2086
sbatch --wait --parsable --array="$array" -o /dev/null -e "$dir/sbatch.%A_%a.err" "${opts[@]}" \
  ${SLURM_EXTRA_OPTS:-} "$script" > "$dir/jobid" || {
  echo "slurm.pl: job array failed; see ${logfile//$var/*}" >&2; exit 1; }
exit 0
