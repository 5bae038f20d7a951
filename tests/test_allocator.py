"""Freed activation memory stays in the process for the next training step (glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator settings are glibc's")

# 20 "training steps", each allocating and touching six 6 MiB activations that live
# together until the step ends; prints the page faults after the first step.
STEPS = """
import resource
import numpy as np
import cnncli

def step():
    return [np.ones((64, 32, 28, 28), dtype=np.float32) for _ in range(6)]

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(**environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True,
                            text=True, check=True)
    return int(result.stdout)


PAGES_PER_STEP = 6 * 64 * 32 * 28 * 28 * 4 // 4096


def test_arrays_freed_between_steps_are_reused_without_page_faults():
    assert page_faults() < PAGES_PER_STEP
    assert page_faults(CNNCLI_KEEP_FREED_MEMORY="0") > 5 * PAGES_PER_STEP


def test_the_users_own_malloc_settings_win():
    assert page_faults(MALLOC_TRIM_THRESHOLD_="131072") > 5 * PAGES_PER_STEP
