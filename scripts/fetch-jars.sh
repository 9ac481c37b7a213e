#!/usr/bin/env bash
# Fetch the S3A connector that matches pyspark's Hadoop, for the cloud rehearsal (tests/rehearsal): hadoop-aws at
# the Hadoop version pyspark bundles (hadoop-client-api-<version>.jar) and the aws-java-sdk-bundle that this
# hadoop-aws release depends on, resolved by Maven from its pom (never typed here). Prints the folder holding them.
#
# Cached between runs on one machine, outside git: FRUITS_JAR_CACHE, default /var/cache/fruits/jars as root (the
# rehearsal's Spark processes run as another user and must read them), else ~/.cache/fruits/jars.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-${root}/.venv/bin/python}"
jars="$("${python}" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
api="$(cd "${jars}" && ls hadoop-client-api-*.jar)"
hadoop_version="${api#hadoop-client-api-}"
hadoop_version="${hadoop_version%.jar}"

if [[ -n "${FRUITS_JAR_CACHE:-}" ]]; then cache="${FRUITS_JAR_CACHE}"
elif (( EUID == 0 )); then cache=/var/cache/fruits/jars
else cache="${XDG_CACHE_HOME:-${HOME}/.cache}/fruits/jars"; fi
dest="${cache}/hadoop-${hadoop_version}"

if [[ -s "${dest}/hadoop-aws-${hadoop_version}.jar" ]] && compgen -G "${dest}/aws-java-sdk-bundle-*.jar" >/dev/null; then
  echo "${dest}"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch-jars: mvn is missing (Debian: apt-get install maven)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
cat > "${work}/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fruits</groupId><artifactId>rehearsal-jars</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.hadoop</groupId><artifactId>hadoop-aws</artifactId><version>${hadoop_version}</version>
    </dependency>
  </dependencies>
</project>
POM
echo "fetch-jars: hadoop-aws ${hadoop_version} and its aws-java-sdk-bundle from Maven into ${dest}" >&2
mvn -q -B -f "${work}/pom.xml" dependency:copy-dependencies \
  -DincludeArtifactIds=hadoop-aws,aws-java-sdk-bundle -DoutputDirectory="${work}/jars" >&2
mkdir -p "${cache}"
rm -rf "${dest}.partial"
mv "${work}/jars" "${dest}.partial"
chmod -R a+rX "${dest}.partial"
mv -T "${dest}.partial" "${dest}"  # readers see no folder or a complete one
chmod a+rx "${cache}" "$(dirname "${cache}")" 2>/dev/null || true
echo "${dest}"
