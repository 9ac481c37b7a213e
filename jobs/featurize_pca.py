"""Featurize fruit images with a pretrained CNN and reduce them with Spark MLlib PCA.

Locally (Spark in local mode, every core)::

    python jobs/featurize_pca.py --input ../shared/data/fruits360-sample --output out/demo --weights none

On any Spark, the package travels with ``--py-files``::

    spark-submit --deploy-mode cluster --py-files s3://<artifacts>/job/fruits.zip \
        s3://<artifacts>/job/featurize_pca.py [--k 50 ...]

On the CDK app's EMR cluster, spark-defaults already carry the package (``spark.submit.pyFiles``), the deploy
mode and the job's defaults file (``spark.fruits.defaults``), so ``spark-submit s3://<artifacts>/job/featurize_pca.py``
is enough. Every option can also come from the Spark conf (``spark.fruits.input`` ...) or the defaults file
(keys = option names); ``--help`` lists them.
"""

import gc
import os
import sys

# Run from a checkout without installing: the package sits beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fruits.logs import configure_logging
from fruits.session import start_early

if __name__ == "__main__":
    configure_logging()  # before the session's start, which logs
    start_early(sys.argv[1:])  # a local run's JVM boots while the job's modules import
    from fruits.job import main

    # What the imports made lives as long as the process: the collector need not walk it again and again.
    gc.freeze()
    code = main()
    # Nor at exit, when it would walk every object the run made (half a second, measured): the process's end
    # releases them all.
    gc.freeze()
    sys.exit(code)
