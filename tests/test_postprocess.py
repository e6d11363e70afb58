import logging

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model.bundle import DEFAULT_POSTPROCESS
from napari_tiled_unet.postprocess import (
    instances_blockwise,
    instances_from_probabilities,
    labels_from_probabilities,
    semantic_blockwise,
    semantic_from_probabilities,
)
from napari_tiled_unet.training.targets import instance_classes


def probs_from_labels(labels, blur=0.0):
    """One-hot 3-class probabilities (background, interior, boundary), optionally smoothed."""
    p = np.eye(3, dtype=np.float32)[instance_classes(labels)].transpose(2, 0, 1)
    if blur:
        p = np.stack([ndi.gaussian_filter(c, blur) for c in p])
        p /= p.sum(axis=0, keepdims=True)
    return np.ascontiguousarray(p)


def discs(shape, centres, radius, hole=0):
    """Discs (later ids drawn over earlier ones), optionally with a round hole of radius ``hole``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        out[d2 <= radius**2] = i
        if hole:
            out[d2 <= hole**2] = 0
    return out


def same_partition(a, b):
    """True when a and b split the image into the same objects, whatever their ids."""
    if ((a > 0) != (b > 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)  # the contingency table's non-zeros
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_touching_discs_are_separated():
    gt = discs((80, 120), [(40, 40), (40, 70)], 16)  # centres 30 px apart: the discs touch
    assert ndi.label(gt > 0)[1] == 1  # a plain threshold would give one blob
    for blur in (0.0, 0.7):
        out = instances_from_probabilities(probs_from_labels(gt, blur=blur))
        assert out.max() == 2
        assert match_instances(gt, out, 0.75).tp == 2


def test_an_object_split_by_a_thin_boundary_stays_two_objects():
    gt = np.zeros((60, 60), np.int32)
    gt[10:50, 10:30] = 1
    gt[10:50, 30:50] = 2  # one rectangle cut in two along x = 30
    out = instances_from_probabilities(probs_from_labels(gt))
    assert out.max() == 2 and match_instances(gt, out, 0.9).tp == 2


def test_min_size_removes_small_objects_and_numbers_the_rest():
    gt = discs((100, 100), [(30, 30), (70, 70)], 12)
    gt[5:8, 90:93] = 3  # 9 px speck: all boundary, no interior
    probs = probs_from_labels(gt)
    assert instances_from_probabilities(probs, min_size=1).max() == 3  # kept without a seed
    out = instances_from_probabilities(probs, min_size=20)
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert out.dtype == np.int32


def test_fragments_beside_large_nuclei_go_but_small_nuclei_alone_stay():
    import dask.array as da

    # large nuclei (radius 30, ~2,800 px) with 40-px fragments beside them
    large = discs((200, 200), [(50, 50), (50, 140), (140, 95)], 30)
    for k, (y, x) in enumerate([(5, 5), (190, 190), (100, 185)], start=4):
        large[y:y + 7, x:x + 6] = k
    probs = probs_from_labels(large)
    assert instances_from_probabilities(probs, min_size=16).max() == 6  # a fixed 16 px keeps the fragments
    out = instances_from_probabilities(probs, min_size=16, min_size_fraction=0.1)
    assert out.max() == 3 and match_instances(large, out, 0.9).tp == 3
    # blockwise: the same cut, from the whole image's objects
    blockwise = instances_blockwise(da.from_array(probs, chunks=(3, 64, 64)), block_size=48, overlap=64,
                                    min_size=16, min_size_fraction=0.1)[:]
    assert same_partition(out, blockwise)
    # an image of small nuclei only (~45 px each) keeps all of them with the same setting
    small = discs((100, 100), [(y, x) for y in range(10, 100, 20) for x in range(10, 100, 20)], 4)
    kept = instances_from_probabilities(probs_from_labels(small), min_size=16, min_size_fraction=0.1)
    assert kept.max() == small.max() == 25


def test_holes_inside_an_object_are_filled_but_gaps_between_objects_are_not():
    gt = discs((60, 100), [(30, 30)], 20, hole=4)
    gt[10:50, 60:70] = 2  # two bars around a gap that no single object encloses
    gt[10:50, 80:90] = 3
    gt[10:14, 70:80] = 2
    gt[46:50, 70:80] = 3
    probs = probs_from_labels(gt)
    out = instances_from_probabilities(probs)
    assert (out[27:34, 27:34] > 0).all() and len(np.unique(out[10:50, 10:50])) == 2
    assert (out[20:40, 72:78] == 0).all()
    assert (instances_from_probabilities(probs, fill_holes=False)[28:33, 28:33] == 0).all()


def test_semantic_argmax_with_thresholds_falls_back_to_class_0():
    p = np.zeros((3, 2, 2), np.float32)
    p[:, 0, 0] = [0.2, 0.5, 0.3]
    p[:, 0, 1] = [0.1, 0.2, 0.7]
    p[:, 1, 0] = [0.6, 0.3, 0.1]
    p[:, 1, 1] = [0.3, 0.3, 0.4]
    assert semantic_from_probabilities(p).tolist() == [[1, 2], [0, 2]]
    assert semantic_from_probabilities(p).dtype == np.uint8
    assert semantic_from_probabilities(p, {2: 0.5}).tolist() == [[1, 2], [0, 0]]
    assert labels_from_probabilities(p, "semantic", thresholds=[0, 0.6, 0]).tolist() == [[0, 2], [0, 2]]
    assert np.array_equal(semantic_blockwise(p, block_size=1, thresholds={2: 0.5})[:], [[1, 2], [0, 0]])


def test_bundle_defaults_drive_instance_labels():
    gt = discs((64, 64), [(20, 20), (44, 44)], 10)
    probs = probs_from_labels(gt)
    params = dict(DEFAULT_POSTPROCESS["instances"], some_future_option=3)
    out = labels_from_probabilities(probs, "instances", **params)
    assert np.array_equal(out, instances_from_probabilities(probs))
    with pytest.raises(ValueError, match="'instances' or 'semantic'"):
        labels_from_probabilities(probs, "panoptic")


def test_blockwise_equals_in_memory_when_objects_cross_blocks():
    import dask.array as da

    rng = np.random.default_rng(1)
    # discs 27 px wide on a 23 px grid: every disc touches its neighbours, so the whole image
    # is one cluster of touching objects, far wider than any block's window
    grid = [(y, x) for y in range(14, 240, 23) for x in range(14, 240, 23)]
    centres = [(y + rng.integers(-3, 4), x + rng.integers(-3, 4)) for y, x in grid]
    gt = discs((240, 240), centres, 13)
    gt[discs((240, 240), centres[::7], 3) > 0] = 0  # some objects have a hole
    probs = probs_from_labels(gt, blur=0.8)
    ref = instances_from_probabilities(probs, min_size=30)
    assert ref.max() > 80 and ndi.label(ref > 0)[1] <= 3
    assert all(ref[y, x] > 0 for y, x in centres[::7])  # holes filled, across block borders too

    block = 20  # smaller than an object
    out = instances_blockwise(da.from_array(probs, chunks=(3, 50, 50)), block_size=block, overlap=28,
                              min_size=30)
    labels = out[:]
    assert labels.dtype == np.int32 and out.attrs["exact"]
    assert same_partition(ref, labels)
    assert sorted(np.unique(labels)) == list(range(out.attrs["n_objects"] + 1))  # unique, 1..N
    rows = ndi.find_objects(labels)
    crossing = [s for s in rows if s[0].start // block != (s[0].stop - 1) // block
                and s[1].start // block != (s[1].stop - 1) // block]
    assert len(crossing) > 50  # objects spanning block borders in y and x each have one id


def test_blockwise_writes_a_zarr_store_and_cleans_up(tmp_path):
    import zarr

    gt = discs((128, 128), [(40, 40), (90, 90), (40, 62)], 14, hole=3)
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=(3, 128, 128), chunks=(3, 64, 64),
                        dtype="f4")
    z[:] = probs_from_labels(gt)
    out = instances_blockwise(z, out=tmp_path / "labels.zarr", block_size=48, overlap=32)
    again = zarr.open_array(str(tmp_path / "labels.zarr"), mode="r")
    assert np.array_equal(again[:], out[:])
    assert same_partition(again[:], instances_from_probabilities(z[:]))
    assert again.attrs["n_objects"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "p.zarr"]  # no scratch left


def test_blockwise_warns_when_objects_exceed_the_overlap(caplog):
    """The warning is an event (the widget and the CLI show it); the synchronous twin logs it."""
    from napari_tiled_unet.events import WarningEvent, run_to_end
    from napari_tiled_unet.postprocess import instances_blockwise_iter

    gt = discs((96, 96), [(48, 48)], 40)
    events = []
    out = run_to_end(instances_blockwise_iter(probs_from_labels(gt), block_size=32, overlap=16,
                                              fill_holes=False), events.append)
    assert not out.attrs["exact"]
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert len(warnings) == 1 and "raise the overlap" in warnings[0]
    with caplog.at_level(logging.WARNING, logger="napari_tiled_unet.postprocess"):
        instances_blockwise(probs_from_labels(gt), block_size=32, overlap=16, fill_holes=False)
    assert "raise the overlap" in caplog.text


def test_round_trip_of_real_ground_truth_loses_no_objects(dsb_dir):
    import tifffile

    for name in sorted(p.name for p in (dsb_dir / "labels").iterdir())[:8]:
        gt = tifffile.imread(dsb_dir / "labels" / name)
        out = instances_from_probabilities(probs_from_labels(gt), min_size=1)
        m = match_instances(gt, out, 0.5)
        assert m.f1 >= 0.99, (name, m)


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"shape \(3, Y, X\)"):
        instances_from_probabilities(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match=r"shape \(3, Y, X\)"):
        instances_blockwise(np.zeros((2, 5, 5)))


def test_interrupted_blockwise_leaves_no_scratch_and_no_writer_behind(tmp_path):
    """Ctrl-C while blocks are being labelled: once the call has raised, nothing is left
    writing, so the scratch folder stays gone (dask's pool used to go on writing into it)."""
    import os
    import signal
    import threading
    import time

    import zarr

    gt = discs((1024, 1024), [(y, x) for y in range(20, 1024, 40) for x in range(20, 1024, 40)], 15)
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=(3, 1024, 1024),
                        chunks=(3, 256, 256), dtype="f4")
    z[:] = probs_from_labels(gt, blur=1.0)
    stop = threading.Event()

    def interrupt_once_blocks_are_written():
        while not stop.is_set():
            if any(tmp_path.glob(".postprocess-*/seeds.zarr/c/*")):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=interrupt_once_blocks_are_written)
    # Ctrl-C raises KeyboardInterrupt here also when pytest was started in the background, where
    # the shell sets SIGINT to be ignored
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            instances_blockwise(z, out=tmp_path / "labels.zarr", block_size=128, overlap=32)
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, before)
    for _ in range(20):  # a thread still running would write again within this second
        assert not list(tmp_path.glob(".postprocess-*"))
        time.sleep(0.05)


def test_blockwise_reports_progress_block_by_block_and_stops_when_closed(tmp_path):
    """Large images: post-processing shows k/n blocks as it goes, and Cancel (closing the
    generator) stops it, leaving no scratch folder and no thread working behind."""
    import threading

    import zarr

    from napari_tiled_unet.events import run_to_end
    from napari_tiled_unet.postprocess import instances_blockwise_iter, semantic_blockwise_iter

    gt = discs((512, 512), [(y, x) for y in range(20, 512, 40) for x in range(20, 512, 40)], 15)
    z = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=(3, 512, 512), chunks=(3, 128, 128),
                        dtype="f4")
    z[:] = probs_from_labels(gt, blur=1.0)
    events = []
    out = run_to_end(instances_blockwise_iter(z, tmp_path / "labels.zarr", block_size=128), events.append)
    assert [e.stage for e in events] == ["postprocess"] * len(events)
    assert {e.total for e in events} == {3 * 16}  # three passes over 16 blocks
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == 48 and len(done) > 3
    assert same_partition(out[:], instances_from_probabilities(z[:]))

    events = []
    classes = run_to_end(semantic_blockwise_iter(z, tmp_path / "classes.zarr", block_size=128), events.append)
    assert events[-1].done == events[-1].total == 16
    assert np.array_equal(classes[:], semantic_from_probabilities(z[:]))

    gen = instances_blockwise_iter(z, tmp_path / "cancelled.zarr", block_size=128)
    first = next(gen)
    gen.close()
    assert first.done < first.total
    assert "n_objects" not in zarr.open_array(str(tmp_path / "cancelled.zarr"), mode="r").attrs
    assert not list(tmp_path.glob(".postprocess-*"))
    assert not [t.name for t in threading.enumerate() if t.name.startswith("postprocess")]


def test_object_count_of_blockwise_labels_is_read_from_the_store_not_computed(tmp_path):
    """Segmentation.n_objects (the widget's status line) reads the stored count: no dask pass."""
    import shutil

    from napari_tiled_unet.segmentation import Segmentation

    gt = discs((96, 96), [(20, 20), (60, 70)], 10)
    out = instances_blockwise(probs_from_labels(gt), tmp_path / "labels.zarr", block_size=48, overlap=32)
    result = Segmentation(out, None, "instances", ["background", "interior", "boundary"])
    expected = int(np.asarray(out[:]).max())
    assert expected == 2
    for chunk in (tmp_path / "labels.zarr").rglob("c"):  # every pixel gone: counting would read zeros
        shutil.rmtree(chunk)
    assert int(np.asarray(out[:]).max()) == 0
    assert result.n_objects == expected


def test_in_memory_blocks_give_the_whole_image_result_also_for_nuclei_wider_than_the_overlap():
    """The widget post-processes in-memory results over 1024x1024 in blocks (napari stays
    responsive); nuclei wider than the blocks' overlap (63x images, ~100-180 px) must still come
    out as whole-image post-processing makes them, with no 'may differ' warning."""
    from napari_tiled_unet.events import WarningEvent, run_to_end
    from napari_tiled_unet.segmentation import IN_MEMORY_BLOCK, IN_MEMORY_EXACT, labels_from_iter

    step = 150
    centres = [(y, x) for y in range(80, 1100, step) for x in range(80, 1100, step)]
    gt = discs((1100, 1100), centres, 72)  # 144 px nuclei, touching, many across block borders
    probs = probs_from_labels(gt, blur=0.8)
    whole = instances_from_probabilities(probs, min_size=30)
    events = []
    labels = run_to_end(labels_from_iter(probs, "instances", {"min_size": 30}, in_blocks=True), events.append)
    assert IN_MEMORY_BLOCK * 2 < 1100 and IN_MEMORY_EXACT >= 1100 * 1100  # in blocks, then whole
    assert not [e for e in events if isinstance(e, WarningEvent)]
    assert same_partition(whole, labels) and labels.max() == len(centres)
