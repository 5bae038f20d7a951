"""Wall time and peak memory of a Python command, each run in a fresh process.

    seconds, peak_mib, stdout, stderr = run_measured(["-m", "cnncli", "eval", ...])

The peak is the process's own high-water mark of resident memory (VmHWM in
/proc/self/status), read by the process itself as it exits. The parent's
``wait4`` resource usage is not used: on Linux a child started by
``subprocess`` (vfork, then exec) reports at least the parent's resident size
as its own ``ru_maxrss``, so a parent holding PyTorch or a dataset would
inflate every figure.
"""

import os
import subprocess
import sys
import tempfile
import time

LAUNCHER = """
import atexit, os, runpy, sys

def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["CNNCLI_BENCH_PEAK"], "w") as out:
        out.write(peak)

atexit.register(report)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))    # as python SCRIPT does
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_measured(arguments, env=None, cwd=None):
    """(wall seconds, peak resident MiB, stdout, stderr) of ``python ARGUMENTS``; exits with
    the command's stderr if it fails."""
    with tempfile.TemporaryDirectory() as folder:
        peak_file = os.path.join(folder, "peak")
        environment = dict(env or os.environ, CNNCLI_BENCH_PEAK=peak_file)
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, "-c", LAUNCHER, *arguments],
                                   env=environment, capture_output=True, text=True, cwd=cwd)
        seconds = time.perf_counter() - started
        if completed.returncode:
            sys.exit(f"failed: python {' '.join(arguments)}\n{completed.stderr}")
        with open(peak_file) as handle:
            peak = int(handle.read()) / 1024
    return seconds, peak, completed.stdout, completed.stderr
