"""bioimage.io model packages: export, validation and model test, import, refusals."""

import io
import os
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.bioimageio import PackageError, export_bioimageio, import_bioimageio
from napari_tiled_unet.cli import main
from napari_tiled_unet.model import UNet, load_model
from napari_tiled_unet.segmentation import segment


@pytest.fixture(scope="module")
def builtin_package(tmp_path_factory):
    return export_bioimageio("nuclei-dsb2018", tmp_path_factory.mktemp("bioimageio") / "nuclei.zip")


def test_the_package_holds_what_the_format_asks_for(builtin_package):
    with zipfile.ZipFile(builtin_package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    for entry in (
        rdf["documentation"],
        *rdf["covers"],
        rdf["inputs"][0]["test_tensor"],
        rdf["outputs"][0]["test_tensor"],
        rdf["weights"]["pytorch_state_dict"],
        rdf["weights"]["pytorch_state_dict"]["architecture"],
        rdf["weights"]["torchscript"],
    ):
        assert entry["source"] in names
    steps = {s["id"]: s["kwargs"] for s in rdf["inputs"][0]["preprocessing"] if s["id"] != "ensure_dtype"}
    assert steps == {"scale_range": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    assert any(c.get("doi") == "10.1007/978-3-319-24574-4_28" for c in rdf["cite"])  # U-Net paper
    assert any("Data Science Bowl" in c["text"] for c in rdf["cite"])  # its training data
    assert rdf["license"] == "BSD-3-Clause"
    assert "## Validation" in readme and "f1@0.5" in readme  # from the training record


@pytest.mark.slow
def test_the_exported_builtin_model_validates_and_passes_the_bioimageio_model_test(builtin_package):
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    descr = load_description(str(builtin_package), perform_io_checks=True)
    assert descr.validation_summary.status in ("passed", "valid-format"), descr.validation_summary.format()
    summary = test_model(str(builtin_package))  # both weight formats reproduce the test output
    assert summary.status == "passed", summary.format()


def test_reimport_gives_the_same_labels_on_the_sample(builtin_package):
    original, imported = load_model("nuclei-dsb2018"), load_model(builtin_package)
    assert imported.metadata["imported_from"]["format"] == "bioimage.io model package"
    assert imported.postprocess == original.postprocess and imported.normalization == original.normalization
    a, b = segment(original, nuclei_image()).labels, segment(imported, nuclei_image()).labels
    assert a.max() > 150
    assert np.array_equal(a, b)


def _package(tmp_path, weights: bytes, rdf_extra=None, arch_source="raise SystemExit('ran')\n", name="p.zip"):
    rdf = {
        "format_version": "0.5.4",
        "type": "model",
        "name": "foreign unet",
        "description": "x",
        "inputs": [
            {
                "id": "raw",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["a"]},
                    {"type": "space", "id": "y", "size": 64},
                    {"type": "space", "id": "x", "size": 64},
                ],
                "preprocessing": [{"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}}],
            }
        ],
        "outputs": [
            {
                "id": "out",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["cell", "edge", "bg"]}],
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "architecture": {"source": "arch.py", "callable": "Net"},
            },
            "torchscript": {"source": "ts.pt"},
        },
    }
    rdf.update(rdf_extra or {})
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump(rdf))
        zf.writestr("weights.pt", weights)
        zf.writestr("arch.py", arch_source)
        zf.writestr("ts.pt", b"not loaded")
    return path


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _marker_source(marker) -> str:
    return f"import os\nos.mkdir({str(marker)!r})\n"


def test_a_pytorch_unet_shaped_package_imports_without_running_its_architecture_file(tmp_path):
    marker = tmp_path / "architecture_ran"
    net = UNet(1, 3, base_channels=4, depth=2)
    path = _package(tmp_path, _saved(net.state_dict()), arch_source=_marker_source(marker))
    bundle = import_bioimageio(path)
    assert not marker.exists()
    assert bundle.model.config == net.config
    assert bundle.class_names == ["cell", "edge", "bg"]
    assert bundle.normalization == {"kind": "scale", "divide": 255.0, "offset": -0.0}
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), net.eval()(x))


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pickle_ran"
    payload = _saved({"inc.double_conv.0.weight": torch.zeros(1), "x": _RunsCode(marker)})
    path = _package(tmp_path, payload, arch_source=_marker_source(tmp_path / "architecture_ran"))
    with pytest.raises(PackageError, match="could run code"):
        import_bioimageio(path)
    assert not marker.exists() and not (tmp_path / "architecture_ran").exists()
    # the payload is live: an unsafe load would have run it
    torch.load(io.BytesIO(payload), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": {"torchscript": {"source": "ts.pt"}}}, "has no PyTorch state-dict weights"),
        ({"weights": {"onnx": {"source": "ts.pt"}}}, "never TorchScript, ONNX"),
        ({"type": "dataset"}, "not a model"),
    ],
)
def test_packages_without_state_dict_weights_are_refused_with_one_sentence(tmp_path, change, message):
    path = _package(tmp_path, _saved(UNet(1, 2, base_channels=4, depth=2).state_dict()), change)
    with pytest.raises(PackageError, match=message) as info:
        import_bioimageio(path)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("../weights.pt", "outside itself"),
        ("/etc/weights.pt", "outside itself"),
        ("https://example.org/weights.pt", "lies on the internet"),
        ("missing.pt", "lacks its file"),
    ],
)
def test_weights_outside_the_package_are_not_read(tmp_path, source, message):
    change = {"weights": {"pytorch_state_dict": {"source": source, "architecture": {"source": "arch.py"}}}}
    path = _package(tmp_path, _saved(UNet(1, 2, base_channels=4, depth=2).state_dict()), change)
    with pytest.raises(PackageError, match=message):
        import_bioimageio(path)


def test_an_unpacked_package_opens_from_its_folder_and_its_rdf_yaml(builtin_package, tmp_path):
    with zipfile.ZipFile(builtin_package) as zf:
        zf.extractall(tmp_path / "unpacked")
    original = load_model("nuclei-dsb2018").model.state_dict()
    for source in (tmp_path / "unpacked", tmp_path / "unpacked" / "rdf.yaml"):
        state = load_model(source).model.state_dict()
        assert all(torch.equal(state[k], original[k]) for k in original)


def test_weights_that_are_not_a_unet_are_refused(tmp_path):
    path = _package(tmp_path, _saved(torch.nn.Linear(3, 2).state_dict()))
    with pytest.raises(PackageError, match="not a U-Net this plugin can build"):
        import_bioimageio(path)


def test_a_normalization_the_engine_does_not_reproduce_is_refused(tmp_path):
    rdf = yaml.safe_load(zipfile.ZipFile(_package(tmp_path, b"")).read("rdf.yaml"))
    rdf["inputs"][0]["preprocessing"] = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["x", "y"]}}]
    path = _package(
        tmp_path,
        _saved(UNet(1, 2, base_channels=4, depth=2).state_dict()),
        {"inputs": rdf["inputs"]},
        name="zmuv.zip",
    )
    with pytest.raises(PackageError, match="zero_mean_unit_variance"):
        import_bioimageio(path)


def test_cli_exports_and_segments_with_the_package(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "tiny.zip"
    assert main(["export-bioimageio", str(tiny_model_file), "-o", str(out), "--author", "A. Biologist"]) == 0
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    assert rdf["authors"] == [{"name": "A. Biologist"}]
    assert main(["export-bioimageio", str(tiny_model_file), "-o", str(out)]) == 1  # no silent replace
    assert "already exists" in capsys.readouterr().err
    image = tmp_path / "img.tif"
    import tifffile

    tifffile.imwrite(image, nuclei_image()[:128, :128])
    assert main(["segment", str(image), "-o", str(tmp_path / "a"), "-m", str(tiny_model_file)]) == 0
    assert main(["segment", str(image), "-o", str(tmp_path / "b"), "-m", str(out)]) == 0
    a, b = (tifffile.imread(tmp_path / d / "img_labels.tif") for d in "ab")
    assert a.max() > 0 and np.array_equal(a, b)
    assert main(["info", str(out)]) == 0
    assert "bioimage.io package: tiny.zip" in capsys.readouterr().out


@pytest.mark.slow
def test_an_rgb_one_logit_model_with_a_pixel_size_exports_and_round_trips(tmp_path):
    from napari_tiled_unet.inference import whole_image_probabilities
    from napari_tiled_unet.model import ModelBundle, make_metadata

    net = UNet(3, 1, base_channels=4, depth=2).eval()
    meta = make_metadata(
        net,
        task="semantic",
        class_names=["background", "cell"],
        output_activation="sigmoid",
        normalization={"kind": "scale", "divide": 255.0},
        pixel_size_um=0.65,
        name="rgb",
    )
    rgb = np.stack([nuclei_image()[:256, :256]] * 3, axis=-1)
    path = export_bioimageio(ModelBundle(net, meta), tmp_path / "rgb.zip", test_image=rgb)
    rdf = yaml.safe_load(zipfile.ZipFile(path).read("rdf.yaml"))
    assert rdf["inputs"][0]["axes"][2] == {"type": "space", "id": "y", "size": {"min": 48, "step": 4}}
    assert "0.65 µm" in zipfile.ZipFile(path).read("README.md").decode()
    assert [s["id"] for s in rdf["inputs"][0]["preprocessing"]] == [
        "ensure_dtype",
        "scale_linear",
        "ensure_dtype",
    ]
    back = import_bioimageio(path)
    assert back.metadata["output_activation"] == "sigmoid" and back.class_names == ["background", "cell"]
    assert np.array_equal(
        whole_image_probabilities(back, rgb), whole_image_probabilities(ModelBundle(net, meta), rgb)
    )
    try:
        from bioimageio.core import test_model
    except ImportError:
        return
    summary = test_model(str(path), weight_format="pytorch_state_dict")
    assert summary.status == "passed", summary.format()


def test_a_ceiling_on_the_normalized_values_exports_as_clip_and_round_trips(tmp_path):
    """A recipe with clip_high (nuclei-v2's) becomes a bioimage.io `clip` step after the scaling,
    which bioimage.io tools run to the same test output, and comes back on import."""
    from napari_tiled_unet.inference import whole_image_probabilities
    from napari_tiled_unet.model import ModelBundle, make_metadata

    net = UNet(1, 3, base_channels=4, depth=2).eval()
    recipe = {"kind": "scale", "divide": 40.0, "clip_high": 2.0}
    meta = make_metadata(net, normalization=recipe, name="clipped")
    image = nuclei_image()[:256, :256]  # values up to 255: most nuclei above the ceiling (80)
    assert (image > 80).mean() > 0.05
    path = export_bioimageio(ModelBundle(net, meta), tmp_path / "clipped.zip", test_image=image)
    steps = yaml.safe_load(zipfile.ZipFile(path).read("rdf.yaml"))["inputs"][0]["preprocessing"]
    assert [s["id"] for s in steps] == ["ensure_dtype", "scale_linear", "clip", "ensure_dtype"]
    assert steps[2]["kwargs"] == {"max": 2.0}
    back = import_bioimageio(path)
    assert back.normalization["clip_high"] == 2.0
    np.testing.assert_array_equal(whole_image_probabilities(back, image),
                                  whole_image_probabilities(ModelBundle(net, meta), image))
    unclipped = ModelBundle(net, make_metadata(net, normalization={"kind": "scale", "divide": 40.0}))
    assert not np.array_equal(whole_image_probabilities(unclipped, image),
                              whole_image_probabilities(back, image))
    try:
        from bioimageio.core import test_model
    except ImportError:
        return
    summary = test_model(str(path), weight_format="pytorch_state_dict")
    assert summary.status == "passed", summary.format()


def test_the_package_says_where_its_preprocessing_differs_from_the_engines():
    """nuclei-v2's recipe leaves saturated pixels out of the percentiles, which bioimage.io's
    scale_range cannot: the package's documentation says so rather than claim an exact match."""
    from napari_tiled_unet.bioimageio import _preprocessing

    steps, note = _preprocessing(load_model("nuclei-v2").normalization)
    assert [s["id"] for s in steps] == ["ensure_dtype", "scale_range", "clip", "ensure_dtype"]
    assert "maximum value" in note and "differently" in note and "set to 2" in note
    assert "maximum value" not in _preprocessing({"kind": "percentile", "low": 1.0, "high": 99.8})[1]
