# Activates tools/venv (installing it first when missing) and puts utils/ on PATH.
# shellcheck disable=SC1091
. ../../../tools/activate_python.sh
export LC_ALL=C
