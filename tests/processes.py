"""Running the command-line tool in a process of its own, for tests of signals."""

import signal
import subprocess


def interrupted(command, cwd, when, timeout=120):
    """Run ``command``, send SIGINT once a line of its stdout starts with ``when``, and
    return (exit code, stderr) when it has ended."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(when):
            process.send_signal(signal.SIGINT)
            break
    process.wait(timeout=timeout)
    stderr = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    return process.returncode, stderr
