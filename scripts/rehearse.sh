#!/usr/bin/env bash
# The cloud rehearsal (tests/rehearsal): prepare what needs the network (Maven's jars, the cluster's wheelhouse),
# then run the scenario in namespaces of its own, where the "cluster" has no network but loopback:
#
#   unshare --net --mount --uts   a network namespace with only lo, where the rehearsal makes the cluster's
#                                 subnet (tests/rehearsal/network.py); a mount namespace for the nodes' /etc/hosts,
#                                 CA bundle, sudoers and clean site-packages; a UTS namespace for host names;
#   --pid --mount-proc            a PID namespace: when the rehearsal ends, however it ends, every daemon it
#                                 started ends with it.
#
#   scripts/rehearse.sh [pytest arguments]      (make rehearse; as root)
#
# A missing privilege, tool or setting ends it with one line naming what is missing: exit 1 where the rehearsal is
# required (FRUITS_REHEARSAL=required, as CI sets it), else exit 0 with that line (a laptop's `make test`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
python="${PYTHON:-${root}/.venv/bin/python}"

if [[ "${1:-}" == "--inside" ]]; then
  shift
  ip link set lo up
  # Mounts made from here on stay in this namespace and vanish with it.
  mount --make-rprivate /
  export FRUITS_REHEARSAL_NAMESPACES=1
  exec "${python}" -m pytest -m rehearsal -p no:cacheprovider "$@" tests/rehearsal
fi

missing=()
(( EUID == 0 )) || missing+=("root (namespaces, the cluster's users, sudo and mounts)")
for tool in java mvn setpriv unshare ip mount sudo curl; do
  command -v "${tool}" >/dev/null || missing+=("${tool}")
done
[[ -x /usr/bin/python3.11 ]] || missing+=("/usr/bin/python3.11 (the cluster's interpreter)")
/usr/bin/python3.11 -m pip --version >/dev/null 2>&1 || missing+=("pip for /usr/bin/python3.11 (Debian: python3-pip)")
for name in FRUITS_DATA FRUITS_WEIGHTS; do
  [[ -n "${!name:-}" ]] || missing+=("${name}")
done
if (( ${#missing[@]} )); then
  joined="$(printf '%s, ' "${missing[@]}")"
  line="rehearse: the cloud rehearsal needs: ${joined%, }"
  if [[ "${FRUITS_REHEARSAL:-}" == "required" ]]; then
    echo "${line}" >&2
    exit 1
  fi
  echo "${line}; skipped (FRUITS_REHEARSAL=required makes this an error)" >&2
  exit 0
fi

# What needs the network, before leaving it: the JVM side from Maven, the cluster's wheels from PyPI.
FRUITS_REHEARSAL_JARS="$(scripts/fetch-jars.sh)"
lock_digest="$(sha256sum bootstrap/cluster-requirements.txt | cut -c1-16)"
FRUITS_REHEARSAL_WHEELHOUSE="/var/cache/fruits/wheelhouse/${lock_digest}"
if [[ ! -f "${FRUITS_REHEARSAL_WHEELHOUSE}/.complete" ]]; then
  "${python}" scripts/cluster_requirements.py wheelhouse "${FRUITS_REHEARSAL_WHEELHOUSE}" >&2
  touch "${FRUITS_REHEARSAL_WHEELHOUSE}/.complete"
fi
export FRUITS_REHEARSAL_JARS FRUITS_REHEARSAL_WHEELHOUSE
exec unshare --net --mount --uts --pid --mount-proc --fork --kill-child -- "${BASH_SOURCE[0]}" --inside "$@"
