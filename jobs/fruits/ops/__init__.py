"""Operator commands for the deployed Fruits job: submit a run, follow it, list and fetch committed results.

`aws` holds the boto3 logic as small functions that take their clients, so tests drive them against moto;
`cli` is the thin argparse layer behind the `fruits` console script.
"""
