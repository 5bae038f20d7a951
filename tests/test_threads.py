import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import cnncli
from cnncli import functional as F
from cnncli.parallelism import single_threaded_blas


def run_every_kernel(rng):
    """Outputs of every kernel, forward and backward, on sizes that split into many chunks."""
    x = rng.standard_normal((37, 6, 13, 27)).astype(np.float32)
    results = []
    for weight_shape, arguments in (((8, 6, 3, 3), dict(padding=1)),
                                    ((8, 3, 3, 2), dict(stride=2, groups=2, dilation=(1, 2))),
                                    ((5, 6, 1, 1), {})):
        weight = rng.standard_normal(weight_shape).astype(np.float32)
        bias = rng.standard_normal(weight_shape[0]).astype(np.float32)
        out = F.conv2d(x, weight, bias, **arguments)
        grad_output = rng.standard_normal(out.shape).astype(np.float32)
        results += [out, *F.conv2d_backward(grad_output, x, weight, **arguments)]
    pooled, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    results += [pooled, indices, F.max_pool2d_backward(np.ones_like(pooled), x, 3, 2, 1)]
    averaged = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    results += [averaged, F.avg_pool2d_backward(np.ones_like(averaged), x, 3, 2, 1, False)]
    results += [F.global_avg_pool2d(x), F.unfold(x, 3, padding=1),
                F.fold(F.unfold(x, 3, padding=1), (13, 27), 3, padding=1)]
    # More filters than positions: the backward puts samples side by side.
    weight = rng.standard_normal((60, 6, 3, 3)).astype(np.float32)
    small = x[:, :, :5, :6]
    out = F.conv2d(small, weight, padding=1)
    results += list(F.conv2d_backward(rng.standard_normal(out.shape).astype(np.float32), small,
                                      weight, padding=1))
    # One to three samples: the forward shares each sample between the threads.
    for batch in (1, 2, 3):
        weight = rng.standard_normal((70, 6, 3, 3)).astype(np.float32)
        results.append(F.conv2d(x[:batch], weight, weight[:, 0, 0, 0], padding=1))
        results.append(F.conv2d(x[:batch], weight[:, :, :1, :1]))
        # A BatchNorm folded in: scaled while packing, or in the GEMM's output pass.
        scale = weight[:, 1, 1, 1]
        results.append(F.conv2d(x[:batch], weight, None, padding=1, scale=scale, relu=True))
        results.append(F.conv2d(x[:batch], weight[:, :, :1, :1], scale=scale))
    # One sample through a dense layer: matrix-vector products, blocks of units.
    flat = x.reshape(len(x), -1)
    weight = rng.standard_normal((150, flat.shape[1])).astype(np.float32)
    results.append(F.linear(flat[:1], weight, weight[:, 0]))
    results += list(F.linear_backward(np.ones((1, 150), np.float32), flat[:1], weight))
    return results


def test_batch_one_inference_does_not_depend_on_the_thread_count():
    from cnncli import architectures
    rng = np.random.default_rng(0)
    for model, shape in ((architectures.lenet(), (1, 1, 28, 28)),
                         (architectures.resnet18((3, 64, 64), 10), (1, 3, 64, 64))):
        x = rng.standard_normal(shape).astype(np.float32)
        outputs = []
        for n in (1, 2, 3):
            with F.threads(n):
                outputs.append(model.forward(x))
        for output in outputs[1:]:
            np.testing.assert_array_equal(outputs[0], output)


def test_results_do_not_depend_on_the_thread_count():
    outcomes = {}
    for n in (1, 2, 3):
        with F.threads(n):
            outcomes[n] = run_every_kernel(np.random.default_rng(0))
    for n in (2, 3):
        for single, parallel in zip(outcomes[1], outcomes[n]):
            np.testing.assert_array_equal(single, parallel)


def test_thread_count_is_settable():
    before = F.get_num_threads()
    with F.threads(1):
        assert F.get_num_threads() == 1
        cnncli.set_num_threads(3)
        assert cnncli.get_num_threads() == 3
    assert F.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="n: expected a positive int"):
        F.set_num_threads(bad)


def thread_count_in_subprocess(environment):
    env = {k: v for k, v in os.environ.items()
           if k not in ("CNNCLI_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", "import cnncli; print(cnncli.get_num_threads())"],
                          env=env, capture_output=True, text=True)


def test_thread_count_comes_from_the_environment():
    assert thread_count_in_subprocess({"CNNCLI_NUM_THREADS": "3"}).stdout.strip() == "3"
    assert thread_count_in_subprocess({"OMP_NUM_THREADS": "2,1"}).stdout.strip() == "2"
    both = {"CNNCLI_NUM_THREADS": "1", "OMP_NUM_THREADS": "4"}
    assert thread_count_in_subprocess(both).stdout.strip() == "1"
    default = thread_count_in_subprocess({}).stdout.strip()
    assert default == str(len(os.sched_getaffinity(0)))


def test_bad_thread_environment_is_named():
    result = thread_count_in_subprocess({"CNNCLI_NUM_THREADS": "many"})
    assert result.returncode != 0
    assert "CNNCLI_NUM_THREADS: expected a positive integer, got 'many'" in result.stderr


def test_blas_runs_single_threaded_inside_the_kernels():
    blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
    assert blas, "the kernels call BLAS, so a BLAS library must be loaded"
    before = [info["num_threads"] for info in blas]
    with single_threaded_blas:
        with single_threaded_blas:
            inside = [info["num_threads"] for info in threadpool_info()
                      if info["user_api"] == "blas"]
        assert set(inside) == {1}
    after = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    assert after == before


def spin_setting(environment):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(environment)
    code = "import os, cnncli; print(os.environ.get('GOMP_SPINCOUNT'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True).stdout.strip()


def test_openmp_spin_is_shortened_unless_the_user_chose():
    assert spin_setting({}) == "10000"
    assert spin_setting({"GOMP_SPINCOUNT": "500"}) == "500"
    assert spin_setting({"OMP_WAIT_POLICY": "active"}) == "None"


def test_a_job_sets_threads_for_its_run_only(tmp_path, monkeypatch):
    from cnncli import jobs
    from cnncli.functional import get_num_threads, threads
    from cnncli.jobs import common
    seen = []
    original = common.fit

    def recording(*args, **kwargs):
        seen.append(get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(common, "fit", recording)
    with threads(1):
        jobs.train("digits", output=tmp_path / "d.cnn", epochs=1, threads=2)
        assert seen == [2] and get_num_threads() == 1
        with pytest.raises(jobs.JobError, match="--threads: expected a positive int, got 0"):
            jobs.evaluate(tmp_path / "d.cnn", "digits", threads=0)
        assert get_num_threads() == 1
