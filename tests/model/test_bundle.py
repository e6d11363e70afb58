import json
import pickle
import struct

import pytest
import torch

from napari_tiled_unet.model import (
    BundleError,
    UNet,
    import_pytorch_unet,
    load_bundle,
    load_model,
    make_metadata,
    save_bundle,
)
from napari_tiled_unet.model.bundle import METADATA_KEY


def _small(n_classes=3, **kw):
    torch.manual_seed(0)
    net = UNet(1, n_classes, base_channels=4, depth=2, **kw)
    # make BatchNorm statistics non-trivial so the round trip covers buffers too
    net.train()
    net(torch.randn(2, 1, 16, 16))
    return net.eval()


def test_bundle_round_trip_is_bit_exact(tmp_path):
    net = _small()
    meta = make_metadata(net, task="instances", name="demo", pixel_size_um=0.65, training={"epochs": 3})
    path = save_bundle(net, tmp_path / "m.safetensors", meta)
    bundle = load_bundle(path)
    for (k, a), b in zip(net.state_dict().items(), bundle.model.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    assert bundle.metadata == json.loads(json.dumps(meta))
    assert not bundle.model.training
    x = torch.randn(1, 1, 24, 40)
    with torch.inference_mode():
        assert torch.equal(net(x), bundle.model(x))


def test_save_is_atomic_and_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    net = _small()
    path = save_bundle(net, tmp_path / "m.safetensors", make_metadata(net))
    before = path.read_bytes()
    import safetensors.torch

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        save_bundle(net, path, make_metadata(net))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_non_finite_weights_are_never_saved(tmp_path):
    net = _small()
    with torch.no_grad():
        net.outc.conv.bias[0] = float("nan")
    with pytest.raises(BundleError, match="non-finite"):
        save_bundle(net, tmp_path / "m.safetensors", make_metadata(net))
    assert not (tmp_path / "m.safetensors").exists()


def _write_raw_safetensors(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def test_refuses_a_file_that_is_not_safetensors(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("hello, I am a text file")
    with pytest.raises(BundleError, match="not a safetensors model file"):
        load_bundle(p)


def test_refuses_safetensors_without_format_version(tmp_path):
    p = tmp_path / "foreign.safetensors"
    _write_raw_safetensors(p, {"w": torch.zeros(2)}, {"something": "else"})
    with pytest.raises(BundleError, match="no format version"):
        load_bundle(p)


def _tamper(tmp_path, change):
    net = _small()
    meta = make_metadata(net)
    change(meta)
    p = tmp_path / "t.safetensors"
    _write_raw_safetensors(
        p, {k: v.contiguous() for k, v in net.state_dict().items()}, {METADATA_KEY: json.dumps(meta)}
    )
    return p


def test_refuses_an_unknown_format_version(tmp_path):
    p = _tamper(tmp_path, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match=r"format version 99.*update the plugin"):
        load_bundle(p)


def test_refuses_an_unknown_architecture(tmp_path):
    p = _tamper(tmp_path, lambda m: m.update(architecture={"name": "ResNet", "args": {}}))
    with pytest.raises(BundleError, match="unknown architecture"):
        load_bundle(p)


def test_refuses_weights_that_do_not_fit(tmp_path):
    p = _tamper(tmp_path, lambda m: m["architecture"]["args"].update(base_channels=8))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(p)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="No model file"):
        load_model(tmp_path / "nope.safetensors")


def test_pytorch_unet_checkpoint_is_imported_with_mask_values(tmp_path):
    torch.manual_seed(3)
    net = UNet(3, 2, bilinear=True, base_channels=8, depth=3).eval()
    state = net.state_dict()
    state["mask_values"] = [0, 255]
    p = tmp_path / "checkpoint_epoch5.pth"
    torch.save(state, p)
    bundle = load_model(p)
    assert bundle.model.config == {
        "n_channels": 3, "n_classes": 2, "bilinear": True, "base_channels": 8, "depth": 3,
    }
    assert bundle.metadata["imported_from"]["mask_values"] == [0, 255]
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        assert torch.equal(net(x), bundle.model(x))
    # and it converts to a bundle that loads again without pickle
    out = bundle.save(tmp_path / "converted.safetensors")
    again = load_bundle(out)
    assert again.metadata["imported_from"]["file"] == "checkpoint_epoch5.pth"


def test_binary_pytorch_unet_gets_a_sigmoid_and_two_classes(tmp_path):
    net = UNet(3, 1, base_channels=4, depth=2)
    p = tmp_path / "binary.pth"
    torch.save(net.state_dict(), p)
    bundle = import_pytorch_unet(p)
    assert bundle.metadata["output_activation"] == "sigmoid"
    assert len(bundle.class_names) == 2


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, writer):
    victim = tmp_path / "pwned.txt"
    p = tmp_path / "evil.pth"
    payload = {"inc.double_conv.0.weight": torch.zeros(1), "payload": _Evil(str(victim))}
    if writer == "torch.save":
        torch.save(payload, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not victim.exists()
    with pytest.raises(BundleError, match="could run code"):
        load_model(p)
    assert not victim.exists()


def test_a_damaged_pth_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.pth"
    p.write_bytes(struct.pack("<Q", 12) + b"garbage")
    with pytest.raises(BundleError, match="not a readable PyTorch checkpoint"):
        load_model(p)


def test_saved_model_is_readable_like_any_new_file(tmp_path):
    """Atomic saving goes through a private temporary file; the model must not stay private."""
    import os

    from napari_tiled_unet.model import UNet, make_metadata, save_bundle

    net = UNet(1, 3, base_channels=4, depth=2)
    path = save_bundle(net, tmp_path / "m.safetensors", make_metadata(net))
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# -- hostile or damaged headers and weights (issue 17) --------------------------------------------


def _raw_header(tmp_path, header_json: str, net=None):
    net = net or _small()
    p = tmp_path / "h.safetensors"
    _write_raw_safetensors(p, {k: v.contiguous() for k, v in net.state_dict().items()},
                           {METADATA_KEY: header_json})
    return p


@pytest.mark.parametrize("header, words", [
    ("[1, 2]", "JSON list, not an object"),
    ('"a model"', "JSON str, not an object"),
    ("null", "JSON null, not an object"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
])
def test_metadata_that_is_not_an_object_is_one_sentence(tmp_path, header, words):
    with pytest.raises(BundleError, match=words):
        load_bundle(_raw_header(tmp_path, header))


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(normalization={"kind": "scale", "divide": 0}), "divides by 0"),
    (lambda m: m.update(normalization="percentile"), "normalization is 'percentile', not an object"),
    (lambda m: m.update(normalization={"kind": "percentile", "low": 99, "high": 1}), "percentiles"),
    (lambda m: m["postprocess"].update(foreground_threshold="0.5"), "foreground threshold must be a number"),
    (lambda m: m["postprocess"].update(seed_threshold=7), "seed threshold must be between 0 and 1"),
    (lambda m: m["architecture"]["args"].update(base_channels=100000), "base_channels is 100000"),
    (lambda m: m["architecture"]["args"].update(depth=50), "depth is 50"),
    (lambda m: m["architecture"]["args"].update(depth="4"), "depth is '4'"),
    (lambda m: m.update(format_version="1"), "format_version is '1', not a whole number"),
    (lambda m: m.update(output_activation="sigmoid"), "sigmoid output has one channel"),
    (lambda m: m.update(class_names=["a", "b"]), "names 2 classes but the network predicts 3"),
    (lambda m: m.update(class_names=["a", "b", "c", "d", "e"]), "names 5 classes"),
    (lambda m: m.update(input_channels=3), "input_channels 3 differs"),
    (lambda m: m["postprocess"].update(min_size_fraction=1.5), "fraction of the typical object"),
    (lambda m: m.update(object_diameter=-4), "object_diameter is -4, not a positive number"),
    (lambda m: m.update(object_diameter_range=[64, 12]), r"object_diameter_range is \[64, 12\]"),
    (lambda m: m.update(object_diameter_range="12-64"), "object_diameter_range is '12-64'"),
])
def test_a_bad_header_is_refused_with_the_field_named(tmp_path, change, words):
    with pytest.raises(BundleError, match=words):
        load_bundle(_tamper(tmp_path, change))


def test_a_small_file_claiming_a_huge_network_is_refused_before_allocating(tmp_path):
    """base_channels 512 in the header of a 4-channel model: the file's tensor shapes are
    compared with the network built on the meta device, so nothing large is ever allocated."""
    import subprocess
    import sys

    p = _tamper(tmp_path, lambda m: m["architecture"]["args"].update(base_channels=512, depth=4))
    # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, from the fork)
    code = ("import re, sys; from napari_tiled_unet.cli import main; rc = main(['info', sys.argv[1]]); "
            "print(rc, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    result = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    rc, max_rss_kb = map(int, result.stdout.split())
    assert rc == 1 and "do not fit" in result.stderr and "Traceback" not in result.stderr
    assert max_rss_kb < 1_500_000  # the claimed network would take about 8 GB


@pytest.mark.parametrize("spoil, words", [
    (lambda s: s["outc.conv.weight"].fill_(float("nan")), "NaN or infinite"),
    (lambda s: s.update({"outc.conv.weight": s["outc.conv.weight"].round().to(torch.int32)}), "torch.int32"),
])
def test_nan_or_integer_weights_are_refused_at_load(tmp_path, spoil, words):
    net = _small()
    state = {k: v.clone().contiguous() for k, v in net.state_dict().items()}
    spoil(state)
    p = tmp_path / "spoilt.safetensors"
    _write_raw_safetensors(p, state, {METADATA_KEY: json.dumps(make_metadata(net))})
    with pytest.raises(BundleError, match="not usable"):
        load_bundle(p)
    # the same from a PyTorch-UNet checkpoint
    pth = tmp_path / "spoilt.pth"
    torch.save(state, pth)
    with pytest.raises(BundleError, match=words):
        import_pytorch_unet(pth)
