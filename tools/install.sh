#!/usr/bin/env bash
# Idempotent installer for w2p (ESPnet-style): creates tools/venv, installs the pinned
# dependencies, then w2p itself in editable mode (metadata in pyproject.toml), which builds
# the C++ (and, with a CUDA torch, the CUDA) extension w2p._C.  Re-running it on a complete
# venv takes seconds.
set -euo pipefail
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$tools")
venv=$tools/venv
python=${PYTHON:-python3}

log() { echo "$(date '+%H:%M:%S') [install] $*"; }

# --- system packages: espeak-ng + sox synthesise the default corpus; flite and festival (with its English voices)
# are the other engines of w2p.synth.engines (make_corpus --engines); ffmpeg decodes what the server is sent
# (the browser recorder's webm/opus); chromium + chromium-driver run the page's browser test ---------------------
apt_pkgs=()
command -v espeak-ng >/dev/null || apt_pkgs+=(espeak-ng)
command -v sox >/dev/null || apt_pkgs+=(sox)
command -v flite >/dev/null || apt_pkgs+=(flite)
command -v festival >/dev/null || apt_pkgs+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || apt_pkgs+=(festvox-kallpc16k)
[ -d /usr/share/festival/voices/english/ked_diphone ] || apt_pkgs+=(festvox-kdlpc16k)
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || apt_pkgs+=(festvox-us-slt-hts)
[ -f /usr/share/wordnet/data.noun ] || apt_pkgs+=(wordnet-base)  # mini_en open vocabulary (w2p.synth.wordnet)
command -v ffmpeg >/dev/null || apt_pkgs+=(ffmpeg)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || apt_pkgs+=(chromium)
command -v chromedriver >/dev/null || apt_pkgs+=(chromium-driver)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${apt_pkgs[*]} with apt-get"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
  else
    echo "w2p: please install ${apt_pkgs[*]} (e.g. 'sudo apt-get install ${apt_pkgs[*]}'); the default corpus needs" \
      "espeak-ng and sox, the multi-engine corpus flite and festival, the open vocabulary wordnet-base, w2p serve needs ffmpeg, its browser test chromium and chromium-driver." >&2
  fi
fi

# --- python virtualenv with pinned packages ------------------------------------------
stamp_want=$(cat "$tools/constraints.txt" "$tools/requirements.txt" "$tools/requirements-nodeps.txt" "$root/pyproject.toml" \
  "$root/setup.py" | sha256sum | cut -c1-16)
stamp_file=$venv/.w2p_deps
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp_want" ]; then
  log "installing torch (CPU wheel, pinned by tools/constraints.txt)"
  # Every pip call carries the constraints so nothing can replace torch with a CUDA build.
  "${pip[@]}" install -c "$tools/constraints.txt" "setuptools<80" wheel torch 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c 'import torch' || { echo "w2p: torch failed to install" >&2; exit 1; }
  log "installing pinned dependencies"
  "${pip[@]}" install -c "$tools/constraints.txt" -r "$tools/requirements.txt" 2>&1 | grep -v '^WARNING: Location' || true
  "${pip[@]}" install --no-deps -r "$tools/requirements-nodeps.txt" 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c 'import transformers, espnet2, kaldiio, kaldi_native_fbank, sentencepiece, torch_cif' \
    || { echo "w2p: dependency install incomplete; see the pip output above" >&2; exit 1; }
  log "installing w2p (editable; builds the extension)"
  (cd "$root" && "${pip[@]}" install -c "$tools/constraints.txt" --no-deps --no-build-isolation -e .) 2>&1 | grep -v '^WARNING: Location' || true
  echo "$stamp_want" > "$stamp_file"
fi

# --- the extension: rebuilt incrementally when csrc/ changed ---------------------------
(cd "$root" && "$venv/bin/python" setup.py -q build_ext --inplace >"$venv/.w2p_build.log" 2>&1) \
  || { cat "$venv/.w2p_build.log" >&2; echo "w2p: extension build failed (log above)" >&2; exit 1; }
# through w2p._ext, which imports torch first (w2p._C links against libtorch; "import w2p" does not load torch)
"$venv/bin/python" -c 'from w2p import _ext; _ext.load()' || { echo "w2p: loading w2p._C failed" >&2; exit 1; }
log "done: $("$venv/bin/python" -m w2p.info --short)"
