#!/usr/bin/env bash
# Run the w2p test suite (installs into tools/venv first when needed).
# Extra arguments go to pytest, e.g. tools/test.sh -k cif
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/install.sh"
cd "$root"
set +e
"$root/tools/venv/bin/python" -m pytest -q -ra test "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "w2p: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit $rc
