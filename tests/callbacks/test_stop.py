"""Signals: the first SIGTERM or Ctrl-C lets the step finish (Lightning's SIGTERM handling) and says
so; the stop ends in ``Stopped`` with 128 + the signal's number; a second Ctrl-C stops at once.
(``tests/e2e/test_interrupt.py`` runs the real thing in a subprocess.)"""

import os
import signal
from types import SimpleNamespace

import pytest
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.stop import EXIT_STATUS, Stopped, stop_message, stopping_on_signals


def _trainer(**notes) -> SimpleNamespace:
    callbacks = [SimpleNamespace(stop_note=note) for note in notes.values()]
    return SimpleNamespace(received_sigterm=False, training=True, global_step=7,
                           state=SimpleNamespace(fn=TrainerFn.FITTING), callbacks=callbacks)


def _lightning_handler(trainer) -> None:
    """What Lightning installs while it trains: its notifier, then the handler it found."""
    found = signal.getsignal(signal.SIGTERM)

    def compose(signum, frame):
        trainer.received_sigterm = True
        found(signum, frame)
    signal.signal(signal.SIGTERM, compose)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_finishes_the_step_and_the_stop_exits_with_its_status(signum, capfd):
    trainer = _trainer(adapter="adapter a/adapter (final weights)", ckpt="checkpoint a/last.ckpt")
    # Whatever the process had (Python's default_int_handler, or SIG_IGN in a background job).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Stopped) as stopped:
        with stopping_on_signals(trainer):
            _lightning_handler(trainer)
            os.kill(os.getpid(), signum)  # handled at once: the step goes on
            assert trainer.received_sigterm
            raise SIGTERMException  # what Lightning raises at the step's end
    assert stopped.value.status == EXIT_STATUS[signum.name] == 128 + signum
    assert str(stopped.value) == ("stopped by " + signum.name + " after step 7: checkpoint "
                                  "a/last.ckpt, adapter a/adapter (final weights); resume with "
                                  "--ckpt_path last")
    said = capfd.readouterr().err
    assert said.startswith(f"{signum.name}: finishing the current step (step 8) before stopping, "
                           "then saving a checkpoint and adapter/")
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_second_ctrl_c_stops_at_once():
    trainer = _trainer()
    with pytest.raises(Stopped) as stopped:
        with stopping_on_signals(trainer):
            _lightning_handler(trainer)
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            raise SystemExit(1)  # Lightning's exit after a KeyboardInterrupt
    assert stopped.value.status == 130
    assert str(stopped.value) == "stopped by SIGINT after step 7: nothing saved"


def test_a_signal_outside_lightnings_loops_stops_at_once():
    with pytest.raises(Stopped) as stopped:
        with stopping_on_signals(_trainer()):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("the signal did not stop the command")
    assert stopped.value.status == 143


def test_other_exceptions_pass_through():
    with pytest.raises(ValueError, match="a bug"):
        with stopping_on_signals(_trainer()):
            raise ValueError("a bug")


def test_stop_message_outside_fit():
    trainer = _trainer()
    trainer.state.fn = TrainerFn.PREDICTING
    assert stop_message(trainer, signal.SIGTERM) == \
        "stopped by SIGTERM during predict: nothing saved"


def test_a_run_outside_the_main_thread_goes_on_without_handlers():
    """Python refuses signal handlers off the main thread; an experiment's worker thread
    still runs the command, with the handlers left as they were."""
    import threading
    outcome = []

    def work():
        with stopping_on_signals(_trainer()):
            outcome.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert outcome == [before]
