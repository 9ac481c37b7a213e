"""Helpers for the CDK tests: bare stacks for single constructs, and one synthesized copy of the full app.

``fruits_infra`` lives under cdk/ (``cdk/app.py`` imports it as a top-level package), so it goes on sys.path.
Every App gets the context of cdk.json (feature flags + the app's defaults), exactly as ``cdk synth`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "cdk"))

from aws_cdk import App, Stack  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402
from fruits_infra.artifacts import build_bundle  # noqa: E402
from fruits_infra.stacks import wire  # noqa: E402

CDK_JSON = json.loads((REPO / "cdk.json").read_text())


def cdk_context(**overrides: Any) -> dict[str, Any]:
    return {**CDK_JSON["context"], **overrides}


class SynthesizedApp:
    """The full app synthesized into ``outdir`` (cdk-nag included).

    ``sources``: keyword arguments for :func:`build_bundle` (``jobs_dir``, ``requirements``, ``bootstrap_dir``),
    to synthesize the app with a changed job, pin list or bootstrap script.
    """

    def __init__(
        self, outdir: Path, bundle_dir: Path, *, sources: dict[str, Path] | None = None, **overrides: Any
    ) -> None:
        build_bundle(bundle_dir, **(sources or {}))
        self.bundle_dir = bundle_dir
        self.app = App(context=cdk_context(**overrides), outdir=str(outdir))
        self.data_stack, self.emr_stack = wire(self.app, bundle_dir=bundle_dir)
        self.error: Exception | None = None
        try:
            self.assembly = self.app.synth()
        except RuntimeError as exc:  # ValidationFailed: keep the report for the nag tests to print
            self.assembly = None
            self.error = exc
        self.outdir = outdir
        self.report = json.loads((outdir / "validation-report.json").read_text())

    def findings(self, severity: str) -> list[str]:
        return [
            f"{v['ruleName']} at {c['constructPath']}"
            for plugin in self.report.get("pluginReports", [])
            for v in plugin.get("violations", [])
            if v.get("severity") == severity
            for c in v.get("violatingConstructs", [])
        ]

    def template(self, stack: Stack) -> Template:
        assert self.assembly is not None, f"synthesis failed: {self.error}"
        data = json.loads((self.outdir / f"{stack.artifact_id}.template.json").read_text())
        return Template.from_json(data)


def synthesize(tmp: Path, *, sources: dict[str, Path] | None = None, **overrides: Any) -> SynthesizedApp:
    """The full app with cdk.json's context plus ``overrides``, synthesized under ``tmp``."""
    return SynthesizedApp(tmp / "cdk.out", tmp / "bundle", sources=sources, **overrides)
