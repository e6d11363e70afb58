"""The widgets' Qt-free readers of napari layers (_qt/layerview.py), without napari or Qt."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_tiled_unet._qt import layerview
from napari_tiled_unet._sample_data import nuclei_image


def _layer(data, rgb=False, name="img"):
    return SimpleNamespace(data=data, rgb=rgb, multiscale=False, name=name, ndim=data.ndim - rgb,
                           world_to_data=lambda point: np.asarray(point))


def test_the_readers_import_and_run_without_any_qt_binding():
    code = """
import sys
class NoQt:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari'):
            raise ImportError('no ' + name + ' here')
sys.meta_path.insert(0, NoQt())
from types import SimpleNamespace
import numpy as np
from napari_tiled_unet._qt import cancel_window, layerview, progress, session
rgb = SimpleNamespace(data=np.zeros((8, 8, 3)), rgb=True, multiscale=False, name='rgb', ndim=2)
options = layerview.channel_axis_options(rgb)
choice = layerview.channel_choice(rgb, options.needed, options.items[0][1], 'luminance')
print(layerview.image_view(rgb, choice, 1).channel, progress.fmt_seconds(75))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["luminance", "1:15"]


def test_rgb_offers_luminance_first_and_a_two_plane_image_asks():
    img = nuclei_image()[:32, :48]
    rgb = _layer(np.stack([img * 0, img, img * 0], axis=-1), rgb=True)
    options = layerview.channel_axis_options(rgb)
    assert options.needed and options.items == [("RGB (last)", 2)]
    items, first = layerview.channel_options(rgb, 2)
    assert items[first] == ("luminance", "luminance")
    plane = layerview.training_plane(rgb, layerview.channel_choice(rgb, True, 2, 1), 1, (0, 0))
    assert plane.axes == "YX" and np.array_equal(np.asarray(plane.image), img)

    two = _layer(np.stack([img, img[::-1]]), name="two")
    options = layerview.channel_axis_options(two)
    assert options.items[options.current][1] == layerview.CHOOSE
    with pytest.raises(ValueError, match="holds channels or planes"):
        layerview.channel_choice(two, True, layerview.CHOOSE, None)
    choice = layerview.channel_choice(two, True, 0, 1)
    assert choice == layerview.ChannelChoice("CYX", 1, 0)
    plane = layerview.training_plane(two, choice, 1, (0, 0, 0))
    assert np.array_equal(np.asarray(plane.image), img[::-1])
    # a two-channel model sees both channels, channels first
    plane = layerview.training_plane(two, layerview.channel_choice(two, True, 0, None), 2, (0, 0, 0))
    assert plane.axes == "CYX" and plane.channel_axis == 0 and plane.shape == img.shape


def test_a_stack_gives_the_plane_on_display():
    stack = np.stack([np.full((16, 16), k, np.uint8) for k in range(3)])
    layer = _layer(stack, name="stack")
    choice = layerview.channel_choice(layer, True, None, None)
    plane = layerview.training_plane(layer, choice, 1, (2.2, 0, 0))
    assert plane.index == (2,) and (np.asarray(plane.image) == 2).all()
