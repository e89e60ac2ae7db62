#!/usr/bin/env bash
# Run the linter (ruff, configured in pyproject.toml) on the whole repository, then the w2p
# test suite (installs into tools/venv first when needed).  A lint error fails the run before
# any test starts.  Extra arguments go to pytest, e.g. tools/test.sh -k cif
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/tools/install.sh"
cd "$root"
if ! "$root/tools/venv/bin/python" -m ruff check .; then
  echo "w2p: ruff check failed: fix the violations above (tools/venv/bin/ruff check --fix fixes the safe ones)" >&2
  exit 1
fi
set +e
"$root/tools/venv/bin/python" -m pytest -q -ra test "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "w2p: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit $rc
