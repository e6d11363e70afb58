"""Docks of the plugin stacked in napari's right column: each shows its controls whole where
the column allows, none is cut under its scroll bar."""

from __future__ import annotations

from napari_tiled_unet._qt.layout import share_heights


def test_share_heights_gives_each_what_it_asks_and_shares_the_shortfall():
    assert share_heights([360, 740], 850) == [360, 490]  # Segment whole, Fine-tune the rest
    assert share_heights([300, 200], 800) == [600, 200]  # room to spare: to the one that asked most
    assert share_heights([900, 700, 100], 800) == [350, 350, 100]
    assert sum(share_heights([123, 456, 789], 1000)) == 1000


def test_segment_and_finetune_opened_from_the_plugins_menu_share_the_column(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment (U-Net)")
    ft_dock, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune (U-Net)")
    seg_area, ft_area = seg.findChild(QScrollArea), ft.findChild(QScrollArea)
    # napari alone gave Fine-tune its minimum (140 px) and Segment 700 px it did not need; the
    # share is made once both are shown (on the event loop: a busy machine takes longer), and
    # no control is cut under the scroll bar: the controls fit the visible width
    def settled() -> bool:
        return ft_dock.height() > 2 * 140 and all(
            area.widget().width() <= area.viewport().width() for area in (seg_area, ft_area))

    qtbot.waitUntil(settled, timeout=10_000)
    assert not seg_area.verticalScrollBar().isVisible()  # Segment's controls all in view
    assert seg_dock.y() < ft_dock.y()
    # opening Advanced makes the controls wider and taller: the dock follows
    from superqt import QCollapsible

    ft.findChild(QCollapsible).expand(animate=False)
    qtbot.wait(200)
    qtbot.waitUntil(lambda: ft_area.widget().width() <= ft_area.viewport().width(), timeout=10_000)


def test_a_run_started_from_below_the_fold_scrolls_its_status_into_view(make_napari_viewer, qtbot,
                                                                       tiny_model_file):
    """In a short dock the user scrolls down to a button (Train, Learn from my corrections);
    the run's progress, Stop and status line above it come into view, and the result's
    sentence is in view when it ends."""
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QScrollArea

    from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 600)
    viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment (U-Net)")  # above it: a short dock
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune (U-Net)")
    viewer.add_image(nuclei_image()[:96, :96], name="img")
    viewer.add_labels(nuclei_labels()[:96, :96], name="my labels")
    ft.add_model_file(tiny_model_file)
    ft.device_combo.setCurrentText("cpu")
    ft.patch_spin.setValue(64)
    ft.budget_spin.setValue(1)
    ft.steps_spin.setValue(2)
    ft.image_combo.setCurrentText("img")
    ft.labels_combo.setCurrentText("my labels")
    qtbot.wait(200)
    area = ft.findChild(QScrollArea)

    def in_view(widget):
        top = widget.mapTo(area.viewport(), QPoint(0, 0)).y()
        return top >= 0 and top + widget.height() <= area.viewport().height()

    area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())  # scrolled down
    qtbot.wait(50)
    assert not in_view(ft.status)  # the dock is short: the status is out of sight down here
    ft.train_button.click()
    qtbot.wait(50)
    assert in_view(ft.stop_button) and in_view(ft.status)
    qtbot.waitUntil(lambda: not ft.running, timeout=60_000)
    area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())
    qtbot.wait(50)
    ft._reveal(ft.status)
    qtbot.wait(50)
    assert in_view(ft.status) and ft.status.text().startswith("Done")
