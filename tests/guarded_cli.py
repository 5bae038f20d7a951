"""Run the cnncli command line under guard: ``python guarded_cli.py LIMIT_MIB ARGS...``.

The process's address space is capped at LIMIT_MIB (``RLIMIT_AS``), so a
regression that allocates what a hostile file declares fails with a
MemoryError instead of swapping the machine; and every way of starting
another program is replaced by one that records the attempt in
``$CNNCLI_TEST_SPAWNED`` and refuses, so a test sees whether a decoder
tried to hand a file to another program (Ghostscript for EPS). At exit the
peak resident memory (VmHWM, KiB) is written to ``$CNNCLI_TEST_PEAK``.
"""

import atexit
import os
import resource
import subprocess
import sys


def _refuse(*args, **kwargs):
    with open(os.environ["CNNCLI_TEST_SPAWNED"], "a") as record:
        record.write(f"{args[:2]!r}\n")
    raise PermissionError("starting another program is not allowed in this test")


def _write_peak():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["CNNCLI_TEST_PEAK"], "w") as record:
        record.write(peak)


def main():
    limit = int(sys.argv[1]) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    subprocess.Popen.__init__ = _refuse
    for name in ("system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv",
                 "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe"):
        if hasattr(os, name):
            setattr(os, name, _refuse)
    atexit.register(_write_peak)
    sys.argv = ["cnncli"] + sys.argv[2:]
    from cnncli.cli import run
    run()


if __name__ == "__main__":
    main()
