"""Evaluation on a Dask LocalCluster: throughput with 1 and 2 workers against the local
run, and the peak memory of each worker.

    python bench/bench_dask.py --mnist PATH/mnist.npz

The model is lenet-mnist, the data all 60,000 training images of MNIST (an
uncompressed .npz, memory-mapped: each worker reads the rows of its shards).
Each worker runs the kernels on one thread; the local run on two.
"""

import argparse
import os
import sys
import time


def worker_peak_mib():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:"))) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True)
    args = parser.parse_args()
    import numpy as np
    from cnncli import jobs
    from cnncli.jobs import cluster
    model = jobs.resolve_model("lenet-mnist")
    recipe = cluster.DatasetRecipe(_training_part, os.path.abspath(args.mnist))
    count = 60000
    started = time.perf_counter()
    local = jobs.evaluate("lenet-mnist", args.mnist, split="all", threads=2).probabilities
    seconds = time.perf_counter() - started
    print("| run | seconds | images/s | peak MiB per worker |")
    print("|---|---|---|---|")
    print(f"| local, 2 threads | {seconds:.1f} | {count / seconds:,.0f} | |", flush=True)
    for workers in (1, 2):
        with cluster.connect(f"local:{workers}") as client:
            client.run(_one_thread)
            started = time.perf_counter()
            spread = cluster.shard_results(client, model, recipe, count, 256)
            seconds = time.perf_counter() - started
            peaks = client.run(worker_peak_mib)
        assert np.array_equal(spread, local), "the cluster's results differ from the local run"
        print(f"| {workers} worker(s), 1 thread each | {seconds:.1f} | {count / seconds:,.0f} | "
              f"{', '.join(f'{peak:.0f}' for peak in peaks.values())} |", flush=True)


def _one_thread():
    import cnncli
    cnncli.set_num_threads(1)


def _training_part(model, path):
    from cnncli import data
    return data.load_npz(path).train


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
