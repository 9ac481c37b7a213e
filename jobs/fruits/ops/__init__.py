"""Operator commands for the deployed Fruits job: submit a run, follow it, list and fetch committed results.

`aws` (stack outputs, cluster, steps), `runs` (committed runs, through the job's own fruits.commits), `logs`
(step and driver logs on S3), `status` (one step's report) and `smoke` (an end-to-end check) hold the boto3
logic as small functions that take their clients, so tests drive them against moto; `cli` is the thin
argparse layer behind the `fruits` console script.
"""
