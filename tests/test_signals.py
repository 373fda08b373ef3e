"""fcn8s_tf/signals.py: SIGTERM/SIGINT raised as Interrupted, deferred, or turned into a flag."""

import os
import signal
import threading

import pytest

from fcn8s_tf import signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_raising_turns_a_signal_into_interrupted_and_restores_the_handler(signum):
    before = signal.getsignal(signum)
    with pytest.raises(signals.Interrupted) as raised:
        with signals.raising():
            os.kill(os.getpid(), signum)
            pytest.fail("the signal did not interrupt the block")
    assert raised.value.signum == signum
    assert raised.value.exit_code == 128 + signum
    assert str(raised.value) == f"interrupted by {signal.Signals(signum).name}"
    assert signal.getsignal(signum) == before


def test_interrupted_is_not_an_exception():
    # So that `except Exception` clean-up and TensorFlow's re-wrapping let it through.
    assert not issubclass(signals.Interrupted, Exception)
    assert issubclass(signals.Interrupted, BaseException)


def test_deferred_delivers_the_signal_after_the_block():
    done = []
    with pytest.raises(signals.Interrupted):
        with signals.raising():
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the block went on")
            pytest.fail("the deferred signal was lost")
    assert done == ["the block went on"]


def test_stop_flag_is_set_by_the_first_signal_and_a_second_ctrl_c_raises():
    with signals.StopFlag() as flag:
        assert not flag.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set() and flag.received == signal.SIGTERM
        with pytest.raises(signals.Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("a second Ctrl-C did not stop")


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def body():
        before = signal.getsignal(signal.SIGTERM)
        with signals.raising(), signals.deferred(), signals.StopFlag():
            seen.append(signal.getsignal(signal.SIGTERM) == before)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [True]
