import npe2


def test_napari_discovers_the_plugin_manifest(make_napari_viewer):
    make_napari_viewer()
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-tiled-unet")
    assert manifest.display_name == "Tiled U-Net"
    assert manifest.package_metadata.version
