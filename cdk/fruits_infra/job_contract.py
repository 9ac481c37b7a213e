"""What the CDK app takes from the job's own package, so each contract has one owner.

- ImageNet weights: :func:`fruits.models.imagenet_weights_file` names the file Keras fetches; the bootstrap
  downloads exactly that file, where the job looks for it.
- Weights file names: :func:`fruits.models.infer_model_from_filename` reads the architecture from Keras' names.
- Job defaults: keys are :class:`fruits.options.JobOptions` field names, checked by the job's own
  :func:`fruits.options.parse_options`; the cluster names the file with ``spark.fruits.defaults``.
- The engines, the models and the job's own defaults for model, image size and engine (the app's defaults are
  the job's: :func:`fruits.options.default`).
- Where a triggered run leaves its outcome record (:data:`fruits.layout.TRIGGERED_PREFIX`): the autorun state
  machine reads it there.

The job package lives in ``jobs/`` beside ``cdk/``; it is put on ``sys.path`` here (the modules used import only
the standard library and numpy/Pillow, never Spark or TensorFlow).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_JOBS = Path(__file__).resolve().parents[2] / "jobs"
if str(_JOBS) not in sys.path:
    sys.path.insert(0, str(_JOBS))

from fruits.engines import ENGINES  # noqa: E402
from fruits.layout import TRIGGERED_PREFIX  # noqa: E402
from fruits.models import MODELS, ImagenetFile, imagenet_weights_file, infer_model_from_filename  # noqa: E402
from fruits.options import (  # noqa: E402
    DEFAULTS_CONF_KEY,
    JobOptions,
    UsageError,
    default,
    option_names,
    parse_options,
)

__all__ = [
    "DEFAULTS_CONF_KEY",
    "ENGINES",
    "MODELS",
    "TRIGGERED_PREFIX",
    "ImagenetFile",
    "JobOptions",
    "UsageError",
    "check_job_defaults",
    "default",
    "imagenet_weights_file",
    "infer_model_from_filename",
    "option_names",
]


def check_job_defaults(defaults: dict[str, Any]) -> JobOptions:
    """Parse ``defaults`` exactly as the job will read its defaults file; UsageError on any bad key or value.

    A local weights path names a file the bootstrap puts on every node; it does not exist where the app is
    synthesized, so it is checked for its form only.
    """
    checked = dict(defaults)
    weights = str(checked.get("weights", "imagenet"))
    if weights.startswith("/") and weights.endswith((".h5", ".keras")):
        checked["weights"] = "none"
    return parse_options([], {}, checked, defaults_source="(the CDK app's job defaults)")
