"""Fixtures for the CDK tests: bare stacks for single constructs, and one synthesized copy of the full app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aws_cdk import App, Stack
from cdkapp import SynthesizedApp, cdk_context, synthesize


@pytest.fixture
def bare_stack() -> Callable[..., Stack]:
    """``bare_stack(**context)``: an empty Stack in an App with cdk.json's context (+ overrides)."""

    def make(**overrides: Any) -> Stack:
        return Stack(App(context=cdk_context(**overrides)), "Test")

    return make


@pytest.fixture(scope="module")
def full_app(tmp_path_factory: pytest.TempPathFactory) -> SynthesizedApp:
    """The whole app with cdk.json's defaults, synthesized once per test module."""
    return synthesize(tmp_path_factory.mktemp("app"))
