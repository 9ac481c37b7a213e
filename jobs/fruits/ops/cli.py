"""`fruits`: run the Fruits featurize-and-PCA job on the deployed EMR cluster and fetch its results.

    fruits submit [--stack NAME] [--name STEP_NAME] [--wait] -- [job options]
    fruits status [STEP_ID] [--json]
    fruits results [--run RUN_ID] [--dest DIR]
    fruits runs [--json]

Everything is found from the CloudFormation stack's outputs (default stack FruitsEmrStack), so no bucket or
cluster id is ever typed. Exit codes: 0 done; 1 `status` (or `submit --wait`) reports a step that failed, was
cancelled or interrupted; 2 usage errors and anything not found (stack, output, step, commit, run) or refused.
This module only parses arguments and prints; the work is in `fruits.ops.aws`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from fruits.ops import aws

EXIT_OK, EXIT_STEP_FAILED, EXIT_USAGE = 0, 1, 2
COUNT_KEYS = ("found", "reused", "featurized", "rejected")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; common options are accepted after the command (`fruits runs --stack X`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--stack", metavar="NAME", default=aws.DEFAULT_STACK, help="CDK stack name (default: %(default)s)"
    )
    common.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    common.add_argument("--profile", help="AWS profile (default: the AWS configuration's)")

    parser = argparse.ArgumentParser(
        prog="fruits",
        description="Run the Fruits featurize-and-PCA job on the deployed EMR cluster and fetch its results.",
        epilog="Exit codes: 0 ok, 1 the step failed, 2 usage error or not found.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="add the job as a step on the cluster",
        description="Add the job step to the stack's cluster and print its step id. "
        "Job options go after `--`, e.g. `fruits submit -- --k 50 --limit 1000`.",
        usage="fruits submit [-h] [--stack NAME] [--region REGION] [--profile PROFILE] [--name STEP_NAME] "
        "[--wait] [--poll SECONDS] -- [job options]",
    )
    submit.add_argument(
        "--name", metavar="STEP_NAME", default=aws.DEFAULT_STEP_NAME, help="step name (default: %(default)s)"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the step to end, then print its status")
    submit.add_argument(
        "--poll", metavar="SECONDS", type=float, default=30.0, help="seconds between checks with --wait"
    )

    status = commands.add_parser(
        "status",
        parents=[common],
        help="a step's state, its run's counts or its failure",
        description="Show a step's state (default: the newest step of the job on the cluster): "
        "when completed the latest commit's counts and where the results are, "
        "when failed the reason and the stderr log.",
    )
    status.add_argument("step_id", nargs="?", metavar="STEP_ID", help="EMR step id, s-...")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--lines", type=int, default=20, help="stderr lines to show on failure")

    results = commands.add_parser(
        "results",
        parents=[common],
        help="download a committed run's files",
        description="Download results.csv, manifest.json, rejected.csv and the plots of the latest committed "
        "run (or --run) into DIR.",
    )
    results.add_argument("--run", metavar="RUN_ID", help="a committed run id (default: the latest)")
    results.add_argument(
        "--dest", type=Path, metavar="DIR", help="target folder (default: fruits-results/RUN_ID)"
    )

    runs = commands.add_parser(
        "runs", parents=[common], help="list committed runs", description="List committed runs, oldest first."
    )
    runs.add_argument("--json", action="store_true", help="print the commit objects as a JSON list")
    return parser


class Clients:
    """Creates each boto3 client on first use, from one session, so `runs` never needs EMR permissions."""

    def __init__(self, region: str | None, profile: str | None) -> None:
        self._session = boto3.Session(region_name=region, profile_name=profile)
        self._made: dict[str, Any] = {}

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._made:
            self._made[service] = self._session.client(service)
        return self._made[service]


def _counts(counts: dict[str, Any] | None) -> str:
    counts = counts or {}
    return "  ".join(f"{key} {counts.get(key, '-')}" for key in COUNT_KEYS)


def print_status(report: dict[str, Any]) -> None:
    """The human form of `aws.step_report`."""
    print(f"step      {report['step_id']}  {report.get('name') or ''}".rstrip())
    print(f"cluster   {report['cluster_id']}")
    times = ", ".join(f"{k} {report[k]}" for k in ("started", "ended") if report.get(k))
    print(f"state     {report['state']}" + (f"  ({times})" if times else ""))
    if report["state"] == "COMPLETED":
        commit = report.get("commit")
        if commit is None:
            print(f"commit    none under {report['results_uri']}: the step published no run")
            return
        print(
            f"commit    {commit.get('number')}  run {commit.get('run_id')}  at {commit.get('committed_at')}"
        )
        if report.get("commit_predates_step"):
            print("          (older than this step: the step did not publish a run of its own)")
        print(f"counts    {_counts(commit.get('counts'))}")
        print(f"results   {report['run_uri']}")
        print(f"latest    {report['results_uri']}results.csv  (fetch with: fruits results)")
    elif report["state"] in aws.FAILED_STEP_STATES:
        print(f"reason    {report.get('reason') or 'not given by EMR'}")
        print(f"stderr    {report['stderr_uri']}")
        if report.get("failure_log") and report["failure_log"] != report["stderr_uri"]:
            print(f"log       {report['failure_log']}")
        tail = report.get("stderr_tail")
        if tail is None:
            print("          (not readable yet: EMR copies step logs to S3 every few minutes)")
        elif tail:
            print(f"--- last {len(tail)} lines of stderr ---")
            print("\n".join(tail))


def print_runs(commits: list[dict[str, Any]]) -> None:
    """A table of commits, oldest first; `*` marks the current one."""
    header = ("", "NUMBER", "RUN ID", "COMMITTED AT", *(k.upper() for k in COUNT_KEYS))
    rows = [header]
    for index, commit in enumerate(commits):
        counts = commit.get("counts") or {}
        current = "*" if index == len(commits) - 1 else ""
        rows.append(
            (
                current,
                str(commit.get("number", "")),
                str(commit.get("run_id", "")),
                str(commit.get("committed_at", "")),
                *(str(counts.get(k, "-")) for k in COUNT_KEYS),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        # Text columns left-aligned, numbers right-aligned.
        cells = [
            cell.ljust(w) if i < 4 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _split_job_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: before it the tool's options, after it the job's, passed on untouched.

    Done before argparse, which would otherwise try to read job options such as `--k 50` as its own.
    """
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def run(args: argparse.Namespace, job_args: list[str], clients: Clients) -> int:
    """Carry out one parsed command; return the exit code."""
    outputs = aws.stack_outputs(clients.cloudformation, args.stack)
    if args.command == "submit":
        cluster_id, step_id = aws.submit_job(clients.emr, outputs, job_args, args.name)
        print(step_id)
        print(
            f"added step {step_id} to cluster {cluster_id}; follow it with: fruits status {step_id}",
            file=sys.stderr,
        )
        if not args.wait:
            return EXIT_OK
        aws.wait_for_step(clients.emr, cluster_id, step_id, args.poll)
        report = aws.step_report(clients.emr, clients.s3, outputs, step_id)
        print_status(report)
        return EXIT_STEP_FAILED if report["state"] in aws.FAILED_STEP_STATES else EXIT_OK
    if args.command == "status":
        report = aws.step_report(clients.emr, clients.s3, outputs, args.step_id, args.lines)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print_status(report)
        return EXIT_STEP_FAILED if report["state"] in aws.FAILED_STEP_STATES else EXIT_OK
    if args.command == "results":
        results_uri = outputs["ResultsUri"]
        commit = aws.find_commit(clients.s3, results_uri, args.run)
        dest = args.dest or Path("fruits-results") / str(commit["run_id"])
        download = aws.download_run(clients.s3, results_uri, commit, dest)
        for path in download.files:
            print(path)
        print(
            f"run {commit['run_id']} (commit {commit.get('number')}) downloaded into {dest}", file=sys.stderr
        )
        if download.missing:
            print(f"run {commit['run_id']} has no {', '.join(download.missing)}", file=sys.stderr)
        return EXIT_OK
    if args.command == "runs":
        results_uri = outputs["ResultsUri"]
        commits = aws.list_commits(clients.s3, results_uri)
        if not commits:
            raise aws.OpsError(f"no commits yet under {results_uri}: no run of the job has completed")
        if args.json:
            print(json.dumps(commits, indent=2))
        else:
            print_runs(commits)
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")  # argparse only lets known commands through


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fruits` console script; returns the exit code instead of raising."""
    tool_args, job_args = _split_job_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(tool_args)  # exits 2 with argparse's usage message on a usage error
    if job_args and args.command != "submit":
        parser.error("job options after `--` only apply to `fruits submit`")
    try:
        return run(args, job_args, Clients(args.region, args.profile))  # a bad --profile raises in here
    except aws.OpsError as err:
        print(f"fruits: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Only our polling stops: a submitted step keeps running on the cluster.
        print("fruits: interrupted (a submitted step keeps running; see `fruits status`)", file=sys.stderr)
        return 130
    except (ClientError, BotoCoreError) as err:
        # Credentials, permissions, throttling: still one line, not a traceback.
        print(f"fruits: AWS error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
