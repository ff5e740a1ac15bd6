import os
import signal

import pytest

from dpsat_core.interrupts import stop_on_signals


def test_the_first_signal_asks_to_stop_the_second_interrupts_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop() and stop.exit_code == 0
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread before kill returns
        assert stop() and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
