#!/usr/bin/env bash
# Local parallel jobs, Kaldi run.pl interface (implemented in bash):
#   run.pl [--max-jobs-run N] [other --opt val ignored] [JOB=1:N] LOGFILE COMMAND ...
# Every "JOB" in LOGFILE and in the command words is replaced by the job index. The command
# runs under bash; its stdout+stderr go to the log, framed by the command line, start/end time
# and exit code. Exit 0 only if every job succeeded; otherwise names the failed logs.
set -u
max_jobs=0
while [ $# -gt 0 ]; do
  case "$1" in
    --max-jobs-run) max_jobs=$2; shift 2 ;;
    --*) shift 2 ;;  # queue options such as --mem/--gpu mean nothing locally
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "usage: run.pl [--max-jobs-run N] [JOB=1:N] LOGFILE COMMAND ..." >&2; exit 2
fi
var="" ; first=1 ; last=1
if [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
  var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=${BASH_REMATCH[3]}; shift
elif [[ "$1" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)$ ]]; then
  var=${BASH_REMATCH[1]}; first=${BASH_REMATCH[2]}; last=$first; shift
fi
logfile=$1; shift
[ $# -gt 0 ] || { echo "run.pl: no command given" >&2; exit 2; }

run_one() {  # $1 = job index
  local j=$1 lf cmd="" w; shift
  lf=$logfile; [ -n "$var" ] && lf=${lf//$var/$j}
  for w in "$@"; do
    [ -n "$var" ] && w=${w//$var/$j}
    cmd+="$(printf '%q' "$w") "
  done
  mkdir -p "$(dirname "$lf")"
  {
    echo "# $cmd"
    echo "# Started at $(date)"
  } > "$lf"
  local t0=$SECONDS
  bash -c "$cmd" >> "$lf" 2>&1
  local rc=$?
  {
    echo "# Accounting: time=$((SECONDS - t0)) threads=1"
    echo "# Ended (code $rc) at $(date)"
  } >> "$lf"
  return $rc
}

pids=() ; idx=()
for ((j = first; j <= last; j++)); do
  if [ "$max_jobs" -gt 0 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$max_jobs" ]; do sleep 0.2; done
  fi
  run_one "$j" "$@" &
  pids+=($!) ; idx+=("$j")
done
failed=()
for k in "${!pids[@]}"; do
  wait "${pids[$k]}" || failed+=("${idx[$k]}")
done
if [ ${#failed[@]} -gt 0 ]; then
  lf=$logfile; [ -n "$var" ] && lf=${lf//$var/${failed[0]}}
  echo "run.pl: ${#failed[@]} / $((last - first + 1)) jobs failed (jobs ${failed[*]}); see e.g. $lf" >&2
  exit 1
fi
exit 0
