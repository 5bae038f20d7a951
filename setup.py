"""Build the compiled kernels of cnncli.

The Cython sources live in pyx/ and are compiled into modules of the cnncli
package. OpenMP is probed with the compiler that will build the extensions:
where it is missing (or CNNCLI_NO_OPENMP=1 is set) the build still succeeds,
the kernels run serially and a warning says so. tests/test_build.py fails if a
machine whose compiler supports OpenMP ended up with a serial build.
"""

import glob
import os
import shutil
import tempfile
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_MODULES = {
    "cnncli._conv": "pyx/conv.pyx",
    "cnncli._pool": "pyx/pool.pyx",
    "cnncli._linear": "pyx/linear.pyx",
    "cnncli._parallel": "pyx/parallel.pyx",
    "cnncli._elementwise": "pyx/elementwise.pyx",
}

# Set once for every kernel, not in file headers: the kernels validate their
# arguments at the def boundary, so the loops run without per-access checks.
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def openmp_flags(compiler):
    """Return (compile_args, link_args) enabling OpenMP, or None if unavailable."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]),
                      (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    workdir = tempfile.mkdtemp(prefix="cnncli-openmp-")
    try:
        source = os.path.join(workdir, "probe.c")
        with open(source, "w") as handle:
            handle.write(OPENMP_PROBE)
        for compile_args, link_args in candidates:
            try:
                objects = compiler.compile([source], output_dir=workdir,
                                           extra_postargs=compile_args)
                compiler.link_executable(objects, "probe", output_dir=workdir,
                                         extra_postargs=link_args)
            except Exception:
                continue
            return compile_args, link_args
        return None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class BuildKernels(build_ext):
    def build_extensions(self):
        flags = None
        if os.environ.get("CNNCLI_NO_OPENMP", "") not in ("", "0"):
            reason = "CNNCLI_NO_OPENMP is set"
        else:
            flags = openmp_flags(self.compiler)
            reason = "the compiler cannot build OpenMP code"
        if flags is None:
            warnings.warn(f"cnncli: building the kernels WITHOUT OpenMP ({reason}); "
                          "they will run on one thread.")
        # errno is never read, so sqrt needs no error path and vectorises. Short zeroing
        # and copying loops (one or two values at a row's ends in im2col) stay loops
        # rather than becoming library calls, which cost more than the work.
        optimise = [] if self.compiler.compiler_type == "msvc" else [
            "-O3", "-fno-math-errno", "-fno-tree-loop-distribute-patterns"]
        for extension in self.extensions:
            extension.extra_compile_args += optimise + (flags[0] if flags else [])
            extension.extra_link_args += flags[1] if flags else []
        super().build_extensions()


# The included files (.pxi) and the micro-kernel's C header: a change to one rebuilds.
SHARED_SOURCES = sorted(glob.glob("pyx/*.pxi") + glob.glob("pyx/*.h"))
extensions = [Extension(name, [source], depends=SHARED_SOURCES)
              for name, source in KERNEL_MODULES.items()]

setup(
    # models/ is installed as cnncli.zoo and data/ as cnncli.sample_data, so
    # `finetune NAME DATA` finds the shipped models and datasets from any folder.
    packages=["cnncli", "cnncli.jobs", "cnncli.layers", "cnncli.zoo", "cnncli.sample_data"],
    package_dir={"cnncli.zoo": "models", "cnncli.sample_data": "data"},
    package_data={"cnncli": ["imagenet_classes.txt"], "cnncli.zoo": ["*.cnn", "*.md"],
                  "cnncli.sample_data": ["*.md", "*/*.md", "*/*/*/*.png"]},
    ext_modules=cythonize(extensions, compiler_directives=COMPILER_DIRECTIVES,
                          include_path=["pyx"]),
    cmdclass={"build_ext": BuildKernels},
    zip_safe=False,
)
