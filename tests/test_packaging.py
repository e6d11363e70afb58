"""The published package: sdist + wheel build, pass twine check, and the wheel installed in a fresh
virtual environment segments the sample with its own model and sample files."""

import json
import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["napari_tiled_unet/model/weights/nuclei-dsb2018.safetensors",
           "napari_tiled_unet/sample_data/dsb2018_150b0ffa318c.tif", "napari_tiled_unet/napari.yaml"]


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_segments_the_sample(tmp_path):
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    # sdist first, then the wheel built from the unpacked sdist: both must carry the model and samples
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "-o", str(dist), str(REPO)],
                   check=True, capture_output=True)
    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert all(n in names for n in SHIPPED), SHIPPED
    with tarfile.open(sdist) as tar:
        sdist_names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"sample_data/dsb2018_150b0ffa318c.tif", "src/" + SHIPPED[0], "LICENSE"} <= sdist_names
    if subprocess.run([sys.executable, "-m", "twine", "--version"], capture_output=True).returncode == 0:
        check = subprocess.run([sys.executable, "-m", "twine", "check", *map(str, (wheel, sdist))],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies (torch, napari, ...) come from this environment as plain path entries, so its
    # editable install of the plugin (a .pth hook) is not active there: only the wheel provides it
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    where = subprocess.run(
        [str(py), "-c", "import json, napari_tiled_unet._sample_data as s, napari_tiled_unet as p; "
                        "print(json.dumps([p.__file__, str(s._file('dsb2018_150b0ffa318c.tif'))]))"],
        check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    module, sample = json.loads(where)
    assert module.startswith(str(venv)) and sample.startswith(str(venv))

    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(venv / "bin" / "napari-tiled-unet"), "segment", sample, "-o", str(out),
                             "--overlay", "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    row, = json.loads(result.stdout)["segmented"]
    assert 150 < row["objects"] < 250  # the built-in model on the shipped sample (198 nuclei by hand)
    assert (out / "dsb2018_150b0ffa318c_labels.tif").is_file()
    assert (out / "dsb2018_150b0ffa318c_labels.png").is_file()
