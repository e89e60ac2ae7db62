# Sourced by every recipe's path.sh: activates tools/venv, installing it first if missing.
W2P_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export W2P_ROOT
if [ ! -f "$W2P_ROOT/tools/venv/.w2p_deps" ]; then
  "$W2P_ROOT/tools/install.sh" || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$W2P_ROOT/tools/venv/bin/activate"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONIOENCODING=utf-8
export PATH=$W2P_ROOT/egs/TEMPLATE/w2p1/utils:$PATH
