"""The compiled kernels are present and were built the way this machine allows."""

import os
import shutil
import subprocess
import sysconfig
import tempfile

import pytest

from cnncli import _conv, _parallel, _pool, functional

OPENMP_PROGRAM = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def compiler_supports_openmp():
    """Ask this machine's C compiler, independently of setup.py, whether it can build OpenMP."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return False
    with tempfile.TemporaryDirectory() as workdir:
        source = os.path.join(workdir, "probe.c")
        with open(source, "w") as handle:
            handle.write(OPENMP_PROGRAM)
        result = subprocess.run([compiler, "-fopenmp", source, "-o", os.path.join(workdir, "probe")],
                                capture_output=True)
        return result.returncode == 0


def test_kernels_are_compiled_modules():
    for module in (_conv, _pool, _parallel):
        assert module.__file__.endswith(sysconfig.get_config_var("EXT_SUFFIX"))


@pytest.mark.skipif(os.environ.get("CNNCLI_NO_OPENMP", "") not in ("", "0"),
                    reason="a serial build was asked for with CNNCLI_NO_OPENMP")
def test_openmp_was_not_silently_lost():
    if not compiler_supports_openmp():
        pytest.skip("this machine's compiler cannot build OpenMP code")
    assert functional.openmp_enabled(), (
        "this machine can build OpenMP code, but the installed kernels were built without it: "
        "rebuild with `pip install -e .` and read the build warnings")
    assert _parallel.threads_used(2) == 2


def test_threads_used_is_bounded_by_the_request():
    assert _parallel.threads_used(1) == 1
    with pytest.raises(ValueError, match="n_threads"):
        _parallel.threads_used(0)
