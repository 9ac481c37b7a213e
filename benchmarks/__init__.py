"""The featurization benchmark as a package: ``python -m benchmarks [SECTION ...]`` (see :mod:`benchmarks.bench`).

Each section is a module: :mod:`~benchmarks.limit` (the engine alone on pre-decoded tensors: the physical
limit), :mod:`~benchmarks.decode`, :mod:`~benchmarks.job_runs` (the whole job as a subprocess),
:mod:`~benchmarks.alternatives` (a multiprocessing.Pool script and Ray Data on the same images and model file),
:mod:`~benchmarks.incremental`, :mod:`~benchmarks.pca_scaling`, :mod:`~benchmarks.naive`,
:mod:`~benchmarks.realdata`; :mod:`~benchmarks.report` turns ``bench.json`` into one table.
"""
