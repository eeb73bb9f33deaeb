#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for mlip-autopipec and run either the quickstart
# recipe end to end or the full test suite.
#
#   ./bootstrap.sh quickstart   # install everything, run recipes/si_quickstart.yaml, write the report
#   ./bootstrap.sh test         # install everything (plus test-only system tools), run ruff, mypy, pytest
#
# System packages come from apt (run as root, or the script prints the exact line to run);
# everything else lives in the virtual environment .venv that this script creates.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${AUTOPIPEC_VENV:-$here/.venv}"
mode="${1:-}"

case "$mode" in
  quickstart|test) ;;
  *) echo "usage: $0 quickstart|test" >&2; exit 2 ;;
esac

log() { printf '==> %s\n' "$*"; }

# --- system packages -------------------------------------------------------------------
apt_packages=(quantum-espresso quantum-espresso-data python3-venv)
if [[ "$mode" == test ]]; then
  # chromium renders the HTML report in a test; munge/slurm run the cluster tests.
  apt_packages+=(chromium munge slurmctld slurmd slurm-client openmpi-bin)
fi

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "run this once, then rerun $0 $mode:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
command -v pw.x >/dev/null || { echo "error: pw.x not on PATH after installing quantum-espresso" >&2; exit 1; }

# --- python environment ----------------------------------------------------------------
python="${PYTHON:-python3}"
extras="test"
[[ "$mode" == test ]] && extras="test,cluster"
stamp="$venv/.autopipec-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$extras"
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "pip install -e .[$extras] (python-ace, ase, ...)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi
# pacemaker, pace_yaml2yace, pace_activeset and Parsl's interchange are found on PATH.
export PATH="$venv/bin:$PATH"

# --- the job ---------------------------------------------------------------------------
if [[ "$mode" == quickstart ]]; then
  log "autopipec run recipes/si_quickstart.yaml"
  autopipec run recipes/si_quickstart.yaml --run-dir runs/si-quickstart
  autopipec status runs/si-quickstart
  autopipec report runs/si-quickstart
  exit 0
fi

log "ruff"
ruff check src tests bench
ruff format --check src tests bench
log "mypy"
mypy

slurm_started=0
if [[ -x .ci/slurm/start.sh ]]; then
  if .ci/slurm/start.sh; then
    slurm_started=1
  else
    echo "NOTE: could not start a local Slurm; the tests marked 'slurm' will be skipped" >&2
  fi
fi
cleanup() { ((slurm_started)) && .ci/slurm/stop.sh || true; }
trap cleanup EXIT

# Two pytest workers (AUTOPIPEC_TEST_WORKERS; 0 = one process): most tests wait on one
# serial pw.x or pacemaker, so one process kept a 2-core machine half idle (load ~1.0,
# 17-20 min; measured with two: 10.6 min). Whole files go to a worker, so a module's
# fixtures are built once (loadgroup would not group under pytest 9.2: xdist 3.8 sets a
# node attribute pytest no longer reads).
log "pytest"
pytest -n "${AUTOPIPEC_TEST_WORKERS:-2}" --dist loadfile --durations=25 "${@:2}"
