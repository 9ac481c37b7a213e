"""The cloud rehearsal (make rehearse): the deployed stack's steps, run here as EMR runs them.

The rehearsal reads the cluster's sizing from the CDK app's own table (fruits_infra.instances), so the app's
package is importable from here.
"""

import sys
from pathlib import Path

_CDK = str(Path(__file__).resolve().parents[2] / "cdk")
if _CDK not in sys.path:
    sys.path.insert(0, _CDK)
