#!/usr/bin/env python3
"""CDK app: builds the job bundle, then wires FruitsDataStack -> FruitsEmrStack and cdk-nag.

Run it through the pinned CLI from the repository root: ``scripts/synth.sh`` or ``npx cdk synth``
(see cdk.json and docs/deploy.md).
"""

from __future__ import annotations

from aws_cdk import App
from fruits_infra.artifacts import REPO_ROOT, build_bundle
from fruits_infra.config import FruitsConfig
from fruits_infra.nag import apply_nag
from fruits_infra.stacks import FruitsDataStack, FruitsEmrStack

BUNDLE_DIR = REPO_ROOT / "build" / "job-bundle"


def main() -> App:
    app = App()
    config = FruitsConfig.from_context(app.node)
    build_bundle(BUNDLE_DIR)
    data = FruitsDataStack(app, "FruitsDataStack", config=config, bundle_dir=BUNDLE_DIR)
    emr = FruitsEmrStack(app, "FruitsEmrStack", config=config, storage=data.storage, artifacts=data.artifacts)
    emr.add_stack_dependency(data, "the cluster's bootstrap action and step read the deployed artifacts")
    apply_nag(app)
    app.synth()
    return app


if __name__ == "__main__":
    main()
