"""`fruits identify PHOTO... --run OUTPUT_OR_RUN [--top N] [--json]`: which fruit is in each photo, by a committed run.

``--run`` names the run whose classifier and known images answer (:mod:`fruits.identify`):

- an output, a local folder or an ``s3://`` prefix: its latest committed run;
- a run's own folder, ``<output>/runs/<run_id>``: that run, once committed;
- a bare run id: that run under the stack's ``ResultsUri`` (``--stack``).

Only the last form asks CloudFormation; S3 is read with the CLI's own boto3 client (its profile and region),
through the job's :class:`~fruits.storage.Store`. Nothing starts Spark. Output: per photo the predicted class
with its probability and the runners-up, then its nearest known images; ``--json`` prints one document. A photo
that cannot be used gets the job's reason on one stderr line, and the others are answered (exit 1 then).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fruits import layout
from fruits.storage import LocalStore, StoreError, open_store

from . import aws, runs

DEFAULT_TOP = 5
EXIT_OK, EXIT_UNANSWERED = 0, 1


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `identify` subcommand, on the CLI's subparsers (``common``: --stack, --region, --profile)."""
    parser = commands.add_parser(
        "identify",
        parents=[common],
        help="which fruit is in each photo, by a committed run's classifier and its nearest known images",
        description="Answer each photo with a committed run: the predicted class with its probability and the "
        "runners-up (the run's shrinkage LDA, the classifier its quality report scored), and the most similar "
        "images the run featurized (Euclidean distance on its k principal components). Photos are decoded and "
        "featurized exactly as the job does, with the run's own model file; nothing starts Spark. Exit 0 when "
        "every photo is answered, 1 when some could not be (each reason on one stderr line), 2 usage errors.",
    )
    parser.add_argument(
        "photos", nargs="*", metavar="PHOTO", help="photo files (.jpg, .jpeg, .png), local or s3:// objects"
    )
    parser.add_argument(
        "--run",
        required=True,
        metavar="OUTPUT_OR_RUN",
        help="an output (folder or s3:// prefix: its latest run), a run's folder <output>/runs/<run_id>, "
        "or a run id of the stack's ResultsUri",
    )
    parser.add_argument(
        "--top",
        type=_count,
        default=DEFAULT_TOP,
        metavar="N",
        help="similar known images per photo (default: %(default)s)",
    )
    parser.add_argument(
        "--classifier",
        choices=("full", "pca"),
        default="full",
        help="the run's classifier on all features (full, the default) or on its k components (pca)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def resolve_run(text: str, clients: Any, stack: str) -> tuple[str, str | None]:
    """(output root, run id or None for the latest) of ``--run``."""
    if layout.is_run_id(text):
        return aws.stack_outputs(clients.cloudformation, stack)["ResultsUri"], text
    return layout.split_run_uri(text)


def _open_output(root: str, clients: Any) -> Any:
    try:
        store = open_store(
            root, s3_client=clients.s3 if root.startswith(("s3://", "s3a://", "s3n://")) else None
        )
    except ValueError as error:
        raise aws.OpsError(f"--run {root}: {error}") from None
    if isinstance(store, LocalStore) and not os.path.isdir(store.root):
        raise aws.OpsError(f"no such output: {root} (give an output folder, an s3:// prefix or a run id)")
    return store


def _percent(probability: float) -> str:
    return f"{100 * probability:.1f}%"


def print_answer(answer: Any) -> None:
    """The human form of one :class:`fruits.identify.Answer` (a photo not answered is not printed here)."""
    if answer.classes:
        (best, probability), *others = answer.classes
        then = ", ".join(f"{name} {_percent(p)}" for name, p in others)
        print(f"{answer.path}: {best} {_percent(probability)}" + (f"  (then {then})" if then else ""))
    else:
        print(f"{answer.path}: no class")
    width = max((len(s.label) for s in answer.similar), default=0)
    for similar in answer.similar:
        print(f"    {similar.distance:9.3f}  {similar.label:<{width}}  {similar.path}")


def json_document(
    identifier: Any, commit: dict[str, Any], output: str, space: str, answers: list[Any]
) -> dict:
    """What ``--json`` prints: the run that answered (``run``), then one answer per photo, in order."""
    described = identifier.description
    on = "all features" if space == "full" else f"the {described['k']} components"
    return {
        "run": {
            "run_id": identifier.run_id,
            "commit": commit.get("number"),
            "output": output,
            "classifier": f"{described['classifier']['name']}, on {on}" if identifier.classifiers else None,
            "no_classifier": None if identifier.classifiers else identifier.no_classifier,
            "known_images": described["known_images"],
            "k": described["k"],
            "model_key": described["model_key"],
        },
        "answers": [answer.as_json() for answer in answers],
    }


def run(args: argparse.Namespace, clients: Any) -> int:
    """`fruits identify`: answer every photo; the exit code."""
    from fruits import identify  # NumPy, Pillow, Arrow, LiteRT: only this command needs them

    if not args.photos:
        raise aws.OpsError("no photos given: name one or more photo files before or after --run")
    root, run_id = resolve_run(args.run, clients, args.stack)
    store = _open_output(root, clients)
    try:
        commit = runs.find_commit(store, run_id)
        identifier = identify.open_run(
            store, commit, s3_client=clients.s3 if not isinstance(store, LocalStore) else None
        )
    except (identify.IdentifyError, StoreError) as error:
        raise aws.OpsError(str(error)) from None
    if identifier.classifiers is None:
        print(
            f"fruits: run {identifier.run_id} has no classifier: {identifier.no_classifier}; "
            "similar images only",
            file=sys.stderr,
        )
    answers = []
    for answer in identifier.answer(args.photos, top=args.top, space=args.classifier):
        answers.append(answer)
        if answer.reason is not None:
            print(f"fruits: {answer.path}: {answer.reason}", file=sys.stderr)
        elif not args.json:
            print_answer(answer)  # as it comes: a long list of photos shows progress
    if args.json:
        print(
            json.dumps(json_document(identifier, commit, store.uri_for(), args.classifier, answers), indent=2)
        )
    return EXIT_UNANSWERED if any(answer.reason is not None for answer in answers) else EXIT_OK
