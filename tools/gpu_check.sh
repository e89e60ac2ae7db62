#!/usr/bin/env bash
# One prepared run of every check that needs a CUDA GPU, for a machine without network and without the project's
# venv (e.g. a CUDA image with Python 3.12, torch 2.11+cu130, transformers, pytest, hypothesis preinstalled). Everything
# goes under one output directory; the whole run takes a few minutes (a 470 s budget for the steps: <= 8 min).
#
#   tools/gpu_check.sh --prepare [gpu_prepare.py options]   HERE (CPU, tools/venv): wheels the image lacks, the
#                                                           embeddings-only LLM and real speech features -> the
#                                                           git-ignored tools/gpu_carry/ (tools/gpu_prepare.py)
#   tools/gpu_check.sh --dry-run [--out DIR]                HERE: prepare what is missing, check the carry folder,
#                                                           print every step's command without running it
#   tools/gpu_check.sh [--out DIR] [--carry DIR] [--only s1,s2]   THERE: run the steps
#
# Through a lending tool that returns at most a few files from $OUT (the directory comes back as one archive):
#   run(command="tools/gpu_check.sh --out /tmp/gpu_check; tar -C /tmp -czf $OUT/gpu_check.tgz gpu_check;
#                cat /tmp/gpu_check/summary.txt", carry=["tools/gpu_carry"], timeout_s=560)
#
# Steps (each logs to DIR/<step>.log; DIR/summary.txt has one line per step: status, seconds):
#   env        nvidia-smi, torch / CUDA / nvcc / compute-sanitizer versions
#   install    the carried wheels into $W2P_SITE (pip --no-index --no-deps --target), then w2p itself with
#              pip install --no-deps --no-build-isolation -e . against the preinstalled torch: builds w2p._C with the
#              CUDA kernels for this GPU (TORCH_CUDA_ARCH_LIST from the device, 9.0 on Hopper)
#   tests      test/test_cif_cuda.py (fp32/fp64 = the oracle, bf16/fp16 within the stated tolerance of an fp32
#              oracle, fp64 gradcheck, alpha > beta, T = 5000, empty rows, torch-cif on the GPU; none may skip) and
#              test/test_cif.py (the CPU kernels built there)
#   memcheck   compute-sanitizer --tool memcheck on the forward and backward kernels (training and inference call)
#   racecheck  compute-sanitizer --tool racecheck on the same
#   bench      w2p.bin.benchmark_cif --device cuda, fp32 and bf16, shapes (8,250,512) (16,500,1024) (32,1000,1024)
#              (32,1000,4096), ext vs the vectorised torch backend vs torch-cif: ms, bytes moved, GB/s, % of the
#              copy bandwidth and of the datasheet peak
#   smoke      200 bf16 (autocast) steps of the mini_en Wav2Prompt config on the carried features and the real
#              LLM's embedding table (the regression phase: embeddings-only LLM): loss trend and throughput
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=run
out=gpu_check_out
carry=tools/gpu_carry
only=""
budget=${W2P_GPU_CHECK_BUDGET:-470}  # seconds for all steps: each step's limit is cut to what is left of it
prep=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare; shift; prep=("$@"); break ;;
    --dry-run) mode=dry; shift ;;
    --out) out=$2; shift 2 ;;
    --carry) carry=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
venv_py=$root/tools/venv/bin/python
if [ "$mode" = prepare ]; then
  exec "$venv_py" tools/gpu_prepare.py --carry "$carry" "${prep[@]}"
fi

py=${PYTHON:-python3}
site=${W2P_SITE:-/tmp/w2p_site}
data=$carry/data
llm=$carry/llm/smollm2-135m-embeddings.gguf
shapes=8x250x512,16x500x1024,32x1000x1024,32x1000x4096
# name|timeout seconds|command (run with bash -c from the repository root)
steps=(
  "env|30|nvidia-smi; $py -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'; nvcc --version | tail -2; compute-sanitizer --version | head -2"
  "install|200|mkdir -p $site && $py -m pip install -q --no-index --no-deps --no-compile --upgrade --target $site $carry/wheels/*.whl && TORCH_CUDA_ARCH_LIST=\$($py -c 'import torch; print(\"%d.%d\" % torch.cuda.get_device_capability(0))') MAX_JOBS=16 && export TORCH_CUDA_ARCH_LIST MAX_JOBS && ($py -m pip install --no-index --no-deps --no-build-isolation -e . || $py setup.py -q build_ext --inplace) && $py -c 'from w2p import _ext; _ext.load(); assert _ext.cuda_built(), \"built without CUDA\"; print(\"w2p._C: CUDA kernels built\")'"
  "tests|150|$py -m pytest -q -rs -p no:cacheprovider test/test_cif_cuda.py | tee /dev/stderr | tail -1 | grep -qv skipped && $py -m pytest -q -x -p no:cacheprovider test/test_cif.py"
  "memcheck|120|compute-sanitizer --tool memcheck --error-exitcode 1 $py tools/gpu_check_steps.py sanitize"
  "racecheck|120|compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 1 $py tools/gpu_check_steps.py sanitize"
  "bench|180|for dt in float32 bfloat16; do $py -m w2p.bin.benchmark_cif --device cuda --dtype \$dt --shapes $shapes --backends ext,torch,torch-cif --repeats 20 --copy-mb 1024 --json $out/bench_\$dt.json || exit 1; done"
  "smoke|180|$py -m w2p.bin.train --config egs/mini_en/w2p1/conf/train_wav2prompt.yaml --train_dir $data/train --valid_dir $data/dev --output_dir $out/smoke --llm $llm --ngpu 1 --amp true --max_steps 200 --max_epoch 1000 --batch_frames 12000 --max_batch_size 64 --model_conf.bpe_model $data/bpe.model --model_conf.ctc_warmup_steps 50 --scheduler_conf.warmup_steps 30 --log_interval 10 --save_interval_steps 0 && $py tools/gpu_check_steps.py smoke $out/smoke"
)

check_carry() {
  local ok=0
  ls "$carry"/wheels/*.whl >/dev/null 2>&1 || { echo "missing: $carry/wheels/*.whl"; ok=1; }
  for f in "$llm" "$data/train/feats.scp" "$data/dev/feats.scp" "$data/bpe.model" "$data/train/cmvn.npz"; do
    [ -s "$f" ] || { echo "missing: $f"; ok=1; }
  done
  return $ok
}

if [ "$mode" = dry ]; then
  if ! check_carry >/dev/null; then
    echo "# preparing $carry (tools/gpu_prepare.py)"
    "$venv_py" tools/gpu_prepare.py --carry "$carry" || exit 1
  fi
  check_carry || exit 1
  echo "# carry: $carry ($(du -sh "$carry" | cut -f1)): $(ls "$carry"/wheels | tr '\n' ' ')"
  echo "# $(grep -c . "$data/train/feats.scp") train / $(grep -c . "$data/dev/feats.scp") dev utterances; LLM $llm"
  echo "# on the CUDA machine, from $root, output under $out; all steps within ${budget}s (each step's limit is" \
    "cut to what is left)"
  echo "export PYTHONPATH=$site:$root PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1"
  for s in "${steps[@]}"; do
    IFS='|' read -r name limit cmd <<< "$s"
    echo "[$name] (timeout ${limit}s)"
    echo "  $cmd"
  done
  exit 0
fi

check_carry || { echo "gpu_check.sh: $carry is incomplete: run tools/gpu_check.sh --prepare here first, and name" \
  "$carry among the paths that travel with the tree" >&2; exit 1; }
mkdir -p "$out"
export PYTHONPATH=$site:$root PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
summary=$out/summary.txt
echo "# tools/gpu_check.sh $(date -u '+%Y-%m-%dT%H:%M:%SZ') commit $(git rev-parse --short HEAD 2>/dev/null)" > "$summary"
fail=0
t_all=$SECONDS
for s in "${steps[@]}"; do
  IFS='|' read -r name limit cmd <<< "$s"
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
  t0=$SECONDS
  left=$((budget - (SECONDS - t_all)))
  if [ $left -lt 15 ]; then
    printf '%-10s %-32s\n' "$name" "SKIPPED (${budget}s budget spent)" | tee -a "$summary" >&2; fail=1; continue
  fi
  [ "$limit" -gt $left ] && limit=$left
  echo "== $name" >&2
  timeout --kill-after=5 "$limit" bash -c "$cmd" > "$out/$name.log" 2>&1
  rc=$?
  status=ok; [ $rc -eq 0 ] || { status="FAILED (exit $rc$([ $rc -eq 124 ] && echo ", timeout ${limit}s"))"; fail=1; }
  printf '%-10s %-32s %4ds\n' "$name" "$status" $((SECONDS - t0)) | tee -a "$summary" >&2
  [ "$name" = install ] && [ $rc -ne 0 ] && break  # nothing else can run
done
{
  echo "total ${SECONDS}s (steps $((SECONDS - t_all))s)"
  for f in bench smoke; do [ -f "$out/$f.log" ] && { echo "--- $f"; grep -v '^done ' "$out/$f.log" | tail -n 40; }; done
} >> "$summary"
cat "$summary"
exit $fail
