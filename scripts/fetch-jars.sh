#!/usr/bin/env bash
# Fetch the cloud rehearsal's JVM side (tests/rehearsal) from Maven: emr-7.13.0's Hadoop line (YARN's
# ResourceManager and NodeManager, the Hadoop 3.4.2 client jars Spark runs on there, and S3A: hadoop-aws with its
# AWS SDK v2 bundle) and Spark's external shuffle service for YARN. What is fetched is in
# tests/rehearsal/maven/*.pom.xml (the versions are pinned there, and resolved by Maven, never typed here).
# Prints the folder holding hadoop/ and shuffle/.
#
# Cached between runs on one machine, outside git: FRUITS_JAR_CACHE, default /var/cache/fruits/jars as root (the
# rehearsal's YARN daemons run as another user and must read them), else ~/.cache/fruits/jars.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
poms="${root}/tests/rehearsal/maven"

if [[ -n "${FRUITS_JAR_CACHE:-}" ]]; then cache="${FRUITS_JAR_CACHE}"
elif (( EUID == 0 )); then cache=/var/cache/fruits/jars
else cache="${XDG_CACHE_HOME:-${HOME}/.cache}/fruits/jars"; fi
# The folder is named by the poms' and this script's content: a change fetches a new set, never mixes two.
digest="$(cat "${poms}"/*.pom.xml "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
dest="${cache}/rehearsal-${digest}"

if [[ -f "${dest}/.complete" ]]; then
  echo "${dest}"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch-jars: mvn is missing (Debian: apt-get install maven)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
echo "fetch-jars: the rehearsal's Hadoop and shuffle-service jars from Maven into ${dest}" >&2
mvn -q -B -f "${poms}/emr-hadoop.pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
  -DoutputDirectory="${work}/out/hadoop" >&2
# Hadoop's own classes come from the NodeManager; logging (slf4j and its bindings) stays the NodeManager's too.
mvn -q -B -f "${poms}/spark-shuffle.pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
  -DexcludeGroupIds=org.apache.hadoop,org.apache.logging.log4j,org.slf4j \
  -DoutputDirectory="${work}/out/shuffle" >&2
touch "${work}/out/.complete"
mkdir -p "${cache}"
rm -rf "${dest}.partial"
mv "${work}/out" "${dest}.partial"
chmod -R a+rX "${dest}.partial"
mv -T "${dest}.partial" "${dest}"  # readers see no folder or a complete one
chmod a+rx "${cache}" "$(dirname "${cache}")" 2>/dev/null || true
echo "${dest}"
