"""CDK constructs and stacks for the Fruits featurize + PCA pipeline on Amazon EMR on EC2.

One module per concern: ``config`` (typed context), ``instances`` (supported instance types and the Spark
memory derived from them), ``job_contract`` (what the app takes from the job's own package), ``storage`` (bucket
factory), ``artifacts`` (job bundle + deployment), ``network``, ``roles``, ``group_cleanup`` (the custom resource
that lets the EMR-managed security groups be deleted), ``cluster``, ``step``, ``nag`` (cdk-nag wiring and
acknowledgments) and ``stacks`` (the two stacks that ``cdk/app.py`` wires together).
"""
