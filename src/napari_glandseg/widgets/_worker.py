"""Run a core generator in napari's ``thread_worker``; Stop/Cancel is ``worker.quit()``.

The core yields :class:`~napari_glandseg.inference.Progress` records and returns its result;
``quit()`` takes effect at the next ``yield``, so a job stops within one batch. Errors from the
core (``GlandsegError``) become notifications with their own message, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from napari.qt.threading import GeneratorWorker, create_worker
from qtpy.QtCore import QTimer

from ..errors import GlandsegError
from ._common import notify


class JobError(Exception):
    """A RuntimeError raised by a job, carried out of the worker under another type."""


def _guarded(gen_func, *args, **kwargs):
    """Run ``gen_func``; a RuntimeError becomes a JobError. superqt takes a RuntimeError
    for a deleted Qt object and then emits neither ``errored`` nor ``finished``, which
    would leave the widget 'running' for ever (torch raises RuntimeError for many faults).
    """
    try:
        return (yield from gen_func(*args, **kwargs))
    except RuntimeError as exc:
        raise JobError(f"{type(exc).__name__}: {exc}") from exc


class JobWorker(GeneratorWorker):
    """napari's generator worker, which after a Cancel also ends the job: the generator is
    closed in the worker thread before ``finished`` (superqt only stops sending to it), so
    the job's ``finally`` blocks (a temporary zarr store removed) run now, not whenever
    the generator is garbage-collected. A result the job returned as Cancel came (which
    superqt drops) goes to ``discard``."""

    discard: Callable | None = None

    def work(self):
        result = super().work()
        if self.abort_requested:
            try:
                self._gen.close()
            except Exception:  # noqa: BLE001 - a failing cleanup must not hang the job
                logging.getLogger(__name__).exception("cleaning up a cancelled job")
            if self.discard is not None and result is not None and \
                    not isinstance(result, Exception):
                self.discard(result)
        return result


def start(gen_func: Callable, *args, on_yield=None, on_return=None, on_done=None,
          on_error=None, on_abort=None, on_discard=None, what: str = "job",
          progress_desc: str | None = None, owner=None, **kwargs):
    """Start ``gen_func(*args, **kwargs)`` in a worker thread and wire its signals.

    With ``progress_desc`` a napari progress bar (activity dock) follows the yielded
    Progress records and closes when the job ends, however it ends.

    ``on_done`` runs after success, failure and cancel alike (re-enable buttons there);
    ``on_error(message)`` after a failure and ``on_abort()`` after a cancel (reset a status
    line there). A failure, in the job or in ``on_return``, is one notification with its
    message, never a traceback through the exception hook. ``on_discard(result)`` gets a
    result that is never shown: one the job returned as Cancel came (in the worker
    thread), or one ``on_return`` failed on; remove what it holds on disk there. A
    cancelled job's generator is closed before ``finished`` (:class:`JobWorker`).
    ``owner``: the widget the callbacks belong to; when it is closed (its Qt object
    deleted) the job is stopped and no callback touches it again (a callback into a
    deleted widget raises from Qt's event loop, or crashes it).
    Returns the worker; call ``worker.quit()`` to stop it. The thread starts when control
    returns to the event loop, so a caller can still connect to ``finished`` or
    ``yielded`` (a script waiting on it, a test's ``qtbot.waitSignal``) without racing a
    job that would otherwise end before the connection is made.
    """
    worker = create_worker(_guarded, gen_func, *args, _start_thread=False,
                           _ignore_errors=True, _worker_class=JobWorker, **kwargs)
    worker.discard = on_discard
    if owner is not None:
        on_yield, on_return, on_done, on_error, on_abort = _guarded_by(
            owner, worker, on_yield, on_return, on_done, on_error, on_abort, on_discard)
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:  # napari may relay errors to its exception hook: we notify instead
        try:
            worker.errored.disconnect(relay)
        except (TypeError, RuntimeError):  # not connected in this napari version
            pass
    if progress_desc:
        _attach_progress_bar(worker, progress_desc)
    if on_yield:
        worker.yielded.connect(on_yield)

    def _failed(exc):
        message = (str(exc) if isinstance(exc, GlandsegError) else f"{what} failed: {exc}"
                   if isinstance(exc, JobError) else f"{what} failed: {type(exc).__name__}: {exc}")
        notify("error", message)
        if on_error:
            on_error(message)

    if on_return:
        def _returned(value):
            try:
                on_return(value)
            except Exception as exc:  # a bad result must not end in the exception hook
                _failed(exc)
                if on_discard is not None:
                    on_discard(value)

        worker.returned.connect(_returned)
    worker.errored.connect(_failed)

    def _aborted():
        notify("info", f"{what} cancelled")
        if on_abort:
            on_abort()

    worker.aborted.connect(_aborted)
    if on_done:
        worker.finished.connect(on_done)
    QTimer.singleShot(0, worker.start)
    return worker


def _guarded_by(owner, worker, on_yield, on_return, on_done, on_error, on_abort,
                on_discard):
    """The callbacks, silenced once ``owner`` (a QWidget) is deleted; the job is stopped
    then, and a result it still returns is discarded (its store removed), never shown."""
    alive = {"yes": True}

    def _owner_gone(*_):
        alive["yes"] = False
        worker.quit()

    owner.destroyed.connect(_owner_gone)

    def guard(cb):
        return None if cb is None else (lambda *a: cb(*a) if alive["yes"] else None)

    def returned(value):
        if alive["yes"]:
            on_return(value)
        elif on_discard is not None:
            on_discard(value)

    return (guard(on_yield), returned if on_return is not None else None, guard(on_done),
            guard(on_error), guard(on_abort))


def _attach_progress_bar(worker, desc: str) -> None:
    from napari.utils import progress

    state = {"pbar": None, "busy": False, "ended": False}

    def update(p):
        # Making or refreshing a napari bar can process pending events, so this handler
        # may be re-entered with the next record: skip it rather than make a second bar
        # (which nothing would close). After the end, late records make no new bar.
        if state["busy"] or state["ended"]:
            return
        state["busy"] = True
        try:
            if state["pbar"] is None:
                state["pbar"] = progress(total=p.total, desc=desc)
            state["pbar"].n = p.done
            state["pbar"].refresh()
        finally:
            state["busy"] = False

    def close():
        state["ended"] = True
        if state["pbar"] is not None:
            state.pop("pbar").close()
            state["pbar"] = None

    worker.yielded.connect(update)
    worker.finished.connect(close)
