"""A GCS emulator that can be stopped and started again (an outage), keeping its data.

The session fixture ``gcs_emulator`` (tests/conftest.py) keeps its objects in memory, so they
would be gone after a restart. This one stores them on disk (``gcp-storage-emulator`` without
``--in-memory``, rooted at ``STORAGE_BASE``), so ``kill()`` (SIGKILL: the emulator disappears
mid-request, like a network partition or a GCS outage seen from the client) and ``start()``
again on the same port and folder bring back the same buckets and objects.

    emu = DiskEmulator(tmp_path / "gcs")
    emu.start(); url = emu.url; emu.make_bucket("b")
    emu.kill()   # outage
    emu.start()  # back, same data
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time


def _wait_frozen(pid: int, timeout_s: float = 2.0) -> bool:
    """Whether process ``pid`` reached the stopped state (``T`` in /proc/<pid>/stat) within
    ``timeout_s``; True where /proc cannot tell (not Linux)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("T", "t"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DiskEmulator:
    def __init__(self, folder: str, port: int = 0) -> None:
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
        self.exe = exe if os.path.exists(exe) else (shutil.which("gcp-storage-emulator") or exe)

    def start(self, timeout_s: float = 30.0) -> None:
        env = dict(os.environ, STORAGE_BASE=self.folder)
        deadline = time.time() + timeout_s
        while True:  # the port may take a moment to be free again after a kill
            with open(os.path.join(self.folder, "emulator.log"), "ab") as out:
                self.proc = subprocess.Popen(
                    [self.exe, "start", "--host", "127.0.0.1", "--port", str(self.port), "-q"],
                    env=env, stdout=out, stderr=subprocess.STDOUT)
            while self.proc.poll() is None and time.time() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.1)
            if time.time() >= deadline:
                self.kill()
                with open(os.path.join(self.folder, "emulator.log"), "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"gcp-storage-emulator did not start:\n{tail}")
            time.sleep(0.5)

    def kill(self) -> None:
        """Stops the emulator at once (SIGKILL): every request fails until :meth:`start`.

        The emulator writes its index (``.meta``) and object files in place, not atomically, so
        a kill in the middle of a write would leave it torn -- something real GCS, whose
        uploads are atomic, never shows. So the process is frozen (SIGSTOP) first and killed
        only at an instant where its index parses and every object file has its recorded
        size; otherwise it runs on for a few milliseconds and is tried again."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            deadline = time.monotonic() + 60
            while True:
                proc.send_signal(signal.SIGSTOP)
                # SIGSTOP is asynchronous: look at the files only once the process is frozen,
                # or a write begun after the look would be torn by the kill
                if _wait_frozen(proc.pid) and self._consistent():
                    break
                proc.send_signal(signal.SIGCONT)
                if time.monotonic() > deadline:
                    raise RuntimeError("the GCS emulator's files never looked whole for 60 s; "
                                       f"not killing it mid-write (see {self.folder})")
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.proc = None

    def _consistent(self) -> bool:
        root = os.path.join(self.folder, ".cloudstorage")
        try:
            with open(os.path.join(root, ".meta"), "rb") as f:
                meta = json.loads(f.read())
            for bucket, objects in (meta.get("objects") or {}).items():
                for name, obj in objects.items():
                    path = os.path.join(root, bucket, *name.split("/"))
                    if os.path.getsize(path) != int(obj.get("size", -1)):
                        return False
        except FileNotFoundError:
            return not os.path.exists(os.path.join(root, ".meta"))
        except (OSError, ValueError):
            return False
        return True

    def fs(self):
        """A gcsfs filesystem of its own for this emulator (not the fsspec instance cache)."""
        import gcsfs
        return gcsfs.GCSFileSystem(token="anon", endpoint_url=self.url, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        fs = self.fs()
        fs.mkdir(name)
        fs.invalidate_cache()
        return f"gs://{name}"
