#!/usr/bin/env bash
# Slurm backend with the run.pl interface:
#   slurm.pl [--mem 4G] [--gpu N] [--time 1:00:00] [--num_threads N] [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND ...
# Submits one sbatch job array (one task per JOB index) and waits for it (sbatch --wait).
# Each task runs the command with JOB replaced by $SLURM_ARRAY_TASK_ID, logging like run.pl.
# Extra sbatch options can be given in $SLURM_EXTRA_OPTS (e.g. "--partition=gpu").
set -u
opts=()
max_jobs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --mem) opts+=("--mem=$2"); shift 2 ;;
    --gpu) [ "$2" -gt 0 ] && opts+=("--gres=gpu:$2"); shift 2 ;;
    --time) opts+=("--time=$2"); shift 2 ;;
    --num_threads) opts+=("--cpus-per-task=$2"); shift 2 ;;
    --max-jobs-run) max_jobs=$2; shift 2 ;;
    --*) echo "slurm.pl: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
command -v sbatch >/dev/null || { echo "slurm.pl: sbatch not found; use run.pl in cmd.sh" >&2; exit 2; }
var="" ; first=1 ; last=1
if [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}; shift
fi
logfile=$1; shift
cmd="" ; for w in "$@"; do cmd+="$(printf '%q' "$w") "; done
lf=$logfile
if [ -n "$var" ]; then
  cmd=${cmd//$var/\$\{SLURM_ARRAY_TASK_ID\}}
  lf=${lf//$var/\$\{SLURM_ARRAY_TASK_ID\}}
fi
dir=$(dirname "${logfile//$var/1}")/q; mkdir -p "$dir"
script=$dir/$(basename "${logfile//$var/x}").sh
cat > "$script" <<SCRIPT
#!/usr/bin/env bash
cd "$PWD"
SLURM_ARRAY_TASK_ID=\${SLURM_ARRAY_TASK_ID:-$first}
mkdir -p "\$(dirname "$lf")"
echo "# $cmd" > "$lf"; echo "# Started at \$(date) on \$(hostname)" >> "$lf"
( $cmd ) >> "$lf" 2>&1; rc=\$?
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
