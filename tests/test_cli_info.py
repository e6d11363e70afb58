import json
import subprocess
import sys

import torch

from napari_tiled_unet.cli import main
from napari_tiled_unet.model import UNet, make_metadata, save_bundle


def test_info_prints_a_bundle_readably(tmp_path, capsys):
    net = UNet(1, 3, base_channels=4, depth=2)
    meta = make_metadata(net, task="instances", name="nuclei-demo", training={"epochs": 7, "seed": 1})
    path = save_bundle(net, tmp_path / "m.safetensors", meta)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "name: nuclei-demo" in out
    assert "task: instances" in out
    assert "classes: background, interior, boundary" in out
    assert "epochs: 7" in out
    assert f"{sum(p.numel() for p in net.parameters()):,} parameters" in out


def test_info_json_is_the_metadata(tmp_path, capsys):
    net = UNet(1, 3, base_channels=4, depth=2)
    path = save_bundle(net, tmp_path / "m.safetensors", make_metadata(net, name="x"))
    assert main(["info", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "x"


def test_info_on_a_pytorch_unet_checkpoint_says_it_is_foreign(tmp_path, capsys):
    p = tmp_path / "unet_carvana.pth"
    state = UNet(3, 2, base_channels=4, depth=3).state_dict()
    state["mask_values"] = [0, 1]
    torch.save(state, p)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "Foreign checkpoint: unet_carvana.pth" in out
    assert "depth: 3" in out and "n_channels: 3" in out and "bilinear: False" in out
    assert "mask values: 0, 1" in out


def test_info_on_a_bad_file_exits_non_zero_with_one_sentence(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("not a model")
    result = subprocess.run(
        [sys.executable, "-m", "napari_tiled_unet.cli", "info", str(p)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: notes.safetensors is not a safetensors model file")
    assert "Traceback" not in result.stderr


def test_the_signal_handlers_are_restored_after_a_command(tmp_path):
    """Commands turn SIGTERM into a clean stop while they run, and leave the caller's handlers
    (a notebook's, a test runner's) as they were."""
    import signal

    from napari_tiled_unet.cli import main

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        main(["info", "nuclei-dsb2018"])
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_info_is_a_short_summary_with_full_and_json_for_everything(capsys):
    """The built-in model's training record names 541 images: the summary counts them."""
    assert main(["info", "nuclei-dsb2018"]) == 0
    short = capsys.readouterr().out
    assert len(short) < 2500 and max(len(line) for line in short.splitlines()) < 260
    assert "names (541 items)" in short and "--full shows everything" in short
    assert "task: instances" in short and "f1@0.5 0.86" in short
    assert main(["info", "--full", "nuclei-dsb2018"]) == 0
    full = capsys.readouterr().out
    assert len(full) > 10_000 and "--full" not in full
    assert main(["info", "--json", "nuclei-dsb2018"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert len(meta["training"]["data"]["names"]) == 541
    assert all(name in full for name in meta["training"]["data"]["names"])
