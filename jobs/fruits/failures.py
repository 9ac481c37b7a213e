"""What a failed run's last line says: the cause named for people, found in Python's errors and Spark's alike.

A full disk surfaces as an ``OSError`` (ENOSPC) from the job's own writes, or deep inside a Py4J error from
Spark's (``java.io.IOException: No space left on device`` under a ``Task failed while writing rows to <path>``),
whose first line names only the Java call. :func:`no_space` finds it in either and names the path being
written when the error does. Pure functions: no Spark needed to test them.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator, Sequence

NO_SPACE = "no space left on the device"
_JAVA_NO_SPACE = "No space left on device"
# Where Spark's and Java's messages name the file: the task's output folder, or a file that could not be opened.
# Paths may hold spaces: each runs to the end of its line.
_JAVA_PATHS = (
    re.compile(r"writing rows to (.+?)\.?$", re.MULTILINE),
    re.compile(r"(?:Exception|Error): (.+) \(No space left on device\)$", re.MULTILINE),
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes and contexts, each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _text(error: BaseException) -> str:
    """The whole message; a Py4J error's includes the Java trace (fetched from the JVM, which may be gone)."""
    try:
        return str(error)
    except Exception:
        return ""


def no_space(error: BaseException, writing: Sequence[str] = ()) -> str | None:
    """``no space left on the device: <path>`` when ``error`` comes from a full disk, else None.

    The path is the one the error names; when it names none (a Java write error often does not), the places
    the run was writing to (``writing``) are named instead.
    """
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            path = cause.filename2 or cause.filename
            if path is not None:
                return f"{NO_SPACE}: {path!s}"
            break
        text = _text(cause)
        if _JAVA_NO_SPACE in text:
            for pattern in _JAVA_PATHS:
                match = pattern.search(text)
                if match:
                    return f"{NO_SPACE}: {match.group(1)}"
            break
    else:
        return None
    places = " or ".join(dict.fromkeys(writing))
    return f"{NO_SPACE} (while writing under {places})" if places else NO_SPACE
