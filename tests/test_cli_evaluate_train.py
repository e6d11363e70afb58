"""The `evaluate` and `train` commands on small folders."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.cli import main
from napari_tiled_unet.model.bundle import load_model


def _write(folder, name, array):
    folder.mkdir(exist_ok=True)
    tifffile.imwrite(folder / f"{name}.tif", array)


def test_evaluate_prints_per_image_and_total_figures(tmp_path, capsys):
    gt = nuclei_labels()
    missing_one = gt.copy()
    missing_one[gt == gt.max()] = 0  # one object missed
    _write(tmp_path / "gt", "a", gt)
    _write(tmp_path / "gt", "b", gt)
    _write(tmp_path / "pred", "a_labels", gt)
    _write(tmp_path / "pred", "b_labels", missing_one)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    images = {r["name"]: r for r in report["images"]}
    n = int(gt.max())
    assert images["a"]["matching"]["0.5"]["f1"] == 1.0
    assert images["b"]["matching"]["0.5"]["fn"] == 1 and images["b"]["matching"]["0.5"]["fp"] == 0
    total = report["total"]["matching"]["0.5"]
    assert (total["tp"], total["fn"]) == (2 * n - 1, 1)
    assert abs(total["ap"] - (2 * n - 1) / (2 * n)) < 1e-9
    # the readable form names both images and the totals
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]) == 0
    text = capsys.readouterr().out
    assert "a" in text and "b" in text and "total" in text.lower()


def test_evaluate_on_missing_folder_is_one_sentence(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_train_from_scratch_saves_a_model_with_its_record_and_resumes(tmp_path, capsys):
    img, lab = nuclei_image(), nuclei_labels()
    for k, (y, x) in enumerate([(0, 0), (0, 300), (250, 0), (250, 300)]):
        _write(tmp_path / "images", f"n{k}", img[y : y + 256, x : x + 256])
        _write(tmp_path / "labels", f"n{k}", lab[y : y + 256, x : x + 256])
    (tmp_path / "val.txt").write_text("# held out\nn3\n")
    out = tmp_path / "m.safetensors"
    args = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--out", str(out), "--base-channels", "4", "--depth", "2", "--epochs", "1",
            "--steps-per-epoch", "4", "--patch-size", "64", "--batch-size", "2",
            "--val-ids", str(tmp_path / "val.txt"), "--checkpoint", str(tmp_path / "ck.pt")]
    assert main(args) == 0
    text = capsys.readouterr()
    assert "Saved" in text.out and "best_val_loss" in text.out
    bundle = load_model(out)
    record = bundle.metadata["training"]
    assert record["steps"] == 4 and record["from_scratch"]
    assert record["validation"]  # the held-out image is recorded
    assert "n3" in json.dumps(record["validation"])
    assert all(np.isfinite(p.detach().numpy()).all() for p in bundle.model.parameters())
    # the same command again finds the finished run in its checkpoint and does not start over
    assert main(args) == 0
    assert load_model(out).metadata["training"]["steps"] == 4
    assert "resumed from ck.pt at step 4" in capsys.readouterr().err.lower()


def test_train_refuses_unpaired_folders(tmp_path, capsys):
    _write(tmp_path / "images", "a", nuclei_image()[:64, :64])
    _write(tmp_path / "labels", "b", nuclei_labels()[:64, :64])
    rc = main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
               "--out", str(tmp_path / "m.safetensors"), "--epochs", "1"])
    assert rc == 1
    assert "same name" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_sigterm_saves_the_checkpoint_and_the_same_command_resumes(tmp_path):
    """What a batch scheduler does to a job at its time limit: SIGTERM, then the job is re-run."""
    import signal
    import subprocess
    import sys
    import time

    img, lab = nuclei_image(), nuclei_labels()
    for k, (y, x) in enumerate([(0, 0), (250, 300)]):
        _write(tmp_path / "images", f"n{k}", img[y : y + 256, x : x + 256])
        _write(tmp_path / "labels", f"n{k}", lab[y : y + 256, x : x + 256])
    ckpt = tmp_path / "ck.pt"
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "train", "--images", str(tmp_path / "images"),
           "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "m.safetensors"),
           "--base-channels", "4", "--depth", "2", "--epochs", "10000", "--steps-per-epoch", "10",
           "--patch-size", "64", "--batch-size", "2", "--checkpoint", str(ckpt),
           "--patience", "0"]  # never stops early: the run must still be going when the signal comes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "step 0: ..." once the first validation ran
    assert line.startswith("step 0"), line
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    assert ckpt.exists() and not (tmp_path / "m.safetensors").exists()
    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "Resumed" not in seen:
        line = again.stderr.readline()
        if not line:
            break
        seen += line
    again.send_signal(signal.SIGTERM)
    again.communicate(timeout=120)
    assert "Resumed from ck.pt at step" in seen


def _pairs(tmp_path):
    img, lab = nuclei_image(), nuclei_labels()
    for k, (y, x) in enumerate([(0, 0), (250, 300)]):
        _write(tmp_path / "images", f"n{k}", img[y : y + 256, x : x + 256])
        _write(tmp_path / "labels", f"n{k}", lab[y : y + 256, x : x + 256])


@pytest.mark.slow
def test_a_run_stopped_twice_by_sigterm_and_resumed_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    """The guarantee in training/loop.py's docstring: a signal never cuts a step in the middle,
    so the checkpoint saved on SIGTERM resumes to exactly the weights of a run never stopped."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import torch

    _pairs(tmp_path)

    def cmd(name):
        return [sys.executable, "-m", "napari_tiled_unet.cli", "train", "--images", str(tmp_path / "images"),
                "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / f"{name}.safetensors"),
                "--base-channels", "4", "--depth", "2", "--epochs", "2", "--steps-per-epoch", "15",
                "--val-every", "5", "--patch-size", "64", "--batch-size", "2",
                "--checkpoint", str(tmp_path / f"{name}.ckpt"), "--checkpoint-minutes", "1000"]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    assert subprocess.run(cmd("whole"), capture_output=True, env=env, timeout=600).returncode == 0
    rng = random.Random(17)
    stopped_at = []
    for _ in range(2):
        proc = subprocess.Popen(cmd("stopped"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        while True:  # wait for the first validation after step 0 (or the resumed step)
            line = proc.stdout.readline()
            assert line, proc.communicate()[1]
            if line.startswith("step ") and not line.startswith("step 0:"):
                break
        time.sleep(rng.uniform(0.0, 0.15))  # then anywhere inside a step
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        stopped_at.append(torch.load(tmp_path / "stopped.ckpt", weights_only=True)["step"])
    assert 0 < stopped_at[0] <= stopped_at[1] < 30  # both stops fell inside the run
    assert subprocess.run(cmd("stopped"), capture_output=True, env=env, timeout=600).returncode == 0
    whole, stopped = load_model(tmp_path / "whole.safetensors"), load_model(tmp_path / "stopped.safetensors")
    for (key, a), b in zip(whole.model.state_dict().items(), stopped.model.state_dict().values()):
        assert torch.equal(a, b), key
    assert whole.metadata["training"]["best_step"] == stopped.metadata["training"]["best_step"]


@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_when_the_final_save_fails_the_weights_are_kept_and_said_where(tmp_path, with_checkpoint):
    """The --out folder becomes unusable while training (here: replaced by a file; a full disk
    fails the same way): one sentence, exit 1, and the weights survive, in the checkpoint
    (the same command saves them later) or in a file in the temporary folder."""
    import os
    import shutil
    import subprocess
    import sys

    _pairs(tmp_path)
    dest = tmp_path / "models"
    dest.mkdir()
    spare = tmp_path / "tmp"
    spare.mkdir()
    cmd = [sys.executable, "-m", "napari_tiled_unet.cli", "train", "--images", str(tmp_path / "images"),
           "--labels", str(tmp_path / "labels"), "--out", str(dest / "m.safetensors"),
           "--base-channels", "4", "--depth", "2", "--epochs", "1", "--steps-per-epoch", "12",
           "--patch-size", "64", "--batch-size", "2"]
    if with_checkpoint:
        cmd += ["--checkpoint", str(tmp_path / "ck.pt")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(spare)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("step 0")  # training has started
    shutil.rmtree(dest)
    dest.write_text("in the way")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    sentence = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(sentence) == 1 and "Could not write" in sentence[0], err
    if with_checkpoint:
        assert "kept in the checkpoint" in sentence[0]
        dest.unlink()
        dest.mkdir()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert load_model(dest / "m.safetensors").metadata["training"]["steps"] == 12
    else:
        kept = list(spare.glob("m.unsaved-*.safetensors"))
        assert len(kept) == 1 and str(kept[0]) in sentence[0]
        assert load_model(kept[0]).metadata["training"]["steps"] == 12


def test_evaluate_refuses_probability_maps_and_impossible_iou_thresholds(tmp_path, capsys):
    gt = nuclei_labels()
    _write(tmp_path / "gt", "a", gt)
    _write(tmp_path / "pred", "a", (gt > 0).astype(np.float32) * 0.8)  # probabilities, not labels
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main(args) == 1
    assert "not integer labels" in capsys.readouterr().err
    _write(tmp_path / "pred", "a", gt.astype(np.float32))  # whole numbers in a float file are labels
    assert main(args) == 0
    capsys.readouterr()
    for bad in ("1.5", "-1", "0", "nan", "0.5,x"):
        assert main([*args, "--thresholds", bad]) == 1, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and "threshold" in err.lower(), err


def test_train_settings_out_of_range_are_one_sentence(tmp_path, capsys):
    _pairs(tmp_path)
    base = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--out", str(tmp_path / "m.safetensors"), "--base-channels", "4", "--depth", "2"]
    for extra, words in [(["--batch-size", "0"], "batch size"), (["--lr", "nan"], "learning rate"),
                         (["--val-fraction", "1.5"], "validation fraction"), (["--epochs", "-1"], "epochs")]:
        assert main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and "\n" not in err, err
    assert not (tmp_path / "m.safetensors").exists()


def test_train_removes_the_scratch_of_killed_runs_only(tmp_path, capsys):
    """A SIGKILLed save leaves `.m.safetensors.<pid>@<host>.*.tmp` (hundreds of MB for a big
    model): the next train in that folder removes it once its process is gone, and leaves
    the scratch of a live process (pid 1) and of another host alone."""
    import subprocess
    import sys

    from napari_tiled_unet.io import scratch_tag, temp_beside

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = scratch_tag().split("@")[1]
    stale = tmp_path / f".m.safetensors.{dead.pid}@{host}.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    live = tmp_path / f".m.safetensors.1@{host}.def456.tmp"
    live.write_bytes(b"x")
    elsewhere = tmp_path / f".m.safetensors.{dead.pid}@another_node.ghi789.tmp"
    elsewhere.write_bytes(b"x")
    mine = temp_beside(tmp_path / "m.safetensors")  # this process's own, alive
    _write(tmp_path / "images", "a", nuclei_image()[:64, :64])
    _write(tmp_path / "labels", "b", nuclei_labels()[:64, :64])
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "m.safetensors")]) == 1  # unpaired: fails after the cleanup
    assert "removed 1 scratch item(s)" in capsys.readouterr().err
    assert not stale.exists() and live.exists() and elsewhere.exists() and Path(mine).exists()
