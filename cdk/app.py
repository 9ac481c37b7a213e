#!/usr/bin/env python3
"""CDK app: builds the job bundle, then wires FruitsDataStack -> FruitsEmrStack and cdk-nag.

Run it through the pinned CLI from the repository root: ``scripts/synth.sh`` or ``npx cdk synth``
(see cdk.json and the README, "Deploy on AWS").
"""

from __future__ import annotations

from aws_cdk import App
from fruits_infra.artifacts import REPO_ROOT, build_bundle
from fruits_infra.stacks import wire

BUNDLE_DIR = REPO_ROOT / "build" / "job-bundle"


def main() -> None:
    app = App()
    build_bundle(BUNDLE_DIR)
    wire(app, bundle_dir=BUNDLE_DIR)
    app.synth()


if __name__ == "__main__":
    main()
