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
    qtbot.wait(300)
    seg_area, ft_area = seg.findChild(QScrollArea), ft.findChild(QScrollArea)
    # napari alone gave Fine-tune its minimum (140 px) and Segment 700 px it did not need
    assert not seg_area.verticalScrollBar().isVisible()  # Segment's controls all in view
    assert ft_dock.height() > 2 * 140
    assert seg_dock.y() < ft_dock.y()
    # no control is cut under the scroll bar: the controls fit the visible width
    for area in (seg_area, ft_area):
        assert area.widget().width() <= area.viewport().width()
    # opening Advanced makes the controls wider and taller: the dock follows
    from superqt import QCollapsible

    ft.findChild(QCollapsible).expand(animate=False)
    qtbot.wait(200)
    assert ft_area.widget().width() <= ft_area.viewport().width()
