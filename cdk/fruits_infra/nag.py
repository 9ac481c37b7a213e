"""cdk-nag wiring: the AwsSolutions pack on the whole app, and one helper for acknowledgments.

cdk-nag 3 runs as a CDK policy-validation plugin: any unacknowledged finding (error *or* warning) makes
``cdk synth`` exit 1 and ``Template.from_stack`` raise. Acknowledgments go through :func:`acknowledge`, one
finding at a time, and must carry a written reason.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

_MIN_REASON = 20


def apply_nag(app: App) -> None:
    """Run the AwsSolutions pack over every stack of ``app`` at synthesis."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))


def acknowledge(construct: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding (e.g. ``AwsSolutions-IAM5[Resource::*]``) on ``construct``."""
    if not finding.startswith("AwsSolutions-"):
        raise ValueError(f"not an AwsSolutions finding id: {finding!r}")
    if len(reason.strip()) < _MIN_REASON:
        raise ValueError(f"acknowledging {finding} needs a real reason, got {reason!r}")
    Validations.of(construct).acknowledge(Acknowledgment(id=finding, reason=reason))
