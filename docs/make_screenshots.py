"""Screenshots for docs/user-guide.md, made with the real plugin in a real napari window.

    xvfb-run -a python docs/make_screenshots.py        # writes docs/images/*.png
    xvfb-run -a python docs/make_screenshots.py objects        # only the named picture(s)

Uses the built-in model on the shipped DSB2018 sample; the fine-tune picture trains for a
few dozen steps on a corner of the sample (CPU, about a minute).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from napari._qt.dialogs.qt_notification import NapariQtNotification
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
from napari_tiled_unet._qt.layerview import camera_of
from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

OUT = Path(__file__).resolve().parent / "images"


def settle(seconds: float = 0.5) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(widget, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while getattr(widget, "busy", False) or not (widget.job is not None and widget.job.finished):
        if time.monotonic() > end:
            raise TimeoutError("the widget's job did not finish")
        QApplication.processEvents()
        time.sleep(0.01)
    settle()


def shot(viewer, name: str) -> None:
    OUT.mkdir(exist_ok=True)
    viewer.window.screenshot(str(OUT / name), flash=False, canvas_only=False)
    print("wrote", OUT / name)


def segment_pictures() -> None:
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1400, 850)
    # a calibrated image: the result layer takes its scale and units
    viewer.add_image(nuclei_image(), name="nuclei", scale=(0.65, 0.65), units=("um", "um"))
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment (U-Net)", area="right")
    w.device_combo.setCurrentText("cpu")
    settle()
    shot(viewer, "segment-before.png")
    w.run_button.click()
    wait(w)
    labels = viewer.layers["nuclei labels"]
    labels.contour = 2
    settle()
    viewer.reset_view()  # the whole image, in the canvas made smaller by the Objects table
    shot(viewer, "segment-result.png")
    # a correction painted into the result, then Segment again: the edit is kept
    labels.contour = 0
    labels.selected_label = labels.data.max() + 1
    labels.brush_size = 40
    labels.paint((120, 200), labels.selected_label, refresh=True)
    w.run_button.click()
    wait(w)
    settle(1.0)
    viewer.reset_view()
    shot(viewer, "segment-edits.png")
    viewer.close()


def rgb_picture() -> None:
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1400, 850)
    img = nuclei_image()
    rgb = np.stack([img // 4, img // 3, img], axis=-1)  # a DAPI-blue RGB snapshot
    viewer.add_image(rgb, name="rgb snapshot", rgb=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment (U-Net)", area="right")
    w.device_combo.setCurrentText("cpu")
    w.channel_combo.setCurrentText("2 (blue)")
    w.run_button.click()
    wait(w)
    viewer.layers["rgb snapshot labels"].contour = 2
    settle()
    viewer.reset_view()
    shot(viewer, "segment-rgb.png")
    viewer.close()


def finetune_picture() -> None:
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1400, 850)
    img, lab = nuclei_image(), nuclei_labels()
    viewer.add_image(img, name="nuclei")
    corrected = np.zeros_like(lab)
    corrected[:260, :348] = lab[:260, :348]  # "the objects the user fixed", in one corner
    viewer.add_labels(corrected, name="my corrections")
    viewer.add_shapes([np.array([[0, 0], [260, 348]])], shape_type="rectangle", name="region",
                      edge_color="yellow", face_color="transparent")
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fine-tune (U-Net)", area="right")
    settle()
    w.image_combo.setCurrentText("nuclei")
    w.labels_combo.setCurrentText("my corrections")
    w.region_combo.setCurrentText("region")
    w.budget_unit.setCurrentText("minutes")
    w.budget_spin.setValue(0.75)
    w.patch_spin.setValue(128)
    w.train()
    wait(w)
    shot(viewer, "finetune.png")
    viewer.close()


def objects_picture() -> None:
    """The Objects table after segmenting the sample (the pixel size set to 0.5 um), with one
    row clicked: napari centres on that nucleus, and the status bar shows its measurements."""
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1500, 900)
    viewer.add_image(nuclei_image(), name="nuclei", scale=(0.5, 0.5), units=("um", "um"))
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment (U-Net)", area="right")
    w.device_combo.setCurrentText("cpu")
    w.run()
    wait(w)
    layer = viewer.layers["nuclei labels"]
    layer.contour = 2
    layer.units = ("um", "um")  # the image's units (napari warned that the result lacked them)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    table = w._table
    table.view.sortByColumn(table.model.names.index("area_px"), Qt.SortOrder.DescendingOrder)
    # click the largest nucleus away from the image's border
    f = table.model
    names = f.names
    for row in range(f.n):
        y, x = (f.columns[names.index(c)][row] for c in ("centroid_y_px", "centroid_x_px"))  # sorted in place
        if 150 < y < 370 and 200 < x < 500:
            break
    table.view.selectRow(row)
    table._go_to_row(table.proxy.index(row, 0))
    camera_of(viewer).zoom = 3
    settle()
    label = int(layer.selected_label)
    y, x = np.argwhere(layer.data == label).mean(axis=0)
    viewer.status = layer.get_status((y * 0.5, x * 0.5), world=True)["coordinates"]
    settle()
    shot(viewer, "objects-table.png")
    viewer.close()


def corrections_picture() -> None:
    """The correction loop: the built-in model's result with four objects corrected (taken from
    the sample's annotation, as a user would redraw them), then Learn from my corrections."""
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1400, 850)
    img, truth = nuclei_image(), nuclei_labels()
    viewer.add_image(img, name="nuclei")
    seg = SegmentWidget(viewer)
    seg_dock = viewer.window.add_dock_widget(seg, name="Segment (U-Net)", area="right")
    seg.device_combo.setCurrentText("cpu")
    settle()
    seg.image_combo.setCurrentText("nuclei")
    seg.run()
    wait(seg)
    seg_dock.hide()  # room for Fine-tune, and for the canvas below
    if seg._table is not None:
        viewer.window.remove_dock_widget(seg._table)
    result = viewer.layers["nuclei labels"]
    data = result.data.copy()
    fresh = int(data.max()) + 1
    for k, (y, x) in enumerate([(60, 90), (200, 500), (400, 150), (450, 600)]):  # four places
        target = truth[y, x] or truth[max(0, y - 20):y + 20, max(0, x - 20):x + 20].max()
        where = truth == target
        data[where | np.isin(data, np.unique(data[where])[1:])] = 0  # the model's object(s) there
        data[where] = fresh + k  # the annotated nucleus, redrawn
    result.data = data  # (a brush stroke does the same, one pixel at a time)
    ft = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune (U-Net)", area="right")
    settle()
    ft.image_combo.setCurrentText("nuclei")
    ft.budget_unit.setCurrentText("minutes")
    ft.budget_spin.setValue(0.75)
    ft.corrections.learn_from_corrections()
    wait(ft)
    from qtpy.QtWidgets import QScrollArea

    ft.findChild(QScrollArea).ensureWidgetVisible(ft.corrections)  # the dock scrolls to the loop
    settle()
    viewer.layers.selection.active = result
    shot(viewer, "corrections.png")
    viewer.close()


def diameter_picture() -> None:
    """nuclei-v2 with its auto object diameter on a 63x cytospin of large nuclei (~100 px) from
    Kromp et al. 2020 (CC0; a training image of nuclei-v2, from ../shared/data)."""
    import tifffile

    path = Path(__file__).resolve().parents[2] / "shared/data/kromp-sbsst265/images/Neuroblastoma_11.tif"
    viewer = napari.Viewer(title="napari-tiled-unet")
    viewer.window.resize(1400, 850)
    viewer.add_image(tifffile.imread(path), name="Neuroblastoma_11 (63x)")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment (U-Net)", area="right")
    w.device_combo.setCurrentText("cpu")
    w.model_combo.setCurrentText("nuclei-v2")  # ticks "auto" object diameter
    w.run_button.click()
    wait(w)
    viewer.layers["Neuroblastoma_11 (63x) labels"].contour = 3
    if w._table is not None:  # the Objects table below would make the canvas smaller
        viewer.window.remove_dock_widget(w._table)
    settle(1.0)
    shot(viewer, "segment-diameter.png")
    viewer.close()


PICTURES = {"segment": segment_pictures, "rgb": rgb_picture, "finetune": finetune_picture,
            "objects": objects_picture, "corrections": corrections_picture, "diameter": diameter_picture}

if __name__ == "__main__":
    for name in sys.argv[1:] or PICTURES:
        PICTURES[name]()
