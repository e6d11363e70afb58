"""Screenshots for docs/user-guide.md, made with the real plugin in a real napari window.

    xvfb-run -a python docs/make_screenshots.py        # writes docs/images/*.png

Uses the built-in model on the shipped DSB2018 sample; the fine-tune picture trains for a
few dozen steps on a corner of the sample (CPU, about a minute).
"""

from __future__ import annotations

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
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
    while not (widget.job is not None and widget.job.finished):
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
    viewer.add_image(nuclei_image(), name="nuclei")
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment (U-Net)", area="right")
    w.device_combo.setCurrentText("cpu")
    settle()
    shot(viewer, "segment-before.png")
    w.run()
    wait(w)
    viewer.layers["nuclei labels"].contour = 2
    shot(viewer, "segment-result.png")
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


if __name__ == "__main__":
    segment_pictures()
    finetune_picture()
