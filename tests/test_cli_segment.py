import json

import numpy as np
import pytest
import tifffile

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.cli import main


@pytest.fixture
def model_file(tiny_model_file):
    return tiny_model_file


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    img = nuclei_image()
    for i, (y, x) in enumerate([(0, 0), (100, 200), (250, 300)]):
        tifffile.imwrite(d / f"img{i}.tif", img[y : y + 200, x : x + 260])
    return d


def test_folder_gives_one_labels_file_per_image_and_a_summary(tmp_path, folder, model_file, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "-m", str(model_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["img0_labels.tif", "img1_labels.tif", "img2_labels.tif"]
    assert len(summary["segmented"]) == 3 and summary["failed"] == []
    for row in summary["segmented"]:
        labels = tifffile.imread(row["output"])
        assert labels.shape == (200, 260)
        assert row["objects"] == labels.max()


def test_one_corrupt_file_is_named_the_others_are_written(tmp_path, folder, model_file, capsys):
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "-m", str(model_file)]) == 1
    text = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["img0_labels.tif", "img1_labels.tif", "img2_labels.tif"]
    assert "3 image(s) segmented" in text.out and "1 failed" in text.out
    assert "broken.tif" in text.out


def test_refuses_to_overwrite_without_the_flag(tmp_path, folder, model_file, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(folder / "img0.tif"), "-o", str(out), "-m", str(model_file)]) == 0
    before = (out / "img0_labels.tif").stat().st_mtime_ns
    assert main(["segment", str(folder / "img0.tif"), "-o", str(out), "-m", str(model_file)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "img0_labels.tif").stat().st_mtime_ns == before
    assert main(["segment", str(folder / "img0.tif"), "-o", str(out), "-m", str(model_file),
                 "--overwrite"]) == 0


def test_glob_and_overlay(tmp_path, folder, model_file):
    out = tmp_path / "out"
    assert main(["segment", str(folder / "img[01].tif"), "-o", str(out), "-m", str(model_file),
                 "--overlay"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "img0_labels.png", "img0_labels.tif", "img1_labels.png", "img1_labels.tif",
    ]


def test_workers_2_on_a_zarr_image_equals_the_single_process_run(tmp_path, model_file):
    import zarr

    img = np.tile(nuclei_image(), (3, 2))[:1500, :1300]
    src = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=img.shape, chunks=(512, 512),
                          dtype=img.dtype)
    src[:] = img
    common = [str(tmp_path / "big.zarr"), "-m", str(model_file), "--batch-size", "1", "--format", "zarr"]
    assert main(["segment", *common, "-o", str(tmp_path / "single")]) == 0
    assert main(["segment", *common, "-o", str(tmp_path / "cluster"), "--workers", "2"]) == 0
    single = zarr.open_array(str(tmp_path / "single" / "big_labels.zarr"), mode="r")[:]
    cluster = zarr.open_array(str(tmp_path / "cluster" / "big_labels.zarr"), mode="r")[:]
    assert single.shape == img.shape and single.max() > 0
    assert np.array_equal(single, cluster)


def test_ome_zarr_is_segmented_at_full_resolution(tmp_path, model_file, capsys):
    import zarr

    img = nuclei_image()[:256, :320]
    root = zarr.open_group(str(tmp_path / "slide.ome.zarr"), mode="w")
    root.create_array("0", shape=img.shape, chunks=(128, 128), dtype=img.dtype)[:] = img
    root.create_array("1", shape=(128, 160), chunks=(128, 128), dtype=img.dtype)[:] = img[::2, ::2]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                                  "datasets": [{"path": "0"}, {"path": "1"}]}]
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "slide.ome.zarr"), "-o", str(out), "-m", str(model_file),
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    labels = zarr.open_array(row["output"], mode="r")
    assert row["output"].endswith("slide_labels.zarr")
    assert labels.shape == img.shape and labels[:].max() == row["objects"] > 0


def test_tta_flag_gives_the_mirror_averaged_labels(tmp_path, folder, model_file):
    from napari_tiled_unet.model import load_model
    from napari_tiled_unet.segmentation import segment

    src = folder / "img1.tif"
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "-m", str(model_file), "--tta"]) == 0
    written = tifffile.imread(out / "img1_labels.tif")
    bundle = load_model(model_file)
    expected = segment(bundle, tifffile.imread(src), device="cpu", tta=True).labels
    assert np.array_equal(written > 0, expected > 0)
    assert written.max() == expected.max()


def test_sigterm_stops_between_images_and_leaves_only_complete_outputs(tmp_path, model_file):
    """A batch scheduler's SIGTERM (or Ctrl-C) mid-folder: exit 130, say how far it got, leave
    no half-written label store behind, keep whole the earlier outputs not yet replaced
    (--overwrite), and leave another process's scratch folder alone."""
    import signal
    import subprocess
    import sys
    import time

    import zarr

    src = tmp_path / "images"
    src.mkdir()
    img = nuclei_image()
    for k in range(30):
        tifffile.imwrite(src / f"img{k:02d}.tif", np.roll(img, 17 * k, axis=1)[:512, :512])
    out = tmp_path / "out"
    for k in range(30):  # outputs of an earlier run, to be replaced (--overwrite)
        zarr.open_array(str(out / f"img{k:02d}_labels.zarr"), mode="w", shape=(8, 8), dtype="int32")[:] = 7
    theirs = out / ".postprocess-1-abc"  # another process's scratch folder
    theirs.mkdir()
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(src), "-o", str(out),
           "-m", str(model_file), "--format", "zarr", "--device", "cpu", "--overwrite"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob(".img01_labels.*.partial.zarr")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = int(err.split("Interrupted: ")[1].split(" of 30")[0])
    assert 1 <= done < 30
    left = sorted(p.name for p in out.iterdir())
    assert left == [theirs.name] + [f"img{k:02d}_labels.zarr" for k in range(30)]
    for k in range(30):
        labels = zarr.open_array(str(out / f"img{k:02d}_labels.zarr"), mode="r")[:]
        if k < done:  # replaced by the new labels
            assert labels.shape == (512, 512) and labels.max() > 0
        else:  # the earlier output, whole
            assert labels.shape == (8, 8) and (labels == 7).all()

