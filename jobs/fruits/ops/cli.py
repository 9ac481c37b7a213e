"""`fruits`: run the Fruits featurize-and-PCA job on the deployed EMR cluster and fetch its results.

    fruits submit [--stack NAME] [--name STEP_NAME] [--wait] [-- job options]
    fruits status [STEP_ID] [--json] [--lines N]
    fruits results [--run RUN_ID] [--dest DIR]
    fruits runs [--json]
    fruits smoke [--timeout MINUTES] [--keep]
    fruits identify PHOTO... --run OUTPUT_OR_RUN [--top N] [--json]

Everything is found from the CloudFormation stack's outputs (default stack FruitsEmrStack), so no bucket or
cluster id is ever typed. Exit codes: 0 done; 1 `status` (or `submit --wait`) reports a step that failed, was
cancelled or interrupted, or `smoke` failed; 2 usage errors, anything not found (stack, output, step, commit,
run) or refused, and a terminated cluster (with the command that deploys a new one). Errors are one line.
This module only parses arguments and prints; the work is in the other modules of `fruits.ops`.
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

from fruits.commits import DamagedCommit
from fruits.ops import aws, identify, runs, smoke
from fruits.ops.status import FAILED, step_report

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
        epilog="Exit codes: 0 ok, 1 the step failed (smoke: FAIL), 2 usage error, not found or cluster ended.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="add the job as a step on the cluster",
        description="Add the job step, as the stack's outputs describe it, to the stack's cluster and print "
        "its step id. Job options go after `--`, e.g. `fruits submit -- --k 50 --limit 1000`, and replace the "
        "stack's StepArguments; without `--` the step gets StepArguments; a bare `--` gives no options "
        "(the cluster's spark-defaults).",
        usage="fruits submit [-h] [--stack NAME] [--region REGION] [--profile PROFILE] [--name STEP_NAME] "
        "[--wait] [--poll SECONDS] [-- job options]",
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
        help="a step's state, its run or its failure, and its logs",
        description="Show a step's state (default: the newest step of the job on the cluster): "
        "when completed the run it published and where the results are, or that it published none; "
        "when failed the reason; and where the step's and the driver's logs are, with their last lines "
        "when they explain a failure or a run that published nothing.",
    )
    status.add_argument("step_id", nargs="?", metavar="STEP_ID", help="EMR step id, s-...")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--lines", type=int, default=20, help="log lines to show (default: %(default)s)")

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

    smoke_cmd = commands.add_parser(
        "smoke",
        parents=[common],
        help="end-to-end check of a deployed stack on synthetic images",
        description="Upload a few synthetic images (two labels and one bad file) to a scratch prefix under "
        f"InputUri ({smoke.SMOKE_DIR}/<id>/), run the stack's job step on them with --limit {smoke.LIMIT} into "
        "scratch prefixes under ResultsUri and FeatureStoreUri, wait, check results.csv, the manifest's "
        "counts and the logs, print PASS or FAIL, and delete the scratch prefixes. Exit 0 on PASS, 1 on FAIL.",
    )
    smoke_cmd.add_argument(
        "--timeout",
        metavar="MINUTES",
        type=float,
        default=smoke.DEFAULT_TIMEOUT_MINUTES,
        help="give up (and cancel the step) after this long (default: %(default)g)",
    )
    smoke_cmd.add_argument(
        "--poll",
        metavar="SECONDS",
        type=float,
        default=smoke.DEFAULT_POLL_SECONDS,
        help="seconds between checks (default: %(default)g)",
    )
    smoke_cmd.add_argument("--keep", action="store_true", help="keep the scratch images and outputs")
    smoke_cmd.add_argument("--name", metavar="STEP_NAME", default="fruits-smoke", help="step name")
    identify.add_parser(commands, common)
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


def _print_tail(what: str, uri: str | None, lines: list[str] | None) -> None:
    if lines is None:
        where = f" ({uri})" if uri else ""
        print(f"          ({what} not readable yet{where}: EMR copies logs to S3 periodically)")
    elif lines:
        print(f"--- last {len(lines)} lines of {what} ---")
        print("\n".join(lines))


def _print_logs(report: dict[str, Any]) -> None:
    """Where the step's and the driver's logs are, with their tails when the report carries them."""
    if "stderr_uri" not in report:
        return  # a pending step has no logs yet
    print(f"step log  {report['stderr_uri']}  (spark-submit's report)")
    if report.get("driver_log_uri"):
        print(f"driver    {report['driver_log_uri']}")
    elif report.get("containers_uri"):
        print(f"driver    not uploaded yet; it will be under {report['containers_uri']}")
    else:
        print("driver    unknown until the step log, which names the YARN application, is uploaded")
    if "stderr_tail" in report:
        _print_tail("the step log", report["stderr_uri"], report["stderr_tail"])
    if report.get("driver_log_uri") and "driver_log_tail" in report:
        _print_tail("the driver log", report["driver_log_uri"], report["driver_log_tail"])


def print_status(report: dict[str, Any]) -> None:
    """The human form of `status.step_report`: the outcome in the first line, then what explains it."""
    print(f"{report['outcome']}: {report['summary']}")
    print(f"step      {report['step_id']}  {report.get('name') or ''}".rstrip())
    state = f"  ({report['cluster_state']})" if report.get("cluster_state") else ""
    print(f"cluster   {report['cluster_id']}{state}")
    times = ", ".join(f"{k} {report[k]}" for k in ("started", "ended") if report.get(k))
    print(f"state     {report['state']}" + (f"  ({times})" if times else ""))
    if report["state"] == "COMPLETED":
        commit = report.get("commit")
        if report.get("commit_damaged"):
            print(f"result    {report['commit_damaged']}")
        elif not report.get("published"):
            why = "no commit yet" if commit is None else "the latest commit is older than the step"
            print(f"result    completed without publishing a run ({why}; see the driver log)")
        if commit is not None:
            label = "commit" if report.get("published") else "current"
            print(
                f"{label:<9} {commit.get('number')}  run {commit.get('run_id')}  at {commit.get('committed_at')}"
            )
            print(f"counts    {_counts(commit.get('counts'))}")
            print(f"results   {report['run_uri']}")
            print(f"latest    {report['results_uri']}results.csv  (fetch with: fruits results)")
    elif report["state"] in aws.FAILED_STEP_STATES:
        print(f"reason    {report.get('reason') or 'not given by EMR'}")
        if report.get("failure_log") and report["failure_log"] not in (
            report.get("stderr_uri"),
            report.get("driver_log_uri"),
        ):
            print(f"log       {report['failure_log']}  (EMR's pick of the log with the cause)")
    _print_logs(report)


def print_runs(commits: list[dict[str, Any] | DamagedCommit]) -> None:
    """A table of commits, oldest first; `*` marks the current one, `damaged` one the job did not write. When any
    run was triggered (autorun), a last column names what started each (the state machine's execution; `-` for
    the others)."""
    triggered = any(not isinstance(commit, DamagedCommit) and commit.get("trigger") for commit in commits)
    header = (
        "",
        "NUMBER",
        "RUN ID",
        "COMMITTED AT",
        *(k.upper() for k in COUNT_KEYS),
        *(("TRIGGER",) if triggered else ()),
    )
    rows = [header]
    for index, commit in enumerate(commits):
        current = "*" if index == len(commits) - 1 else ""
        if isinstance(commit, DamagedCommit):
            rows.append(
                (
                    current,
                    str(commit.number),
                    "damaged",
                    "",
                    *("-" for _ in COUNT_KEYS),
                    *(("-",) if triggered else ()),
                )
            )
            continue
        counts = commit.get("counts") or {}
        rows.append(
            (
                current,
                str(commit.get("number", "")),
                str(commit.get("run_id", "")),
                str(commit.get("committed_at", "")),
                *(str(counts.get(k, "-")) for k in COUNT_KEYS),
                *((str(commit.get("trigger") or "-"),) if triggered else ()),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        # Text columns left-aligned, numbers right-aligned.
        cells = [
            cell.ljust(w) if i < 4 or i == len(COUNT_KEYS) + 4 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def _as_json(commit: dict[str, Any] | DamagedCommit) -> dict[str, Any]:
    """A commit as `fruits runs --json` prints it; a damaged one as its number and what is wrong."""
    if isinstance(commit, DamagedCommit):
        return {"number": commit.number, "damaged": commit.problem, "uri": commit.uri}
    return commit


def _split_job_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first `--`: before it the tool's options, after it the job's, passed on untouched.

    Done before argparse, which would otherwise try to read job options such as `--k 50` as its own. None
    (no `--`) differs from [] (a bare `--`): the first means the stack's StepArguments, the second none.
    """
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, None


def _status(args: argparse.Namespace, outputs: aws.StackOutputs, clients: Clients) -> int:
    """`fruits status`: the report, then (on a dead cluster) the command that deploys a new one."""
    state = aws.cluster_state(clients.emr, outputs["ClusterId"])
    ended = state in aws.ENDED_CLUSTER_STATES
    try:
        report = step_report(clients.emr, clients.s3, outputs, args.step_id, args.lines, cluster_state=state)
    except aws.OpsError:
        if not ended:
            raise
        report = None  # no step to show: the advice below is the answer
    if report is not None:
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print_status(report)
    if ended and outputs.get(aws.AUTORUN_PREFIX_OUTPUT):
        # With autorun a stopped stack cluster is the usual state: triggered runs start their own.
        print(
            f"fruits: the stack's cluster {outputs['ClusterId']} is {state}; triggered runs start their own",
            file=sys.stderr,
        )
    elif ended:
        raise aws.OpsError(aws.redeploy_advice(outputs, state))
    return EXIT_STEP_FAILED if report and report["outcome"] == FAILED else EXIT_OK


def _smoke(args: argparse.Namespace, outputs: aws.StackOutputs, clients: Clients) -> int:
    """`fruits smoke`: progress on stderr, the checks and the verdict on stdout."""
    result = smoke.run_smoke(
        clients.emr,
        clients.s3,
        outputs,
        name=args.name,
        timeout=args.timeout * 60,
        poll=args.poll,
        keep=args.keep,
        progress=sys.stderr,
    )
    marks = {True: "ok  ", False: "FAIL", None: "warn"}
    for check in result.checks:
        print(f"{marks[check.ok]}  {check.name:<12} {check.detail}")
    if not result.passed and result.log_tail:
        print(f"--- last {len(result.log_tail)} lines of {result.log_uri} ---")
        print("\n".join(result.log_tail))
    if result.cleanup_error:
        kept = f"NOT deleted ({result.cleanup_error}); delete by hand"
    else:
        kept = "deleted (keep them with --keep)" if result.cleaned else "kept"
    print(f"scratch {kept}: {', '.join(result.scratch.uris())}")
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{verdict}  step {result.step_id}  logs {result.log_uri or 'not uploaded yet'}")
    return EXIT_OK if result.passed else EXIT_STEP_FAILED


def run(args: argparse.Namespace, job_args: list[str] | None, clients: Clients) -> int:
    """Carry out one parsed command; return the exit code."""
    if args.command == "identify":  # an output or run named directly: the stack only for a bare run id
        return identify.run(args, clients)
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
        report = step_report(clients.emr, clients.s3, outputs, step_id)
        print_status(report)
        return EXIT_STEP_FAILED if report["outcome"] == FAILED else EXIT_OK
    if args.command == "status":
        return _status(args, outputs, clients)
    if args.command == "smoke":
        return _smoke(args, outputs, clients)
    store = runs.results_store(clients.s3, outputs["ResultsUri"])
    if args.command == "results":
        commit = runs.find_commit(store, args.run)
        dest = args.dest or Path("fruits-results") / str(commit["run_id"])
        download = runs.download_run(store, commit, dest)
        for path in download.files:
            print(path)
        print(
            f"run {commit['run_id']} (commit {commit.get('number')}) downloaded into {dest}", file=sys.stderr
        )
        if download.missing:
            print(f"run {commit['run_id']} has no {', '.join(download.missing)}", file=sys.stderr)
        return EXIT_OK
    if args.command == "runs":
        commits = runs.scan_commits(store)
        if args.json:
            print(json.dumps([_as_json(commit) for commit in commits], indent=2))
        else:
            print_runs(commits)
        for commit in commits:
            if isinstance(commit, DamagedCommit):  # one line each, naming the object
                current = commit is commits[-1]
                fix = runs.DAMAGED_COMMIT_FIX if current else "earlier runs are listed; it names none of them"
                print(f"fruits: {commit}; {fix}", file=sys.stderr)
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")  # argparse only lets known commands through


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fruits` console script; returns the exit code instead of raising."""
    tool_args, job_args = _split_job_args(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(tool_args)  # exits 2 with argparse's usage message on a usage error
    if job_args is not None and args.command != "submit":
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
