"""scripts/quickstart.sh: its segmenting step, run here in this environment (its install steps run
in .ci/run on a clean clone, in a fresh virtual environment)."""

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]


def test_the_quickstart_segments_the_sample_and_says_where_the_results_are(tmp_path):
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "napari-tiled-unet").exists():
        pytest.skip("the napari-tiled-unet command is not installed beside this Python")
    out = tmp_path / "quickstart results"
    env = {**os.environ, "VENV": str(scripts.parent), "OUT": str(out), "QUICKSTART_SKIP_INSTALL": "1"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    labels, overlay = out / "dsb2018_150b0ffa318c_labels.tif", out / "dsb2018_150b0ffa318c_labels.png"
    assert 150 < tifffile.imread(labels).max() < 250  # about the sample's 198 nuclei
    assert overlay.stat().st_size > 10_000
    assert f"labels  (one number per nucleus): {labels}" in result.stdout
    assert f"overlay (outlines on the image):  {overlay}" in result.stdout
    assert "Plugins > Tiled U-Net > Segment (U-Net)" in result.stdout


def test_the_quickstart_refuses_a_python_that_is_too_old_in_one_sentence(tmp_path):
    fake = tmp_path / "python2"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": str(fake), "VENV": str(tmp_path / "v")})
    assert result.returncode == 1
    assert "older than 3.10" in result.stderr and not (tmp_path / "v").exists()
