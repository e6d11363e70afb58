import json
from pathlib import Path

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
    assert "Task was destroyed" not in err and "Traceback" not in err, err
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



# -- reliability (issue 17) --------------------------------------------------------------------


def _one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_outputs_are_never_segmented_again_when_output_is_the_input_folder(tmp_path, folder, model_file,
                                                                          capsys):
    args = ["segment", str(folder), "-o", str(folder), "-m", str(model_file), "--overlay"]
    assert main(args) == 0
    first = sorted(p.name for p in folder.iterdir())
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == first  # no img0_labels_labels.tif
    assert "skipping 6 label file(s)" in capsys.readouterr().err
    # a label file written by this tool is recognised elsewhere too (it carries a mark)
    other = tmp_path / "elsewhere"
    assert main(["segment", str(folder / "img0_labels.tif"), "-o", str(other), "-m", str(model_file)]) == 1
    assert "give the images instead" in _one_sentence(capsys.readouterr().err)


def test_two_inputs_with_one_output_name_are_refused_before_any_work(tmp_path, folder, model_file, capsys):
    from skimage.io import imsave

    imsave(folder / "img0.png", nuclei_image()[:64, :64], check_contrast=False)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "-m", str(model_file)]) == 1
    sentence = _one_sentence(capsys.readouterr().err)
    assert "img0.png" in sentence and "img0.tif" in sentence and "img0_labels" in sentence
    assert not out.exists() or not list(out.iterdir())  # nothing written


@pytest.mark.parametrize("where", ["file", "under_file", "read_only"])
def test_an_unusable_output_location_is_one_sentence_before_the_model_runs(tmp_path, folder, model_file,
                                                                            capsys, where):
    import os

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    if where == "read_only":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        # root writes into read-only folders; nobody creates folders in /proc
        out = Path("/proc/ro-test/sub") if os.geteuid() == 0 else ro / "sub"
    else:
        out = blocker if where == "file" else blocker / "sub"
    assert main(["segment", str(folder), "-o", str(out), "-m", str(model_file)]) == 1
    assert "-o" in _one_sentence(capsys.readouterr().err)
    assert blocker.read_text() == "not a folder"


def test_segment_with_tqdm_disabled_in_the_environment(tmp_path, folder, model_file):
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(folder / "img0.tif"), "-o", str(out),
           "-m", str(model_file), "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert tifffile.imread(out / "img0_labels.tif").max() > 0


def test_bad_settings_are_one_sentence_and_nothing_runs(tmp_path, folder, model_file, capsys):
    out = tmp_path / "out"
    base = ["segment", str(folder), "-o", str(out), "-m", str(model_file)]
    for extra, words in [(["--batch-size", "-3"], "batch size"), (["--batch-size", "0"], "batch size"),
                         (["--foreground-threshold", "1.5"], "between 0 and 1"),
                         (["--foreground-threshold", "nan"], "finite"),
                         (["--seed-threshold", "-0.1"], "between 0 and 1"),
                         (["--min-size", "-1"], "at least 0"), (["--workers", "-2"], "workers"),
                         (["--tile-size", "0"], "tile size")]:
        assert main([*base, *extra]) == 1, extra
        assert words in _one_sentence(capsys.readouterr().err), extra
    assert not out.exists()


def test_missing_zarr_chunks_are_reported_and_vanishing_ones_fail(tmp_path, model_file, capsys):
    import zarr

    from napari_tiled_unet.io import ChunkWatch, read_image
    from napari_tiled_unet.model import load_model
    from napari_tiled_unet.segmentation import segment_iter

    img = nuclei_image()[:256, :256]
    z = zarr.open_array(str(tmp_path / "img.zarr"), mode="w", shape=img.shape, chunks=(64, 64),
                        dtype=img.dtype)
    z[:] = img
    chunk_files = sorted(p for p in (tmp_path / "img.zarr").rglob("*")
                         if p.is_file() and p.name != "zarr.json")
    assert len(chunk_files) == 16
    chunk_files[5].unlink()  # absent before the run: read as the fill value, and said so
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "img.zarr"), "-o", str(out), "-m", str(model_file)]) == 0
    assert "1 of 16 chunks of img.zarr are not stored" in capsys.readouterr().err
    # a chunk that disappears while the image is being read fails the image
    bundle = load_model(model_file)
    image = read_image(tmp_path / "img.zarr")
    assert ChunkWatch.of(image).absent == 1
    gen = segment_iter(bundle, image, device="cpu", window=64, batch_size=1)
    next(gen)
    next(gen)
    chunk_files[9].unlink()
    with pytest.raises(ValueError, match=r"1 chunk.*disappeared"):
        for _ in gen:
            pass


def test_sigkill_with_overlay_leaves_whole_outputs_and_the_next_run_removes_the_scratch(tmp_path, model_file):
    """SIGKILL (no handler runs) and SIGTERM mid-folder with --overwrite --overlay: every label
    tif and overlay png is the earlier whole one or a whole new one, never truncated; what the
    killed run left behind is removed by the next run, another process's scratch is kept."""
    import signal
    import subprocess
    import sys
    import time

    from skimage.io import imread, imsave

    from napari_tiled_unet.io import scratch_tag

    src = tmp_path / "images"
    src.mkdir()
    img = nuclei_image()
    n = 20
    for k in range(n):
        tifffile.imwrite(src / f"img{k:02d}.tif", np.roll(img, 17 * k, axis=1)[:384, :384])
    out = tmp_path / "out"
    out.mkdir()
    old = np.full((8, 8), 7, np.int32)
    for k in range(n):  # outputs of an earlier run, to be replaced (--overwrite)
        tifffile.imwrite(out / f"img{k:02d}_labels.tif", old)
        imsave(out / f"img{k:02d}_labels.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(src), "-o", str(out),
           "-m", str(model_file), "--device", "cpu", "--overwrite", "--overlay",
           "--tta"]  # (mirror test: 4x the time per image, a wider window to signal in)

    def run_and_signal(sig):
        """Start the run, send ``sig`` once it is mid-folder -> (the process, its stderr). A run
        that ended whole (exit 0) got the signal too late, or not at all: the test process,
        starved of CPU on a busy machine, saw the run mid-folder only as it was ending (seen
        in CI); it is started again, up to three times in all."""
        errs = []
        for _attempt in range(3):
            started = time.time()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 300

            def mid_folder(proc=proc, started=started) -> bool:
                """A temporary output file of this run exists (in the middle of writing), or a
                first image is finished (a poll may miss the short-lived temporary files)."""
                names = [p.name for p in out.iterdir()]
                return any(f".{proc.pid}@" in name and ".tmp" in name for name in names) or any(
                    (out / f"img{k:02d}_labels.tif").stat().st_mtime > started for k in range(n))

            while proc.poll() is None and time.monotonic() < deadline and not mid_folder():
                time.sleep(0.002)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            errs.append(err)
            if proc.returncode != 0:
                break
        return proc, "\n".join(errs)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc, err = run_and_signal(sig)
        assert proc.returncode == (-9 if sig == signal.SIGKILL else 130), err
        host = scratch_tag().split("@")[1]
        for k in range(n):
            labels = tifffile.imread(out / f"img{k:02d}_labels.tif")  # whole, old or new
            png = imread(out / f"img{k:02d}_labels.png")
            new = labels.shape == (384, 384)
            assert new or np.array_equal(labels, old)
            assert png.shape in ((384, 384, 3), (8, 8, 3))
            if sig == signal.SIGTERM:  # the overlay goes with its labels (SIGKILL could fall between)
                assert png.shape == ((384, 384, 3) if new else (8, 8, 3))
        if sig == signal.SIGKILL:
            left = [p.name for p in out.iterdir() if p.name.startswith(".")]
            assert all(f".{proc.pid}@{host}." in name for name in left)  # the killed run's scratch, if any
            # (what it left depends on the instant; make sure there is some to clean up)
            (out / f".img00_labels.tif.{proc.pid}@{host}.zz.tmp").write_bytes(b"II*\x00 cut short")
            theirs = out / f".probabilities-1@{host}-x"
            theirs.mkdir()  # a live process's scratch (pid 1) on this host
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p != theirs]
    assert theirs.exists()
    assert "removed" in err and "scratch" in err


def test_a_huge_tiff_with_tiles_past_the_end_of_the_file_is_one_failure_line(tmp_path, model_file):
    """A truncated transfer of a big tiled tif (read lazily through zarr): the image fails with
    one sentence, without a decoder traceback or a flood of asyncio task reports."""
    import subprocess
    import sys

    big = np.zeros((8200, 8200), np.uint8)  # above the lazy-reading threshold
    big[::97, ::89] = 200
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, big, tile=(512, 512), compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])  # the last tiles' data now lies past the end
    result = subprocess.run([sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(path), "-o",
                             str(tmp_path / "out"), "-m", str(model_file), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "huge.tif: Part of the image could not be read" in result.stdout
    assert "Traceback" not in result.stderr and "Task" not in result.stderr, result.stderr[:2000]
    assert [line for line in result.stderr.splitlines() if "huge.tif" in line and "failed" in line]


def test_an_unreachable_scheduler_is_one_sentence(tmp_path, folder, model_file, capsys):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        rc = main(["segment", str(folder), "-o", str(tmp_path / "out"), "-m", str(model_file),
                   "--scheduler", "tcp://127.0.0.1:1"])
    assert rc == 1
    sentence = _one_sentence(capsys.readouterr().err)
    assert "Could not connect to the dask scheduler at tcp://127.0.0.1:1" in sentence


@pytest.mark.slow
def test_workers_killed_again_and_again_fail_the_image_in_one_sentence(tmp_path, model_file):
    """SIGKILL to the cluster's worker processes while they compute: the scheduler gives up on
    the task (after 0 allowed failures here, 3 by default) and the CLI reports the image as
    failed in one line, exit 1, with no output and no scratch left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    import zarr

    img = np.tile(nuclei_image(), (3, 2))[:1500, :1300]
    src = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=img.shape, chunks=(512, 512),
                          dtype=img.dtype)
    src[:] = img
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(tmp_path / "big.zarr"),
           "-o", str(out), "-m", str(model_file), "--batch-size", "1", "--workers", "2"]
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    killed = 0
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and list(out.glob(".probabilities-*")):  # the windows are being computed
            for child in psutil.Process(proc.pid).children():
                try:
                    if "resource_tracker" not in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        killed += 1
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.3)
    stdout, err = proc.communicate(timeout=120)
    assert killed and proc.returncode == 1, (stdout, err)
    assert "big.zarr: The dask cluster could not finish big.zarr" in stdout
    assert "Traceback" not in err, err
    assert list(out.iterdir()) == []


def test_a_write_that_fails_half_way_leaves_the_earlier_outputs_and_no_fragment(tmp_path, model_file):
    """The file-size limit (RLIMIT_FSIZE) makes the overlay PNG fail part-way, as a full disk
    does: that image is reported as failed, its earlier label tif and PNG stay as they were,
    and no temporary file is left."""
    import resource
    import signal
    import subprocess
    import sys

    src = tmp_path / "images"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", nuclei_image()[:384, :384])
    out = tmp_path / "out"
    out.mkdir()
    old_tif, old_png = b"II*\x00 earlier labels", b"\x89PNG earlier overlay"
    (out / "a_labels.tif").write_bytes(old_tif)
    (out / "a_labels.png").write_bytes(old_png)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the labels fit, the PNG does not

    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(src), "-o", str(out),
           "-m", str(model_file), "--device", "cpu", "--overwrite", "--overlay"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr
    assert "1 failed" in result.stdout and "File too large" in result.stdout
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.png", "a_labels.tif"]
    assert (out / "a_labels.tif").read_bytes() == old_tif and (out / "a_labels.png").read_bytes() == old_png
@pytest.fixture
def colour_folder(tmp_path):
    """The same 160x192 crop as gray, RGB tif, RGBA png and a two-colour (Y, X, 2) tif
    whose nuclei are in channel 1."""
    from skimage.io import imsave

    d = tmp_path / "colour"
    d.mkdir()
    gray = nuclei_image()[:160, :192]
    tifffile.imwrite(d / "gray.tif", gray)
    tifffile.imwrite(d / "rgb.tif", np.stack([gray] * 3, axis=-1))
    imsave(d / "rgba.png", np.stack([gray] * 3 + [np.full_like(gray, 255)], axis=-1), check_contrast=False)
    tifffile.imwrite(d / "two.tif", np.stack([np.zeros_like(gray), gray], axis=-1))
    return d


def test_rgb_and_rgba_images_are_planes_with_colour_not_stacks(tmp_path, colour_folder, model_file, capsys):
    """RGB(A) is segmented as the luminance of one plane: labels of the plane's shape, the
    objects of the gray image (equal channels: luminance = gray)."""
    out = tmp_path / "out"
    inputs = [str(colour_folder / n) for n in ("gray.tif", "rgb.tif", "rgba.png")]
    assert main(["segment", *inputs, "-o", str(out), "-m", str(model_file), "--json"]) == 0
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)["segmented"]}
    gray = tifffile.imread(out / "gray_labels.tif")
    for name in ("rgb", "rgba"):
        labels = tifffile.imread(out / f"{name}_labels.tif")
        assert labels.shape == (160, 192)
        assert rows[f"{name}.tif" if name == "rgb" else "rgba.png"]["objects"] == gray.max() > 0
        assert (labels > 0).sum() == pytest.approx((gray > 0).sum(), rel=0.02)


def test_a_two_channel_image_needs_the_channel_and_then_uses_it(tmp_path, colour_folder, model_file, capsys):
    out = tmp_path / "out"
    two = str(colour_folder / "two.tif")
    assert main(["segment", two, "-o", str(out), "-m", str(model_file)]) == 1
    err = capsys.readouterr().out
    assert "2 channels" in err and "--channel (0 to 1)" in err and not out.joinpath("two_labels.tif").exists()
    assert main(["segment", two, str(colour_folder / "gray.tif"), "-o", str(out), "-m", str(model_file),
                 "--channel", "1"]) == 1  # the gray image has no channel 1 ... and says so
    assert "no channels" in capsys.readouterr().out
    labels = tifffile.imread(out / "two_labels.tif")
    assert np.array_equal(labels, tifffile.imread(tmp_path / "out" / "two_labels.tif"))
    main(["segment", str(colour_folder / "gray.tif"), "-o", str(tmp_path / "g"), "-m", str(model_file)])
    assert np.array_equal(labels, tifffile.imread(tmp_path / "g" / "gray_labels.tif"))


def test_the_api_reads_axes_as_the_cli_does(model_file):
    """napari_tiled_unet.segment: RGB -> one plane (luminance or a chosen channel), a
    (Y, X, 2) image asks for its channel, (2, Y, X) with axes='CYX' and a channel."""
    from napari_tiled_unet import segment
    from napari_tiled_unet.errors import ImageError

    gray = nuclei_image()[:128, :160]
    expected = segment(model_file, gray, device="cpu").labels
    rgb = np.stack([gray, np.zeros_like(gray), gray], axis=-1)
    assert segment(model_file, rgb, device="cpu", channel=2).labels.shape == (128, 160)
    assert np.array_equal(segment(model_file, rgb, device="cpu", channel=0).labels, expected)
    with pytest.raises(ImageError, match="choose the one that holds the nuclei with the channel argument"):
        segment(model_file, rgb[..., :2], device="cpu")
    cyx = np.stack([np.zeros_like(gray), gray])
    assert np.array_equal(segment(model_file, cyx, axes="CYX", channel=1, device="cpu").labels, expected)


def _zarr_image(path, img, chunks=(128, 128)):
    import zarr

    z = zarr.open_array(str(path), mode="w", shape=img.shape, chunks=chunks, dtype=img.dtype)
    z[:] = img
    return path


def test_tile_size_and_blend_mode_reach_the_engine_for_2d_zarr_inputs(tmp_path, model_file, caplog):
    """--tile-size and --mode used to be dropped for 2D zarr images (a fixed chunk-aligned plan)."""
    import logging

    import zarr

    src = _zarr_image(tmp_path / "img.zarr", nuclei_image()[:300, :300])
    base = ["segment", str(src), "-m", str(model_file), "--probabilities", "--device", "cpu",
            "--precision", "fp32", "--batch-size", "1"]
    probs = {}
    for mode in ("exact", "blend"):
        out = tmp_path / mode
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="napari_tiled_unet.inference"):
            assert main([*base, "-o", str(out), "--tile-size", "128", "--mode", mode]) == 0
        windows = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiles:")]
        assert len(windows) == 1 and f"{mode} mode" in windows[0], windows
        side = int(windows[0].split(" of ")[1].split("x")[0])
        assert side <= 128, windows  # the asked size, not the 1024-px chunk plan's windows
        probs[mode] = zarr.open_array(str(out / "img_prob_interior.zarr"), mode="r")[:]
    # blending averages overlapping windows: its probabilities differ from the exact ones
    assert np.abs(probs["blend"] - probs["exact"]).max() > 1e-3
    # exact windows of any size give the whole-image pass
    from napari_tiled_unet.inference import predict
    from napari_tiled_unet.model import load_model

    whole = predict(load_model(model_file), nuclei_image()[:300, :300], device="cpu", window=320)
    assert np.abs(probs["exact"] - whole[1]).max() < 1e-4


def test_blend_mode_on_a_dask_cluster_is_one_sentence_before_any_work(tmp_path, model_file, capsys):
    src = _zarr_image(tmp_path / "img.zarr", nuclei_image()[:200, :200])
    out = tmp_path / "out"
    assert main(["segment", str(src), "-o", str(out), "-m", str(model_file), "--workers", "1",
                 "--mode", "blend"]) == 1
    assert "exact tiles only" in _one_sentence(capsys.readouterr().err)
    assert not out.exists()


def test_unknown_engine_options_are_refused_not_dropped():
    from napari_tiled_unet.inference import predict
    from napari_tiled_unet.tiling import TileSettings

    img = nuclei_image()[:64, :64]
    with pytest.raises(TypeError, match="tile_size"):
        predict("nuclei-dsb2018", img, tile_size=32)
    with pytest.raises(TypeError, match="inside tiles="):
        predict("nuclei-dsb2018", img, tiles=TileSettings(), window=32)
