"""Stopping a run by signal, and the exit statuses of ``main.py``.

SIGTERM (preemption, ``scancel``, ``kill``) and a first Ctrl-C let the trainer finish the step it
is in (Lightning's SIGTERM handling stops at the step's end), say so at once, and end the command
in ``Stopped``: by then the callbacks have saved a checkpoint (``StepCheckpoint``) and
``adapter/`` (``AdapterExport``), and ``main.py`` prints one line and exits with 128 + the
signal's number, as a shell reports a process the signal ended. A second Ctrl-C stops at once
(the step it interrupts is lost); a signal before training or after it stops at once too.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

# What a wrapper script (``fit && export``) or a scheduler can tell apart.
EXIT_STATUS = {"finished": 0, "error": 1, "SIGINT": 128 + signal.SIGINT,
               "SIGTERM": 128 + signal.SIGTERM}


class Stopped(Exception):
    """The command stopped on a signal; ``status`` is its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _say(line: str) -> None:
    # Not print(): a signal handler may run while the main code is inside a print to stderr.
    os.write(2, f"{line}\n".encode())


def _signal_of(error: BaseException, received: list[signal.Signals]) -> signal.Signals | None:
    """The signal that ``error`` stops the command for: Lightning's ``SIGTERMException``, or its
    exit after a ``KeyboardInterrupt`` (a ``SystemExit`` raised while handling one)."""
    if received and isinstance(error, SIGTERMException | KeyboardInterrupt | SystemExit):
        return received[0]
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, SIGTERMException):
            return signal.SIGTERM
        if isinstance(cause, KeyboardInterrupt):
            return signal.SIGINT
        cause = cause.__context__
    return None


def stop_message(trainer: L.Trainer, signum: signal.Signals) -> str:
    """``stopped by SIGTERM after step 7: checkpoint ..., adapter ...; resume with ...``."""
    notes = sorted((note for cb in trainer.callbacks if (note := getattr(cb, "stop_note", None))),
                   key=lambda note: "checkpoint" not in note)  # the checkpoint first
    fitting = trainer.state.fn == TrainerFn.FITTING
    where = f" after step {trainer.global_step}" if fitting else \
        f" during {trainer.state.fn.value if trainer.state.fn else 'setup'}"
    saved = any(note.startswith("checkpoint ") for note in notes)
    return (f"stopped by {signum.name}{where}: {', '.join(notes) or 'nothing saved'}"
            + ("; resume with --ckpt_path last" if saved else ""))


@contextmanager
def stopping_on_signals(trainer: L.Trainer) -> Iterator[None]:
    """SIGTERM and SIGINT inside end in ``Stopped`` (see the module's docstring). Outside the
    main thread (a run started from another thread, e.g. an experiment's worker) Python allows
    no signal handler: the run goes on without them, as Lightning's own handlers do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[signal.Signals] = []

    def on_sigterm(signum: int, frame) -> None:
        if not received:
            received.append(signal.Signals(signum))
        if not trainer.received_sigterm:  # Lightning's handler is not on: stop now
            raise KeyboardInterrupt if received[0] == signal.SIGINT else SIGTERMException()
        what = "step" if trainer.training else "batch"
        again = "; Ctrl-C again stops at once" if received[0] == signal.SIGINT else ""
        _say(f"{received[0].name}: finishing the current {what} (step {trainer.global_step + 1}) "
             f"before stopping, then saving a checkpoint and adapter/{again}")

    def on_sigint(signum: int, frame) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signal.SIGINT)
        # Through the SIGTERM handler: during training it is Lightning's, which calls on_sigterm.
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, frame)

    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_sigterm),
                                                    (signal.SIGINT, on_sigint))}
    try:
        yield
    except BaseException as error:
        signum = _signal_of(error, received)
        if signum is None:
            raise
        raise Stopped(stop_message(trainer, signum), 128 + signum) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
