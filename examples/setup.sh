#!/usr/bin/env bash
# Installs what the example producers need; idempotent, prints what it does, works from any
# directory:
#   - a Python venv at .tools/venv (git-ignored) with examples/python/requirements.txt;
#   - the npm packages of examples/typescript (`npm ci` from the committed lock file).
# Usage: examples/setup.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/venv"

say() { printf '[examples] %s\n' "$*"; }
die() { printf 'examples/setup.sh: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing (3.8 or newer)"
command -v node >/dev/null 2>&1 || die "node is missing (18 or newer)"
command -v npm >/dev/null 2>&1 || die "npm is missing"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || die "node $(node --version) is too old: 18 or newer is needed"

if [ -x "$venv/bin/python" ]; then
  say "python venv: .tools/venv exists"
else
  say "creating the python venv .tools/venv ($(python3 --version))"
  python3 -m venv "$venv"
fi
say "pip install -r examples/python/requirements.txt (into .tools/venv)"
PIP_ROOT_USER_ACTION=ignore "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$root/examples/python/requirements.txt"

cd "$root/examples/typescript"
if [ -f package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  say "npm packages of examples/typescript are up to date"
elif [ -f package-lock.json ]; then
  say "npm ci in examples/typescript (node $(node --version))"
  npm ci --no-audit --no-fund --loglevel=error
else
  say "npm install in examples/typescript (no lock file yet: creating it)"
  npm install --no-audit --no-fund --loglevel=error
fi

say "ready: python3 examples/python/producer.py --help; node examples/typescript/producer.mjs --help"
