#!/usr/bin/env bash
# EMR bootstrap action: install Python 3.11 and the job's pinned runtime on every node, and place the model
# weights where the driver finds them, so no run installs or downloads anything.
#
#   install-runtime.sh --requirements s3://<artifacts>/bootstrap/<hash>/requirements.txt
#                      [--weights-url https://.../<file>.h5 --weights-file <file>.h5]
#                      [--weights-uri s3://<bucket>/models/<file>.h5]
#
# Installs exactly the pins of the requirements file (the repository's requirements.txt, uploaded unchanged)
# and verifies them afterwards. --weights-url/--weights-file: downloads that file (the CDK app passes the exact
# ImageNet file Keras would fetch for the configured model; this script knows no model names) into
# $KERAS_HOME/models/<file>, owned by root and read-only for everyone else, where the job loads it without
# writing any cache. --weights-uri: copies a custom weights file to $FRUITS_MODELS_DIR. Safe to run twice: a
# node whose state matches the requirements file skips the install, and present weights are kept. Every
# network call is retried; any failure ends the script with a non-zero status, which fails the cluster (EMR
# bootstrap semantics).
#
# System paths are overridable through the environment (the tests point them into a temporary directory).
set -Eeuo pipefail

FRUITS_HOME="${FRUITS_HOME:-/opt/fruits}"
KERAS_HOME="${KERAS_HOME:-${FRUITS_HOME}/keras}"
FRUITS_MODELS_DIR="${FRUITS_MODELS_DIR:-${FRUITS_HOME}/models}"
FRUITS_STATE_DIR="${FRUITS_STATE_DIR:-${FRUITS_HOME}/state}"
FRUITS_PYTHON="${FRUITS_PYTHON:-/usr/bin/python3.11}"
FRUITS_DNF_PACKAGES="${FRUITS_DNF_PACKAGES:-python3.11 python3.11-pip python3.11-devel}"
FRUITS_RETRIES="${FRUITS_RETRIES:-5}"
FRUITS_RETRY_DELAY="${FRUITS_RETRY_DELAY:-10}"

log() { printf '%s fruits-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
trap 'log "FAILED at line ${LINENO}: ${BASH_COMMAND}"' ERR

# retry CMD...: run CMD up to FRUITS_RETRIES times, waiting FRUITS_RETRY_DELAY * attempt seconds in between.
retry() {
  local attempt=1
  until "$@"; do
    if (( attempt >= FRUITS_RETRIES )); then
      log "giving up after ${attempt} attempts: $*"
      return 1
    fi
    log "attempt ${attempt}/${FRUITS_RETRIES} failed: $*; retrying in $(( FRUITS_RETRY_DELAY * attempt ))s"
    sleep $(( FRUITS_RETRY_DELAY * attempt ))
    attempt=$(( attempt + 1 ))
  done
}

requirements_uri=""
weights_uri=""
weights_url=""
weights_file=""
while (( $# > 0 )); do
  case "$1" in
    --requirements) requirements_uri="${2:?--requirements needs an s3:// URI}"; shift 2 ;;
    --weights-uri) weights_uri="${2:?--weights-uri needs an s3:// URI}"; shift 2 ;;
    --weights-url) weights_url="${2:?--weights-url needs an https:// URL}"; shift 2 ;;
    --weights-file) weights_file="${2:?--weights-file needs a file name}"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ "${requirements_uri}" == s3://* ]] || die "--requirements s3://... is required"
[[ -z "${weights_uri}" || "${weights_uri}" == s3://* ]] || die "--weights-uri must be an s3:// URI"
[[ -z "${weights_url}" || "${weights_url}" == https://* ]] || die "--weights-url must be an https:// URL"
if [[ -n "${weights_url}" && -z "${weights_file}" ]] || [[ -z "${weights_url}" && -n "${weights_file}" ]]; then
  die "--weights-url and --weights-file go together"
fi
# A bare file name: it becomes a path under $KERAS_HOME/models and must not climb out of it.
[[ -z "${weights_file}" || "${weights_file}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
  || die "--weights-file must be a plain file name, got ${weights_file}"

workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

log "start: requirements=${requirements_uri} weights=${weights_uri:-${weights_url:-none}} python=${FRUITS_PYTHON}"

# 1. Python 3.11 (Amazon Linux 2023's default python3 is 3.9; TensorFlow 2.21 needs >= 3.10).
# shellcheck disable=SC2086 # the package list is meant to split into words
retry sudo dnf install -y ${FRUITS_DNF_PACKAGES}
[[ -x "${FRUITS_PYTHON}" ]] || die "${FRUITS_PYTHON} is missing after installing ${FRUITS_DNF_PACKAGES}"
log "python: $("${FRUITS_PYTHON}" --version 2>&1)"

# 2. The pinned runtime, exactly as the requirements file says.
retry aws s3 cp --only-show-errors "${requirements_uri}" "${workdir}/requirements.txt"
requirements="${workdir}/requirements.txt"
# name==version lines, names normalised as pip freeze prints them (lower case, '-' for '_' and '.').
pins() {
  awk -F'==' '{ sub(/#.*/, ""); gsub(/[[:space:]]/, "") }
    /^[A-Za-z0-9._-]+==[^=]+$/ { name = tolower($1); gsub(/[._]/, "-", name); print name "==" $2 }' "$1" | sort -u
}
pins "${requirements}" > "${workdir}/wanted.txt"
[[ -s "${workdir}/wanted.txt" ]] || die "no name==version pins in ${requirements_uri}"
if grep -vE '^[[:space:]]*(#|$)' "${requirements}" | grep -vqE '^[A-Za-z0-9._-]+==[^=[:space:]]+[[:space:]]*(#.*)?$'; then
  die "every requirement must be pinned with ==; refusing ${requirements_uri}"
fi

verify() {
  sudo "${FRUITS_PYTHON}" -m pip freeze --disable-pip-version-check 2>/dev/null | pins /dev/stdin > "${workdir}/installed.txt"
  comm -23 "${workdir}/wanted.txt" "${workdir}/installed.txt" > "${workdir}/missing.txt"
  [[ ! -s "${workdir}/missing.txt" ]]
}

mkdir_shared() { sudo mkdir -p "$@" && sudo chmod 0755 "$@"; }
mkdir_shared "${FRUITS_STATE_DIR}"
stamp="${FRUITS_STATE_DIR}/requirements.sha256"
digest="$(sha256sum "${requirements}" | cut -d' ' -f1)"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${digest}" ]] && verify; then
  log "runtime already installed for requirements ${digest}; skipping pip"
else
  log "installing $(wc -l < "${workdir}/wanted.txt") pinned packages"
  retry sudo "${FRUITS_PYTHON}" -m pip install --no-cache-dir --disable-pip-version-check \
    --root-user-action=ignore --retries 5 --timeout 60 -r "${requirements}"
  if ! verify; then
    log "installed versions differ from the pins:"
    sed 's/^/  missing: /' "${workdir}/missing.txt" >&2
    die "pinned runtime not installed"
  fi
  echo "${digest}" | sudo tee "${stamp}" > /dev/null
  log "runtime installed: $(tr '\n' ' ' < "${workdir}/wanted.txt")"
fi

# 3. Model weights, once per node.
mkdir_shared "${KERAS_HOME}" "${KERAS_HOME}/models" "${FRUITS_MODELS_DIR}"
if [[ -n "${weights_uri}" ]]; then
  target="${FRUITS_MODELS_DIR}/$(basename "${weights_uri}")"
  if [[ -s "${target}" ]]; then
    log "weights already at ${target}"
  else
    retry aws s3 cp --only-show-errors "${weights_uri}" "${workdir}/weights.part"
    sudo install -m 0644 "${workdir}/weights.part" "${target}"
    log "weights copied to ${target}"
  fi
fi
if [[ -n "${weights_url}" ]]; then
  target="${KERAS_HOME}/models/${weights_file}"
  if [[ -s "${target}" ]]; then
    log "ImageNet weights already at ${target}"
  else
    retry curl --fail --silent --show-error --location --connect-timeout 30 --max-time 900 \
      --output "${workdir}/weights.part" "${weights_url}"
    [[ -s "${workdir}/weights.part" ]] || die "empty download from ${weights_url}"
    # Root owns it and nobody else may write it: the job (as yarn) only reads it.
    sudo install -m 0644 "${workdir}/weights.part" "${target}"
    log "ImageNet weights downloaded to ${target}"
  fi
fi
# Executors run as other users: everything readable, nothing writable.
sudo chmod -R a+rX "${FRUITS_HOME}" "${KERAS_HOME}" "${FRUITS_MODELS_DIR}"
log "done"
