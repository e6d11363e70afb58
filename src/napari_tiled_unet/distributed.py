"""The dask.distributed path: the windows of one zarr image on many workers.

The same engine as everywhere else: each task runs :func:`~napari_tiled_unet.inference.predict`
on its part of the image with a ready tile plan, so tiling, normalization and the network are
the single-process code. What is added here is only the split:

* The plan is **chunk-aligned** (:func:`~napari_tiled_unet.tiling.chunk_plan`, chosen by
  :func:`cluster_tiles` from the front end's :class:`~napari_tiled_unet.tiling.TileSettings`:
  a window size sets the chunk; blend mode is refused): every window keeps exactly one chunk
  of the output store, so tasks write disjoint chunks and never race on a partial chunk.
* Each worker loads the model **once** (the bundle's bytes are broadcast, and a per-process
  cache keyed by their hash holds the network).
* A worker reads only its windows from the input store (it opens the store by path).
* Post-processing is the labels module's blockwise path, run by dask on the same cluster.

Normalization statistics are computed once on the client and shipped with every task, so all
windows see the same global mapping.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import tiling
from .errors import SettingsError
from .events import WarningEvent
from .runtime import Runtime
from .tiling import TileSettings

log = logging.getLogger(__name__)

_MODEL_CACHE: dict[str, Any] = {}


def make_client(workers: int | None = None, scheduler: str | None = None):
    """A dask client: a LocalCluster of ``workers`` processes, or one connected to ``scheduler``."""
    from distributed import Client, LocalCluster

    from . import settings

    workers = settings.workers(workers)
    if scheduler:
        try:
            return Client(scheduler)
        except (OSError, TimeoutError) as exc:
            from .errors import InputError

            raise InputError(f"Could not connect to the dask scheduler at {scheduler} "
                             f"({type(exc).__name__}); check the address and that the scheduler is "
                             "running.") from None
    n = workers or 2
    threads = max(1, (os.cpu_count() or 1) // n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                           dashboard_address=None)
    return Client(cluster)


def cluster_tiles(tiles: TileSettings, depth: int) -> TileSettings:
    """The tiling the cluster runs for ``tiles``: exact windows aligned to output chunks (a
    window size asked for sets the chunk, :meth:`TileSettings.aligned_to_chunks`); blend mode
    is refused in one sentence, before any work."""
    if tiles.mode != "exact":
        raise SettingsError("The dask cluster computes exact tiles only; leave out --mode blend, or run "
                            "without --workers/--scheduler.")
    if tiles.plan is not None:
        raise SettingsError("The dask cluster makes its own chunk-aligned plan; give a window size instead "
                            "of a plan.")
    return tiles.aligned_to_chunks(depth)


def _bundle_bytes(bundle) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return Path(bundle.save(Path(d) / "m.safetensors")).read_bytes()


def _worker_model(payload: bytes):
    """The bundle for ``payload`` on this worker process, loaded on first use only."""
    key = hashlib.sha256(payload).hexdigest()
    if key not in _MODEL_CACHE:
        from .model.bundle import load_bundle

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.safetensors"
            p.write_bytes(payload)
            _MODEL_CACHE[key] = load_bundle(p)
        log.info("worker %s loaded the model", os.getpid())
    return _MODEL_CACHE[key]


class _Slice:
    """A read-only view of rows/columns of a zarr array opened by path (reads only what is sliced)."""

    def __init__(self, path: str, y0: int, y1: int, x0: int, x1: int) -> None:
        import zarr

        self.arr = zarr.open_array(path, mode="r")
        self.off = (y0, x0)
        self.shape = (y1 - y0, x1 - x0)
        self.dtype = self.arr.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        ys, xs = key
        return self.arr[self.off[0] + ys.start : self.off[0] + ys.stop,
                        self.off[1] + xs.start : self.off[1] + xs.stop]


def _run_windows(payload: bytes, in_path: str, out_path: str, windows: list[tiling.Window],
                 stats: np.ndarray, shape: tuple[int, int], job: tuple[TileSettings, Runtime, bool]) -> int:
    """Task: compute ``windows`` (each keeping one output chunk) and write their chunks."""
    from dataclasses import replace

    import zarr

    from .inference import predict

    tiles, runtime, tta = job
    runtime = replace(runtime, prefetch=False)  # one window per call: nothing to read ahead
    bundle = _worker_model(payload)
    out = zarr.open_array(out_path, mode="r+")
    h, w = shape
    for win in windows:
        y1, x1 = min(win.y1, h), min(win.x1, w)
        view = _Slice(in_path, win.y0, y1, win.x0, x1)
        # one window covering the view: its plan is trivially the window itself, padded at the
        # far end inside the image's padded extent exactly as the full plan would.
        sub = tiling.TilePlan((y1 - win.y0, x1 - win.x0), win.shape, win.shape, 0, "exact",
                              (tiling.Window(0, win.shape[0], 0, win.shape[1], 0, win.shape[0], 0,
                                             win.shape[1]),))
        probs = predict(bundle, view, tiles=replace(tiles, plan=sub, chunk=None), runtime=runtime,
                        stats=stats, tta=tta)
        ky1, kx1 = min(win.ky1, h), min(win.kx1, w)
        out[:, win.ky0 : ky1, win.kx0 : kx1] = probs[:, win.ky0 - win.y0 : ky1 - win.y0,
                                                     win.kx0 - win.x0 : kx1 - win.x0]
    return len(windows)


def predict_distributed(client, bundle, image_path: str, out_path: str, *, tiles: TileSettings | None = None,
                        runtime: Runtime | None = None, tta: bool = False, tasks_per_worker: int = 4):
    """Probabilities of the zarr image at ``image_path`` into a new zarr at ``out_path``.

    ``tiles`` (exact; see :func:`cluster_tiles`), ``runtime`` (resolved on each worker) and
    ``tta`` as in :func:`~napari_tiled_unet.inference.predict_iter`. Returns the output zarr
    array (n_classes, Y, X) float32.
    """
    import zarr

    from . import normalization

    src = zarr.open_array(image_path, mode="r")
    if src.ndim != 2:
        raise ValueError(
            "The cluster path takes 2D single-channel zarr images; segment stacks plane by plane."
        )
    shape = tuple(src.shape)
    tiles = cluster_tiles(tiles or TileSettings(), bundle.depth)
    chunk = tiles.chunk
    plan = tiles.make_plan(shape, bundle.depth)
    stats = normalization.compute_stats(src, bundle.normalization)
    n_classes = len(bundle.class_names)
    out = zarr.open_array(out_path, mode="w", shape=(n_classes, *shape), chunks=(n_classes, chunk, chunk),
                          dtype="float32")
    out.attrs["complete"] = False
    payload = client.scatter(_bundle_bytes(bundle), broadcast=True)
    n_workers = max(1, len(client.scheduler_info()["workers"]))
    n_tasks = min(len(plan), n_workers * tasks_per_worker)
    groups = [list(plan.windows[i::n_tasks]) for i in range(n_tasks)]
    job = (tiles, runtime or Runtime(), tta)
    futures = [client.submit(_run_windows, payload, image_path, out_path, g, stats, shape, job, pure=False)
               for g in groups]
    done = sum(f.result() for f in futures)
    if done != len(plan):
        raise RuntimeError(f"Only {done} of {len(plan)} windows were computed.")
    out.attrs["complete"] = True
    return out


def _log_warning(event: Any) -> None:
    if isinstance(event, WarningEvent):
        log.warning(event.message)


@contextlib.contextmanager
def _cluster_failures(name: str) -> Iterator[None]:
    """Within: the cluster giving up on a task (workers killed again and again, the scheduler
    gone) becomes one RuntimeError sentence; the CLI counts the image as failed."""
    from distributed import CancelledError
    from distributed import TimeoutError as DaskTimeout
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    try:
        yield
    except (KilledWorker, CancelledError, CommClosedError, DaskTimeout) as exc:
        raise RuntimeError(
            f"The dask cluster could not finish {name} ({type(exc).__name__}: its workers died or the "
            "scheduler went away); check the workers' memory and logs (--verbose), then run it again."
        ) from None


def segment_distributed(client, bundle, image: Any, dst: Path, *, postprocess: Any = None,
                        tiles: TileSettings | None = None, runtime: Runtime | None = None, tta: bool = False,
                        on_event=None):
    """Segment a zarr image on the cluster; labels are written blockwise to ``dst`` (zarr) or
    returned in memory for a tif destination. ``on_event`` receives the warnings (and the
    post-processing's progress)."""
    from .io import ChunkWatch, scratch_prefix, store_path
    from .segmentation import Segmentation, labels_from, postprocess_params

    path = store_path(image)
    if path is None:
        raise ValueError("The cluster path needs a zarr image on disk that the workers can open.")
    params = postprocess_params(bundle, postprocess)
    tiles = cluster_tiles(tiles or TileSettings(), bundle.depth)
    on_event = on_event or _log_warning
    watch = ChunkWatch.of(image)
    if watch is not None and watch.absent_message():
        on_event(WarningEvent(watch.absent_message()))
    tmp = tempfile.mkdtemp(prefix=scratch_prefix("probabilities"), dir=Path(dst).parent)
    try:
        with _cluster_failures(path.name):
            probs = predict_distributed(client, bundle, str(path), str(Path(tmp) / "probabilities.zarr"),
                                        tiles=tiles, runtime=runtime, tta=tta)
            if watch is not None:
                watch.check()
            out = str(dst) if Path(dst).suffix == ".zarr" else None
            labels = labels_from(probs, bundle.task, params, out=out, on_event=on_event)
        if out is None:
            labels = np.asarray(labels[:]) if hasattr(labels, "attrs") else np.asarray(labels)
        return Segmentation(labels, probs, bundle.task, bundle.class_names, params)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
