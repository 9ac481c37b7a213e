"""CDK constructs and stacks for the Fruits featurize + PCA pipeline on Amazon EMR on EC2.

One module per concern: ``config`` (typed context), ``storage`` (bucket factory), ``artifacts`` (job bundle +
deployment), ``network``, ``roles``, ``cluster``, ``step``, ``nag`` (cdk-nag wiring and acknowledgments) and
``stacks`` (the two stacks that ``cdk/app.py`` wires together).
"""
