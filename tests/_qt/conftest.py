"""Fixtures shared by the widget tests (napari under Xvfb)."""

import pytest

from napari_tiled_unet._qt.predict_widget import SegmentWidget


@pytest.fixture
def widget(make_napari_viewer, tiny_model_file):
    """The Segment widget docked in a new viewer, with the tiny test model chosen, on the CPU."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model_file)
    w.device_combo.setCurrentText("cpu")
    return viewer, w
