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


def _stand_in(folder, name, script):
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(("machine", "expected"), [
    ({}, "PyTorch (no NVIDIA GPU: the CPU build): pip install torch --index-url "
         "https://download.pytorch.org/whl/cpu"),
    ({"nvidia-smi": "echo 'GPU 0: NVIDIA H100'"},
     "PyTorch (NVIDIA GPU found: the CUDA build): pip install torch"),
    ({"nvidia-smi": "echo 'NVIDIA-SMI has failed' >&2; exit 9"},  # a driver without a GPU
     "PyTorch (no NVIDIA GPU: the CPU build): pip install torch --index-url"),
    ({"uname": "echo Darwin"}, "PyTorch (macOS: the standard build (CPU and Apple GPU)): pip install torch"),
    ({"TORCH_INSTALL": "torch==2.13.0"}, "PyTorch (TORCH_INSTALL): pip install torch==2.13.0"),
])
def test_the_quickstart_picks_the_pytorch_build_for_the_machine(tmp_path, machine, expected):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INSTALL"}
    for name, script in machine.items():
        if name == "TORCH_INSTALL":
            env[name] = script
        else:
            _stand_in(tmp_path, name, script)
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    if "nvidia-smi" not in machine:  # a machine without the NVIDIA tools, even if this one has them
        env["PATH"] = ":".join(p for p in env["PATH"].split(":") if not Path(p, "nvidia-smi").exists())
    result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                            env={**env, "QUICKSTART_PLAN": "1", "VENV": str(tmp_path / "v")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(expected)
    assert not (tmp_path / "v").exists()  # a plan installs nothing
