"""The Fine-tune widget's loss plot."""

import numpy as np

from napari_tiled_unet._qt.loss_plot import LossPlot


def test_the_loss_axis_starts_at_zero_at_the_lowest_and_every_point_is_drawn_inside(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    # a loss that falls close to zero: a 5 % margin below the lowest point would put the axis,
    # and its label, below 0
    plot.set_data([(0, 0.30), (10, 0.02), (20, 0.004)], [(10, 0.05), (20, 0.01)])
    x0, x1, y0, y1 = plot.axis_ranges()
    assert y0 == 0.0 and y1 > 0.30 and (x0, x1) == (0.0, 20.0)
    image = plot.grab().toImage()
    blue = [(x, y) for y in range(image.height()) for x in range(image.width())
            if image.pixelColor(x, y).blue() > 200 and image.pixelColor(x, y).red() < 120]
    assert blue  # the training line is painted
    # a flat run of equal losses gets a range around them, not a zero-height axis
    plot.set_data([(0, 0.5), (5, 0.5)], [])
    _, _, y0, y1 = plot.axis_ranges()
    assert y0 < 0.5 < y1 and y0 >= 0
    # nothing finite yet: no axes
    plot.set_data([(0, np.nan)], [])
    assert plot.axis_ranges() is None
