#!/bin/sh
# azd postprovision hook (POSIX): run scripts/postprovision.py with msgraph-sdk and azure-identity.
# Uses the project's .venv when `make setup` made one; otherwise a private venv under .azure/.
set -eu
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import msgraph, azure.identity' 2>/dev/null; then
  py=.venv/bin/python
else
  py=.azure/hooks-venv/bin/python
  if [ ! -x "$py" ] || ! "$py" -c 'import msgraph, azure.identity' 2>/dev/null; then
    python3 -m venv .azure/hooks-venv
    # The function app's own pins (requirements.txt) include both packages.
    "$py" -m pip install --disable-pip-version-check --quiet -r requirements.txt
  fi
fi
exec "$py" scripts/postprovision.py "$@"
