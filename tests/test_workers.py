"""Pool workers stop on SIGTERM and die with their parent, whatever the signals' timing."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.processes import alive, wait_for

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from dpsat_core.workers import die_with_parent, stopping
    die_with_parent(os.getppid())
    print("ready", flush=True)
    deadline = time.time() + 60
    while not stopping() and time.time() < deadline:  # busy Python code: signals land between any two bytecodes
        sum(range(50))
    print("stopped" if stopping() else "never stopped", flush=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_burst_of_sigterms_stops_a_worker_without_deadlock():
    # a killed sweep can send a worker two SIGTERMs at once (its parent-death signal and a stop); a handler that
    # took a lock deadlocked the worker's main thread on the second one and left it orphaned
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        end = time.time() + 2.0
        while time.time() < end:  # as fast as Python can send them, for long enough to land inside the handler
            os.kill(child.pid, signal.SIGTERM)
        try:
            out, _ = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            pytest.fail("the worker deadlocked in its SIGTERM handler")
        assert out.strip() == "stopped"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_worker_whose_parent_dies_exits_when_idle():
    middle = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {CHILD!r}.replace("while not stopping()", "while True")])
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    time.sleep(1.0)
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not alive(pid), timeout=30)


def test_a_parent_is_alive_until_it_ends_with_or_without_proc(monkeypatch, tmp_path):
    # workers watch the pid that started them (a fork server's child has the server as its parent)
    from dpsat_core import workers

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert workers._alive(child.pid)
        with monkeypatch.context() as without_proc:  # as on macOS: the kernel is asked instead
            without_proc.setattr(workers, "PROC", tmp_path / "no-proc")
            assert workers._alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not workers._alive(child.pid)
    monkeypatch.setattr(workers, "PROC", tmp_path / "no-proc")
    assert not workers._alive(child.pid)


WARM_THEN_INTERRUPT = textwrap.dedent(
    """
    import os, signal, time
    from multiprocessing import forkserver
    from dpsat_core.workers import warm_up
    warm_up()  # the server now imports torch and Opacus for seconds
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # this process stays: only the server's answer is looked at
    time.sleep(1.0)
    os.killpg(0, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    time.sleep(0.5)
    server = forkserver._forkserver._forkserver_pid
    os.kill(server, signal.SIGTERM)  # a quiet end, so the test need not wait for the imports
    os.waitpid(server, 0)
    print("done", flush=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and the fork server")
def test_a_ctrl_c_while_the_fork_server_imports_prints_no_traceback_from_it():
    proc = subprocess.run(
        [sys.executable, "-c", WARM_THEN_INTERRUPT], capture_output=True, text=True, timeout=120, start_new_session=True
    )
    assert proc.stdout.strip() == "done" and "Traceback" not in proc.stderr, proc.stderr[-1500:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server")
def test_a_server_warmed_for_a_block_that_raises_is_stopped():
    # `dpsat sweep` starts the server while it checks the grid; bad input must not leave it importing, holding the
    # command's output open after it exits
    script = textwrap.dedent(
        """
        from multiprocessing import forkserver
        from dpsat_core.workers import warming
        try:
            with warming(True):
                started = forkserver._forkserver._forkserver_pid
                raise ValueError("bad input")
        except ValueError:
            pass
        print(started, forkserver._forkserver._forkserver_pid, flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    started, after = proc.stdout.split()
    assert started != "None" and after == "None" and not alive(int(started)), proc.stderr[-1500:]
