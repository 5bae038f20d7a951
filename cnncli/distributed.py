"""Data-parallel training over MPI (mpi4py): one model across K processes.

    mpirun -n 2 cnncli train mnist -o mnist.cnn          # the CLI finds the ranks itself
    fit(model, x, y, comm=world())                       # the library, given a communicator

Every rank holds the whole model and takes its shard of every global batch
(the batch is cut into K contiguous pieces, in rank order). Each rank's loss
gradient is scaled by its share of the batch, so the gradients summed across
ranks are the gradient of the global batch's mean loss: ``--batch-size``
keeps its meaning whatever K. The sum is taken in a fixed order (rank 0
gathers every rank's gradients, adds them in rank order and broadcasts the
result), so for a given K a run gives the same bits every time, and every
rank applies the same update to the same weights. Running totals (loss,
correct predictions, samples) and the Ctrl-C flag travel with a small sum
each step, so every rank sees the same metrics and stops at the same batch.

BatchNorm layers use each rank's own batch statistics (as PyTorch's
DistributedDataParallel does); their running statistics are averaged across
ranks after every step, so they are the same on every rank. With
``fit(sync_batchnorm=True)`` (``--sync-batchnorm``) they use the global
batch's statistics instead, summed across ranks in the forward and backward
passes: the arithmetic of one process on the whole batch.

mpi4py is an optional dependency (``pip install "cnncli[mpi]"``); nothing
else in cnncli imports it.
"""

import os
import tempfile

import numpy as np

from cnncli.callbacks import Callback
from cnncli.layers import BatchNorm2D

__all__ = ["Communicator", "world", "current", "launched_by_mpi", "MPI_MISSING",
           "SynchronizedBatchNorm"]

MPI_MISSING = ('data-parallel training needs the MPI extra: pip install "cnncli[mpi]" '
               "(mpi4py and an MPI library)")

# What MPI launchers put in each rank's environment.
LAUNCH_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                    "MPI_LOCALNRANKS")


def launched_by_mpi():
    """Whether this process was started by mpirun/mpiexec (with more than one rank)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(name)
        if value is not None:
            return value.isdigit() and int(value) > 1
    return "PMIX_RANK" in os.environ


_WORLD = []


def world():
    """The communicator of all ranks when launched by mpirun with more than one rank,
    else None. ImportError (naming the extra) when launched so without mpi4py."""
    if _WORLD:
        return _WORLD[0]
    if not launched_by_mpi():
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError(MPI_MISSING) from None
    comm = MPI.COMM_WORLD
    _WORLD.append(Communicator(comm) if comm.Get_size() > 1 else None)
    if _WORLD[0] is not None:
        _share_cores(comm, MPI)
    return _WORLD[0]


def _share_cores(comm, MPI):
    """Give each rank its share of this machine's cores, unless the user set a thread
    count: K ranks of all-core kernels on one machine would fight over the cores."""
    from cnncli.parallelism import get_num_threads, set_num_threads, thread_count_set
    if thread_count_set() or any(os.environ.get(name) for name in ("CNNCLI_NUM_THREADS",
                                                                    "OMP_NUM_THREADS")):
        return
    local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    set_num_threads(max(1, get_num_threads() // local))


def current():
    """The communicator ``world()`` made in this process, if any (imports nothing)."""
    return _WORLD[0] if _WORLD else None


def _mpi_type(dtype):
    from mpi4py.util.dtlib import from_numpy_dtype
    return from_numpy_dtype(np.dtype(dtype))


class Communicator:
    """The collective operations training needs, on an mpi4py communicator, each with a
    fixed reduction order."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def bounds(self, count):
        """(start, stop) of this rank's contiguous piece of ``count`` items, the pieces in
        rank order and as even as can be."""
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def shard(self, indices):
        """This rank's piece of a global batch's ``indices`` (an array)."""
        start, stop = self.bounds(len(indices))
        return indices[start:stop]

    def sum(self, values):
        """The element-wise sum over ranks of a 1-D float array, the same bits on every
        rank and in every run: a ring (each rank sends and receives about two copies of
        the array, whatever the number of ranks) where the array has an element per
        rank, else gathered on rank 0 in rank order and broadcast."""
        values = np.ascontiguousarray(values)
        if values.ndim == 1 and len(values) >= self.size:
            return self._ring_sum(values)
        gathered = np.empty((self.size,) + values.shape, dtype=values.dtype) \
            if self.rank == 0 else None
        self.comm.Gather(values, gathered, root=0)
        total = np.empty_like(values)
        if self.rank == 0:
            total[...] = gathered[0]
            for row in gathered[1:]:
                total += row
        self.comm.Bcast(total, root=0)
        return total

    def _ring_sum(self, values):
        """Reduce-scatter then all-gather around the ring of ranks, in K - 1 steps each.
        Chunk c is summed along the ring from rank c on, always in that order."""
        total = values.copy()
        size, rank = self.size, self.rank
        edges = [len(values) * part // size for part in range(size + 1)]
        chunk = [slice(edges[part], edges[part + 1]) for part in range(size)]
        right, left = (rank + 1) % size, (rank - 1) % size
        received = np.empty(edges[1] - edges[0] + len(values) % size + 1, dtype=values.dtype)
        for step in range(size - 1):
            send, take = chunk[(rank - step) % size], chunk[(rank - step - 1) % size]
            incoming = received[:take.stop - take.start]
            self.comm.Sendrecv(total[send], dest=right, recvbuf=incoming, source=left)
            total[take] += incoming
        for step in range(size - 1):
            send, take = chunk[(rank + 1 - step) % size], chunk[(rank - step) % size]
            incoming = received[:take.stop - take.start]
            self.comm.Sendrecv(total[send], dest=right, recvbuf=incoming, source=left)
            total[take] = incoming
        return total

    def gather_rows(self, local, count):
        """The (count, ...) array whose rows ``bounds(count)`` of each rank are that rank's
        ``local`` rows, on every rank."""
        local = np.ascontiguousarray(local)
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        whole = np.empty((count,) + local.shape[1:], dtype=local.dtype)
        counts = [(count * (r + 1) // self.size - count * r // self.size) * row
                  for r in range(self.size)]
        offsets = [count * r // self.size * row for r in range(self.size)]
        self.comm.Allgatherv(local, [whole, counts, offsets, _mpi_type(local.dtype)])
        return whole

    def decode_shared(self, images, skip_bad=False):
        """``images`` (lazy image files) decoded into one memory-mapped array per machine,
        and the (row, message) of each file that could not be decoded: the ranks of a
        machine each decode their share into a temporary file, then all map it read-only;
        the file is unlinked once mapped, so it goes with the processes. Without
        ``skip_bad`` a bad file is the same DataError on every rank."""
        from mpi4py import MPI
        from cnncli.data import DataError
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        path = None
        if node.Get_rank() == 0:
            handle, path = tempfile.mkstemp(prefix="cnncli-images-", suffix=".npy",
                                            dir=os.environ.get("CNNCLI_CACHE") or None)
            os.close(handle)
            np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                      shape=images.shape).flush()
        path = node.bcast(path, root=0)
        count, size, rank = len(images), node.Get_size(), node.Get_rank()
        start, stop = count * rank // size, count * (rank + 1) // size
        bad = []
        target = np.load(path, mmap_mode="r+")
        for row in range(start, stop):
            try:
                target[row] = images[row]
            except DataError as error:
                if not skip_bad:
                    bad.append((row, f"{error}; pass --skip-bad to leave bad files out"))
                    break
                bad.append((row, str(error)))
        target.flush()
        del target
        bad = sorted(pair for share in node.allgather(bad) for pair in share)
        decoded = np.load(path, mmap_mode="r") if skip_bad or not bad else None
        node.Barrier()
        if rank == 0:
            os.unlink(path)
        node.Free()
        if bad and not skip_bad:
            raise DataError(bad[0][1])
        return decoded, bad

    def sum_gradients(self, model):
        """Replace every trainable parameter's gradient by its sum over ranks (a rank with
        no samples in the batch contributes zeros)."""
        named = model.named_parameters(trainable_only=True)
        if not named:
            return
        flat = np.concatenate([(p.grad if p.grad is not None else np.zeros_like(p.value))
                               .reshape(-1) for _, p in named])
        total = self.sum(flat)
        offset = 0
        for _, parameter in named:
            size = parameter.value.size
            parameter.grad = total[offset:offset + size].reshape(parameter.value.shape)
            offset += size

    def average_buffers(self, model):
        """Make every buffer (BatchNorm running statistics) the mean over ranks."""
        buffers = list(model.buffers().values())
        if not buffers:
            return
        flat = np.concatenate([buffer.reshape(-1) for buffer in buffers]).astype(np.float64)
        total = self.sum(flat) / self.size
        offset = 0
        for buffer in buffers:
            buffer[...] = total[offset:offset + buffer.size].reshape(buffer.shape)
            offset += buffer.size

    def any(self, flag):
        """Whether ``flag`` is true on any rank."""
        return bool(self.sum(np.array([1.0 if flag else 0.0]))[0])

    def abort(self, code=1):
        """End every rank now (a rank that failed must not leave the others waiting)."""
        self.comm.Abort(code)


class SynchronizedBatchNorm(Callback):
    """While ``fit`` runs, every BatchNorm2D of the model (blocks included) computes its
    batch statistics over the global batch of all ranks."""

    def __init__(self, comm, samples, batch_size):
        last = samples % batch_size or batch_size
        if min(batch_size, last) < comm.size:
            raise ValueError(f"sync_batchnorm: every batch needs a sample on each of the "
                             f"{comm.size} ranks; a batch of {min(batch_size, last)} has "
                             "too few (choose another batch size)")
        self.comm = comm

    def on_train_begin(self, model):
        self.layers = [layer for _, layer in model.named_layers()
                       if isinstance(layer, BatchNorm2D)]
        for layer in self.layers:
            layer.synchronized = self.comm

    def on_train_end(self, model):
        for layer in self.layers:
            layer.synchronized = None
