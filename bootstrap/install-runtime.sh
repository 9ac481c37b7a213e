#!/usr/bin/env bash
# EMR bootstrap action: install Python 3.11 and the job's pinned runtime on every node, and place the model
# weights where the driver finds them, so no run installs or downloads anything.
#
#   install-runtime.sh --requirements s3://<artifacts>/bootstrap/<hash>/requirements.txt
#                      [--wheelhouse s3://<artifacts>/wheelhouse/ | --index-url https://<private index>/simple/]
#                      [--weights-url https://.../<file>.h5 --weights-file <file>.h5 [--weights-sha256 <hex>]]
#                      [--weights-uri s3://<bucket>/models/<file>.h5 [--weights-sha256 <hex>]]
#
# Installs exactly the pins of the requirements file (bootstrap/cluster-requirements.txt: every pin with the
# SHA-256 of its wheel) binary-only with hashes required, from PyPI, a private index (--index-url) or a wheelhouse
# in S3 (--wheelhouse: a cluster without internet egress), and verifies them afterwards. Without a wheelhouse it
# first checks that the index answers and stops at once, with one line saying what to do, when it does not (pip
# alone would retry for about half an hour before EMR failed the cluster). --weights-url/--weights-file: downloads
# that file (the CDK app passes the exact ImageNet file Keras would fetch for the configured model; this script
# knows no model names) into $KERAS_HOME/models/<file>, owned by root and read-only for everyone else, where the
# job loads it without writing any cache. --weights-uri: copies a custom weights file to $FRUITS_MODELS_DIR.
# --weights-sha256: the file must have this digest (else the script fails); without it the digest is logged.
# Safe to run twice: a node whose state matches the requirements file skips the install, and present weights are
# kept (and checked). Every other network call is retried; any failure ends the script with a non-zero status,
# which fails the cluster (EMR bootstrap semantics). It runs as EMR runs bootstrap actions: as the hadoop user,
# with sudo for what needs root.
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
wheelhouse_uri=""
index_url="${FRUITS_DEFAULT_INDEX:-https://pypi.org/simple/}"
weights_uri=""
weights_url=""
weights_file=""
weights_sha256=""
while (( $# > 0 )); do
  case "$1" in
    --requirements) requirements_uri="${2:?--requirements needs an s3:// URI}"; shift 2 ;;
    --wheelhouse) wheelhouse_uri="${2:?--wheelhouse needs an s3:// URI}"; shift 2 ;;
    --index-url) index_url="${2:?--index-url needs an https:// URL}"; shift 2 ;;
    --weights-uri) weights_uri="${2:?--weights-uri needs an s3:// URI}"; shift 2 ;;
    --weights-url) weights_url="${2:?--weights-url needs an https:// URL}"; shift 2 ;;
    --weights-file) weights_file="${2:?--weights-file needs a file name}"; shift 2 ;;
    --weights-sha256) weights_sha256="${2:?--weights-sha256 needs a hex digest}"; shift 2 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ "${requirements_uri}" == s3://* ]] || die "--requirements s3://... is required"
[[ -z "${wheelhouse_uri}" || "${wheelhouse_uri}" == s3://*/ ]] || die "--wheelhouse must be an s3:// prefix ending in /"
[[ "${index_url}" == https://* ]] || die "--index-url must be an https:// URL"
[[ -z "${weights_uri}" || "${weights_uri}" == s3://* ]] || die "--weights-uri must be an s3:// URI"
[[ -z "${weights_url}" || "${weights_url}" == https://* ]] || die "--weights-url must be an https:// URL"
[[ -z "${weights_sha256}" || "${weights_sha256}" =~ ^[0-9a-f]{64}$ ]] \
  || die "--weights-sha256 must be 64 lower-case hex digits"
if [[ -n "${weights_url}" && -z "${weights_file}" ]] || [[ -z "${weights_url}" && -n "${weights_file}" ]]; then
  die "--weights-url and --weights-file go together"
fi
# A bare file name: it becomes a path under $KERAS_HOME/models and must not climb out of it.
[[ -z "${weights_file}" || "${weights_file}" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
  || die "--weights-file must be a plain file name, got ${weights_file}"

workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT

source="${wheelhouse_uri:-${index_url}}"
log "start: requirements=${requirements_uri} packages=${source} weights=${weights_uri:-${weights_url:-none}} python=${FRUITS_PYTHON}"

# 1. Python 3.11 (Amazon Linux 2023's default python3 is 3.9; TensorFlow 2.21 needs >= 3.10).
# shellcheck disable=SC2086 # the package list is meant to split into words
retry sudo dnf install -y ${FRUITS_DNF_PACKAGES}
[[ -x "${FRUITS_PYTHON}" ]] || die "${FRUITS_PYTHON} is missing after installing ${FRUITS_DNF_PACKAGES}"
log "python: $("${FRUITS_PYTHON}" --version 2>&1)"

# 2. The pinned runtime, exactly as the requirements file says.
retry aws s3 cp --only-show-errors "${requirements_uri}" "${workdir}/requirements.txt"
requirements="${workdir}/requirements.txt"
# name==version of each requirement, names normalised as pip freeze prints them (lower case, '-' for '_' and
# '.'); hash options and continuation lines are not requirements.
pins() {
  awk '{ sub(/#.*/, ""); if (split($0, word, " ") == 0) next }
    word[1] ~ /^[A-Za-z0-9._-]+==[^=]+$/ {
      split(word[1], pin, "=="); name = tolower(pin[1]); gsub(/[._]/, "-", name); print name "==" pin[2] }' "$1" | sort -u
}
pins "${requirements}" > "${workdir}/wanted.txt"
[[ -s "${workdir}/wanted.txt" ]] || die "no name==version pins in ${requirements_uri}"
# Every requirement: name==version, and at least one --hash=sha256 (on its line or the continuation lines).
unhashed="$(awk '/^[[:space:]]*(#|$)/ { next }
  /^[[:space:]]*--hash=sha256:[0-9a-f][0-9a-f]*[[:space:]]*\\?[[:space:]]*$/ { hashed[current] = 1; next }
  /^[A-Za-z0-9._-]+==[^=[:space:]]+[[:space:]]*(\\|--hash=sha256:[0-9a-f][0-9a-f]*[[:space:]]*\\?)?[[:space:]]*$/ {
    current = $1; if ($0 ~ /--hash=sha256:/) hashed[current] = 1; order[++n] = current; next }
  { print "not a pinned requirement: " $0; exit }
  END { for (i = 1; i <= n; i++) if (!(order[i] in hashed)) print "no --hash=sha256 for " order[i] }' "${requirements}")"
[[ -z "${unhashed}" ]] || die "every requirement must be pinned with == and a --hash=sha256; refusing ${requirements_uri}: ${unhashed%%$'\n'*}"

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
  if [[ -n "${wheelhouse_uri}" ]]; then
    retry aws s3 cp --recursive --only-show-errors "${wheelhouse_uri}" "${workdir}/wheels"
    compgen -G "${workdir}/wheels/*.whl" > /dev/null || die "no wheels under ${wheelhouse_uri} (upload them first: README, \"A cluster without internet egress\")"
    sources=(--no-index --find-links "${workdir}/wheels")
  else
    # Fail fast without egress: one short probe of the index instead of pip's retries for half an hour.
    attempt=1
    until curl --silent --show-error --fail --head --connect-timeout 10 --max-time 20 --output /dev/null "${index_url}"; do
      if (( attempt >= 2 )); then
        die "cannot reach the package index ${index_url} from this node: a cluster without internet egress needs a wheelhouse (deploy with -c wheelhouse=true and upload it, README: \"A cluster without internet egress\") or a private index it can reach (-c pipIndexUrl=https://...)"
      fi
      attempt=$(( attempt + 1 ))
      sleep "${FRUITS_RETRY_DELAY}"
    done
    sources=(--index-url "${index_url}")
  fi
  log "installing $(wc -l < "${workdir}/wanted.txt") pinned packages from ${source}"
  # Hashes required, wheels only, no dependency resolution: the file is the complete set (a freeze).
  retry sudo "${FRUITS_PYTHON}" -m pip install --no-cache-dir --disable-pip-version-check \
    --root-user-action=ignore --require-hashes --only-binary=:all: --no-deps --retries 2 --timeout 30 \
    "${sources[@]}" -r "${requirements}"
  if ! verify; then
    log "installed versions differ from the pins:"
    sed 's/^/  missing: /' "${workdir}/missing.txt" >&2
    die "pinned runtime not installed"
  fi
  echo "${digest}" | sudo tee "${stamp}" > /dev/null
  log "runtime installed: $(tr '\n' ' ' < "${workdir}/wanted.txt")"
fi

# check_weights FILE: its SHA-256 must be --weights-sha256 when given; logged either way.
check_weights() {
  local actual
  actual="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ -n "${weights_sha256}" && "${actual}" != "${weights_sha256}" ]]; then
    die "weights $1 have SHA-256 ${actual}, expected ${weights_sha256} (--weights-sha256): refusing them"
  fi
  log "weights $1: sha256 ${actual}${weights_sha256:+ (as pinned)}"
}

# 3. Model weights, once per node.
mkdir_shared "${KERAS_HOME}" "${KERAS_HOME}/models" "${FRUITS_MODELS_DIR}"
if [[ -n "${weights_uri}" ]]; then
  target="${FRUITS_MODELS_DIR}/$(basename "${weights_uri}")"
  if [[ -s "${target}" ]]; then
    log "weights already at ${target}"
    check_weights "${target}"
  else
    retry aws s3 cp --only-show-errors "${weights_uri}" "${workdir}/weights.part"
    check_weights "${workdir}/weights.part"
    sudo install -m 0644 "${workdir}/weights.part" "${target}"
    log "weights copied to ${target}"
  fi
fi
if [[ -n "${weights_url}" ]]; then
  target="${KERAS_HOME}/models/${weights_file}"
  if [[ -s "${target}" ]]; then
    log "ImageNet weights already at ${target}"
    check_weights "${target}"
  else
    retry curl --fail --silent --show-error --location --connect-timeout 30 --max-time 900 \
      --output "${workdir}/weights.part" "${weights_url}"
    [[ -s "${workdir}/weights.part" ]] || die "empty download from ${weights_url}"
    check_weights "${workdir}/weights.part"
    # Root owns it and nobody else may write it: the job (as yarn) only reads it.
    sudo install -m 0644 "${workdir}/weights.part" "${target}"
    log "ImageNet weights downloaded to ${target}"
  fi
fi
# Executors run as other users: everything readable, nothing writable.
sudo chmod -R a+rX "${FRUITS_HOME}" "${KERAS_HOME}" "${FRUITS_MODELS_DIR}"
log "done"
