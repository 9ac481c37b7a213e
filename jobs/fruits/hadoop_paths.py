"""Paths for Spark's readers: Hadoop reads ``{ } [ ] * ? \\`` in a path it is given to read as a glob pattern.

``spark.read.parquet(path)`` and ``PipelineModel.load(path)`` expand such patterns, so an output named ``out[1]``
or ``runs{a,b}`` is looked for under other names and not found. :func:`literal` escapes each of those
characters, so that the pattern matches exactly the path written: names are plain characters everywhere, as the
input's are (:mod:`fruits.reading` opens each listed file by its name). Writers take their path literally and
must get it unescaped: they would keep the backslashes in the names they create.
"""

from __future__ import annotations

import re

# Hadoop's GlobPattern: a backslash makes the next character itself (org.apache.hadoop.fs.GlobPattern).
_GLOB_CHARACTERS = re.compile(r"([\\{}\[\]*?])")


def literal(path: str) -> str:
    """``path`` for a Spark or Hadoop reader: every glob character escaped, so it names only itself."""
    return _GLOB_CHARACTERS.sub(r"\\\1", path)
