"""Signal delivery when training runs in a worker thread of a spawned process (the structure of
``torch_xla.launch``), without torch_xla: the launcher forwards, the worker thread's StopSignal
takes the signals through its watcher thread (issue #20 item 2)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import concurrent.futures, multiprocessing, os, signal, threading, time
    from trm.runtime.signals import StopSignal, forwarded_signals

    def worker(_):
        def train():
            stopper = StopSignal()
            stopper.install()
            open(os.environ["READY"], "w").close()
            try:
                while not stopper.report_requested:
                    time.sleep(0.05)
                while stopper.received is None:
                    time.sleep(0.05)
                return f"report then {signal.Signals(stopper.received).name}"
            finally:
                stopper.uninstall()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(train).result()

    if __name__ == "__main__":
        with forwarded_signals():
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                print(list(ex.map(worker, [0]))[0], flush=True)
""")


def test_signals_reach_a_worker_thread_of_a_spawned_process(tmp_path):
    script = tmp_path / "launch.py"
    script.write_text(SCRIPT)
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=REPO, READY=str(ready), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGUSR1)  # to the launcher only, as `kill PID` does
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "report then SIGTERM", (out, err[-2000:])
