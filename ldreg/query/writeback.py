"""Writing a first query's copied summaries into the cache while the query goes on drawing.

A first query copies each bucket's summary into ``observation_stats``. On SecantusDB inserting
them (and indexing them) costs as much as reading them, and the query already holds the rows it
needs, so the insert, then the run's mark (a run without its mark is copied again next time),
runs on a thread while the chart is drawn. ``wait()`` joins those threads and raises what failed
in them; every reader of the cache waits first (``ldreg.query.frame.summaries``, the server's
pooling pipeline), and so do ``run_query`` and ``compare_runs`` before they return. A write cut
short (the process killed) loses nothing: the run has no mark, and its summaries are copied again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("ldreg.query")

_pending: list[tuple[threading.Thread, list[BaseException]]] = []
_lock = threading.Lock()


def later(write: Callable[..., Any], *args: Any) -> None:
    """Run ``write(*args)`` on its own thread (not a daemon: the interpreter finishes it at exit)."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            write(*args)
        except BaseException as exc:  # kept for wait(), which raises it in the query's thread
            log.warning("caching query summaries failed (%s); the next query copies them again", exc)
            errors.append(exc)

    thread = threading.Thread(target=work, name="ldreg-summaries")
    with _lock:
        _pending.append((thread, errors))
    thread.start()


def wait() -> None:
    """Join every write started by ``later``; raise the first error one of them met."""
    with _lock:
        pending = list(_pending)
        _pending.clear()
    failed = None
    for thread, errors in pending:
        thread.join()
        if errors and failed is None:
            failed = errors[0]
    if failed is not None:
        raise failed
