"""The Spark session: the cluster's when spark-submit started us, else local mode on every core."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from pyspark import SparkContext
from pyspark.sql import SparkSession

from fruits import jvm_archive
from fruits.local_cache import local_cache_dir

#: The local driver JVM's options. It lives for one run (seconds to minutes) on the cores the Python workers
#: need, so C2, the optimizing compiler, costs more than it returns: with C1 only, a 20,000-image run took
#: 48 s instead of 53 s on 2 cores (C2 compiled on about a third of a core for the first half of the run).
#: A cluster's long-lived executors keep the JVM's defaults. FRUITS_DRIVER_JAVA_OPTIONS replaces these (and
#: the class archive's options, see local_driver_java_options).
LOCAL_DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


APP_NAME = "fruits-featurize-pca"

#: The local session being started by :func:`start_early`'s thread: {"thread": ..., "session" or "error": ...}.
_EARLY: dict[str, object] = {}


def start_early(argv: Sequence[str]) -> None:
    """Start the local session in a thread now, so that its JVM boots while the caller imports the job (pandas,
    pyspark.ml and the job's own modules: about 0.5 s of every run).

    Only for a local command line that is complete and valid (:func:`fruits.options.valid_local_command`): a
    bad option is still reported before any JVM starts, and spark-submit's session has its JVM already.
    :func:`get_session` then waits for this one; a failure to start is raised there, in the caller's thread.
    """
    from fruits.options import valid_local_command  # light: argparse and the option specs

    if _EARLY or _master_chosen() or not valid_local_command(argv):
        return
    # The environment and the JVM's options are settled here, in the caller's thread (setenv is not safe beside
    # imports of C extensions in another thread); the thread only starts the JVM and the session.
    builder = _builder(APP_NAME)

    def start() -> None:
        try:
            _EARLY["session"] = builder.getOrCreate()
        except BaseException as error:  # handed to get_session, raised there
            _EARLY["error"] = error

    thread = threading.Thread(target=start, name="fruits-start-session", daemon=True)
    _EARLY["thread"] = thread
    thread.start()


def get_session(app_name: str = APP_NAME) -> SparkSession:
    """The session spark-submit configured, or a local one using every core: the embedded default (the one
    :func:`start_early` started, under :data:`APP_NAME`, if it did)."""
    thread = _EARLY.pop("thread", None)
    if isinstance(thread, threading.Thread):
        thread.join()
        error, session = _EARLY.pop("error", None), _EARLY.pop("session", None)
        if isinstance(error, BaseException):
            raise error
        if not isinstance(session, SparkSession):
            raise RuntimeError("the early Spark session neither started nor failed")
        # What getOrCreate does for the thread that calls it: this thread's JVM side sees the session as active.
        session._jvm.SparkSession.setActiveSession(session._jsparkSession)
    else:
        session = _builder(app_name).getOrCreate()
    _cancel_jobs_on_interrupt(session.sparkContext)
    return session


#: Set once Ctrl-C (SIGINT) has interrupted the run: whatever fails after it failed because of it.
INTERRUPTED = threading.Event()
#: The thread cancelling Spark's jobs after Ctrl-C, while it runs.
_CANCELLING: list[threading.Thread] = []
CANCEL_WAIT_S = 15.0


#: ConsoleProgressBar redraws every 200 ms and clears itself on the first redraw without a running stage.
_PROGRESS_BAR_CLEARS_S = 0.3


def wait_for_cancelled_jobs(sc: SparkContext | None, timeout: float = CANCEL_WAIT_S) -> None:
    """After Ctrl-C, once the run has unwound: cancel what background work started meanwhile and wait (up to
    ``timeout``) until Spark runs no job, so that nothing of them is still running, or printing (the console
    progress bar), when the run's last line is written."""
    deadline = time.monotonic() + timeout
    for thread in _CANCELLING:
        thread.join(timeout)
    if sc is None:
        return
    try:
        while time.monotonic() < deadline:
            sc.cancelAllJobs()
            if not sc.statusTracker().getActiveJobsIds():
                break
            time.sleep(0.1)
        time.sleep(_PROGRESS_BAR_CLEARS_S)
    except Exception:  # the JVM is going away already: nothing left to wait for
        pass


def _cancel_jobs_on_interrupt(sc: SparkContext) -> None:
    """Ctrl-C cancels the running Spark jobs and interrupts the run (in the main thread only, where signals are
    handled), replacing what a SparkContext installs itself.

    PySpark's own handler calls the JVM from inside the handler, on the connection the main thread is waiting
    on: py4j then fails with "reentrant call", and the run ended with seven tracebacks and a last line blaming
    whatever Spark call was running. Here the jobs are cancelled from a thread of their own (its own
    connection), Spark's log is silenced first (the cancelled tasks' errors say nothing the user needs), and
    the main thread gets the KeyboardInterrupt that :func:`fruits.job.main` turns into exit status 130.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def cancel() -> None:
        try:
            sc.setLogLevel("OFF")
            sc.cancelAllJobs()
            deadline = time.monotonic() + CANCEL_WAIT_S
            while sc.statusTracker().getActiveJobsIds() and time.monotonic() < deadline:
                time.sleep(0.1)
        except Exception:  # the JVM may be going away already: nothing left to cancel
            pass

    def interrupted(signum: int, frame: object) -> None:
        if INTERRUPTED.is_set():
            return  # a second Ctrl-C while the first is being handled
        INTERRUPTED.set()
        _CANCELLING.append(threading.Thread(target=cancel, name="fruits-cancel-jobs", daemon=True))
        _CANCELLING[-1].start()
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, interrupted)
    # Py4J logs the interrupt of a call it was waiting on as an error with its traceback (on the root logger).
    logging.getLogger().addFilter(_not_the_interrupt)


def _not_the_interrupt(record: logging.LogRecord) -> bool:
    """False for a record of the KeyboardInterrupt itself: the run's last line says it was interrupted."""
    return not (
        record.exc_info
        and record.exc_info[0] is not None
        and issubclass(record.exc_info[0], KeyboardInterrupt)
    )


def _builder(app_name: str) -> SparkSession.Builder:
    """The session's builder; for local mode, the environment and the JVM's options are set here."""
    builder = SparkSession.builder.appName(app_name)
    if not _master_chosen():
        prepare_local_mode()
        builder = (
            builder.master("local[*]")
            .config("spark.driver.memory", os.environ.get("FRUITS_DRIVER_MEMORY", "4g"))
            .config("spark.ui.showConsoleProgress", "true")
            .config("spark.sql.shuffle.partitions", "8")
        )
        if SparkContext._gateway is None:  # JVM options only mean something to a JVM about to start
            builder = builder.config("spark.driver.extraJavaOptions", local_driver_java_options())
    return builder


def local_driver_java_options() -> str:
    """FRUITS_DRIVER_JAVA_OPTIONS if set, else C1 only and the class archive (:mod:`fruits.jvm_archive`)."""
    if "FRUITS_DRIVER_JAVA_OPTIONS" in os.environ:
        return os.environ["FRUITS_DRIVER_JAVA_OPTIONS"]
    archive = jvm_archive.options_for_this_run(local_cache_dir(jvm_archive.CACHE_NAME))
    return f"{LOCAL_DRIVER_JAVA_OPTIONS} {archive}".strip()


def _master_chosen() -> bool:
    """Whether spark-submit or PYSPARK_SUBMIT_ARGS chose the master; then we must not set one.

    Asked before any JVM exists, so ``SparkConf()`` cannot tell (it is empty until a SparkContext starts).
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # started by spark-submit, whose JVM already has a master
        return True
    return "--master" in os.environ.get("PYSPARK_SUBMIT_ARGS", "")


def prepare_local_mode() -> None:
    """The environment of a local-mode session, set before its JVM starts: loopback only, and Python workers
    that import ``fruits`` from this checkout."""
    # Local mode needs no network: listen and talk on loopback only, not on the machine's first interface
    # (Spark's choice when the host name resolves to 127.0.0.1). An explicit SPARK_LOCAL_IP wins.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    ship_package_to_local_workers()


def ship_package_to_local_workers() -> None:
    """Let local-mode Python workers import ``fruits`` from this checkout (a cluster gets ``--py-files``).

    Must run before the SparkContext starts: its workers inherit this process's environment.
    """
    # Workers must run this interpreter (the venv's), not whatever python3 is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if os.path.isdir(parent) and parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([parent, *paths])
