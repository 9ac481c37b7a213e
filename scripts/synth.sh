#!/usr/bin/env bash
# Synthesize every stack with the CDK CLI pinned in package.json (npm ci) and the venv's Python.
# Fails on any synth error and on any cdk-nag finding (cdk-nag 3 runs as CDK policy validation: an
# unacknowledged error or warning makes `cdk synth` exit non-zero and writes cdk.out/validation-report.json).
#
#   scripts/synth.sh                  # default context (cdk.json)
#   scripts/synth.sh -c ephemeral=true -c taskSpotCount=2
#   CDK_OUT=/tmp/out scripts/synth.sh -c model=mobilenet   # another output folder (the cloud rehearsal's)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

if [[ -x .venv/bin/python ]]; then
  export PATH="${root}/.venv/bin:${PATH}"
fi
python3 -c 'import aws_cdk, cdk_nag' 2>/dev/null \
  || { echo "synth: aws-cdk-lib / cdk-nag not importable by python3; run 'make venv' first" >&2; exit 1; }

wanted="$(node -p 'require("./package.json").devDependencies["aws-cdk"]')"
if [[ "$(node -p 'try { require("aws-cdk/package.json").version } catch (e) { "" }' 2>/dev/null)" != "${wanted}" ]]; then
  npm ci --no-audit --no-fund
fi
cli_version="$(npx --no-install cdk --version 2>/dev/null | cut -d' ' -f1)"
[[ "${cli_version}" == "${wanted}" ]] || { echo "synth: cdk CLI is ${cli_version}, package.json pins ${wanted}" >&2; exit 1; }

out="${CDK_OUT:-cdk.out}"
rm -rf "${out}"
# The pinned CLI synthesizes every stack of the app when given no stack name (it has no --all for synth).
npx --no-install cdk synth --quiet --ci --output "${out}" "$@"

# Belt and braces: the validation report must not list any unacknowledged finding.
report="${out}/validation-report.json"
if [[ -f "${report}" ]]; then
  python3 - "${report}" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
findings = [
    f"{v.get('severity')} {v['ruleName']} at {c['constructPath']}"
    for plugin in report.get("pluginReports", [])
    for v in plugin.get("violations", [])
    for c in v.get("violatingConstructs", [])
]
failed = [p["pluginName"] for p in report.get("pluginReports", []) if p.get("conclusion") != "success"]
if findings or failed:
    print("\n".join(findings), file=sys.stderr)
    sys.exit(f"synth: policy validation failed ({', '.join(failed) or 'findings'}): {len(findings)} finding(s)")
PY
fi
stacks="$(python3 -c 'import json, sys; print(" ".join(sorted(a for a, v in json.load(open(sys.argv[1]))["artifacts"].items() if v["type"] == "aws:cloudformation:stack")))' "${out}/manifest.json")"
echo "synth: OK (${cli_version}): ${stacks}"
