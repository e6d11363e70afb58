"""bioimage.io packages in the widgets: they load in both, and the Fine-tune widget exports one."""

import zipfile

import numpy as np
import pytest
import yaml

from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.bioimageio import export_bioimageio
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_package(tiny_model_file, tmp_path_factory):
    return export_bioimageio(tiny_model_file, tmp_path_factory.mktemp("pkg") / "tiny.zip")


def test_the_segment_widget_segments_with_a_bioimageio_package(make_napari_viewer, qtbot, tiny_package,
                                                               tiny_model_file, monkeypatch):
    from napari_tiled_unet._qt.session import ModelSession

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer, session=ModelSession())  # this session's "last used" stays as it was
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_package)
    w.device_combo.setCurrentText("cpu")
    w.precision_combo.setCurrentText("fp32")  # as segment() below (the widget's default is auto)
    image = nuclei_image()[:128, :160].copy()
    viewer.add_image(image, name="nuclei")
    w.image_combo.setCurrentText("nuclei")
    assert w.model_combo.currentText() == "tiny.zip"
    w.run()
    qtbot.waitUntil(lambda: w.job is not None and not w.busy, timeout=60_000)  # run and display done
    got = viewer.layers["nuclei labels"].data
    assert got.max() > 0
    assert np.array_equal(got, segment(load_model(tiny_model_file), image).labels)


def test_the_finetune_widget_starts_from_a_package_and_exports_one_after_training(
        make_napari_viewer, qtbot, tiny_package, tmp_path, monkeypatch):
    import napari.utils.notifications as n

    monkeypatch.setattr(n, "show_info", lambda message: None)
    viewer = make_napari_viewer()
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_package)
    assert w._base_model().metadata["imported_from"]["file"] == "tiny.zip"
    assert not w.export_button.isEnabled()  # nothing trained yet
    w.device_combo.setCurrentText("cpu")
    w.patch_spin.setValue(64)
    w.batch_spin.setValue(2)
    w.budget_spin.setValue(1)
    w.steps_spin.setValue(2)
    viewer.add_image(nuclei_image()[:128, :128].copy(), name="img")
    viewer.add_labels(nuclei_labels()[:128, :128].copy(), name="my labels")
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    w.train()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.export_button.isEnabled()
    written = w.export_bioimageio(tmp_path / "tuned")  # the extension is added
    assert written == tmp_path / "tuned.zip" and w.running and not w.export_button.isEnabled()
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)  # on a worker thread: napari stays responsive
    assert w.status.text() == f"Exported for bioimage.io to {written}." and w.export_button.isEnabled()
    rdf = yaml.safe_load(zipfile.ZipFile(written).read("rdf.yaml"))
    assert rdf["config"]["napari_tiled_unet"]["metadata"]["training"]["steps"] == 2
    assert load_model(written).model.config == w.bundle.model.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned.zip"]  # no temporary file left

    w.export_bioimageio(tmp_path / "no such folder" / "x.zip")
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.status.text().startswith("The folder") and w.status.text().endswith("another output.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned.zip"]
