"""segment --ome-labels: an OME-NGFF label image with a pyramid beside the OME-Zarr image."""

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.cli import main
from napari_tiled_unet.ome_zarr import MIN_LEVEL_SIZE, write_ome_labels

ome_zarr = pytest.importorskip("ome_zarr")


def _ome_image(path, image, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(image, root, axes="yx", fmt=FormatV04() if version == "0.4" else FormatV05())
    return path


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if "labels" not in p.parts)


def _read_back(path):
    """The label images ome-zarr-py finds in ``path``: name -> list of pyramid levels."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    found = {}
    for node in Reader(parse_url(str(path)))():
        if any(isinstance(spec, Label) for spec in node.specs):
            found[node.metadata["name"]] = [np.asarray(level) for level in node.data]
    return found


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_segment_writes_labels_into_the_ome_zarr_and_they_read_back(tiny_model_file, tmp_path, version):
    image = np.tile(nuclei_image(), (1, 1))[:512, :640]
    src = _ome_image(tmp_path / "cells.ome.zarr", image, version)
    before = _tree(src)
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "-m", str(tiny_model_file), "--ome-labels",
                 "nuclei"]) == 0
    labels = np.asarray(zarr.open_array(str(out / "cells_labels.zarr"), mode="r"))  # the usual output too
    assert labels.max() > 5
    levels = _read_back(src)["nuclei"]
    assert np.array_equal(levels[0], labels)
    assert len(levels) >= 2 and levels[1].shape == (256, 320)
    assert np.array_equal(levels[1], labels[::2, ::2])  # nearest neighbour keeps the ids
    assert min(levels[-1].shape) >= MIN_LEVEL_SIZE
    assert _tree(src) == before  # the image's own files are untouched
    assert not [p for p in (src / "labels").iterdir() if p.name.startswith(".") and "partial" in p.name]


def test_ome_labels_refuses_other_inputs_before_any_work(tiny_model_file, tmp_path, capsys):
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, nuclei_image()[:64, :64])
    assert main(["segment", str(tif), "-o", str(tmp_path / "o"), "-m", str(tiny_model_file),
                 "--ome-labels"]) == 1
    assert "needs" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_existing_labels_of_that_name_are_kept_without_overwrite(tmp_path, capsys, tiny_model_file):
    src = _ome_image(tmp_path / "c.ome.zarr", nuclei_image()[:64, :64], "0.4")
    first = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    write_ome_labels(src, first, "mine")
    assert main(["segment", str(src), "-o", str(tmp_path / "o"), "-m", str(tiny_model_file),
                 "--ome-labels", "mine"]) == 1
    assert "already has labels named 'mine'" in capsys.readouterr().err
    assert np.array_equal(_read_back(src)["mine"][0], first)
    write_ome_labels(src, first * 0 + 7, "other")
    assert json.loads((src / "labels" / ".zattrs").read_text())["labels"] == ["mine", "other"]


def test_napari_opens_the_labels_as_a_labels_layer(make_napari_viewer, tmp_path):
    pytest.importorskip("napari_ome_zarr")
    src = _ome_image(tmp_path / "c.ome.zarr", nuclei_image()[:512, :512], "0.4")
    labels = np.zeros((512, 512), np.int32)
    labels[100:150, 200:260] = 4
    write_ome_labels(src, labels, "nuclei")
    viewer = make_napari_viewer()
    viewer.open(str(src), plugin="napari-ome-zarr")
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    found = [layer for layer in viewer.layers if type(layer).__name__ == "Labels"]
    assert len(found) == 1 and found[0].name.endswith("nuclei"), kinds  # napari-ome-zarr names it by path
    layer = found[0]
    data = layer.data[0] if layer.multiscale else layer.data
    assert np.array_equal(np.asarray(data), labels)


def test_save_labels_in_the_segment_widget_adds_them_to_a_chosen_ome_zarr(
        make_napari_viewer, qtbot, monkeypatch, tiny_model_file, tmp_path):
    from qtpy.QtCore import Qt

    from napari_tiled_unet._qt import predict_widget
    from napari_tiled_unet._qt.session import ModelSession

    src = _ome_image(tmp_path / "c.ome.zarr", nuclei_image()[:128, :160], "0.5")
    before = _tree(src)
    viewer = make_napari_viewer()
    w = predict_widget.SegmentWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model_file)
    w.device_combo.setCurrentText("cpu")
    viewer.add_image(nuclei_image()[:128, :160].copy(), name="img")
    w.image_combo.setCurrentText("img")
    qtbot.mouseClick(w.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.job is not None and not w.busy, timeout=60_000)  # run and display done
    layer = viewer.layers["img labels"]
    layer.paint((60, 60), 77)  # the user's correction is saved too
    monkeypatch.setattr(w, "ask_save_path", lambda *args: str(src))
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w._side_job.finished, timeout=30_000)
    assert np.array_equal(_read_back(src)["img labels"][0], layer.data)
    assert _tree(src) == before
