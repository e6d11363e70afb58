import numpy as np
import pytest
import torch

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.errors import ImageError
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model import load_model
from napari_tiled_unet.runtime import Runtime, cpu_has_fast_bf16, resolve_precision
from napari_tiled_unet.segmentation import segment


def test_auto_precision_policy():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"  # fp32 stays selectable
    assert Runtime(device="cpu", precision="auto").resolve().precision == resolve_precision("auto", cpu)
    with pytest.raises(ImageError, match="Unknown precision"):
        Runtime(precision="fp8")


def test_labels_agree_between_auto_and_fp32_on_the_sample():
    """The CLI's default (auto: bf16 on this CPU when it has AVX-512 BF16/AMX) finds the same
    nuclei as fp32: object count within 2 %, matched F1@0.5 >= 0.98."""
    bundle, image = load_model(), nuclei_image()
    fp32 = segment(bundle, image, device="cpu", precision="fp32")
    auto = segment(bundle, image, device="cpu", precision="auto")
    assert fp32.n_objects > 20
    assert abs(auto.n_objects - fp32.n_objects) <= max(1, 0.02 * fp32.n_objects)
    assert match_instances(fp32.labels, auto.labels, 0.5).f1 >= 0.98
    assert np.mean(auto.labels.astype(bool) == fp32.labels.astype(bool)) >= 0.99
