"""An LM model exports to ONNX with timm's own export helper, and onnxruntime gives the same logits."""
import numpy as np
import onnxruntime  # a test dependency (timm-lm[test], which setup.sh installs): missing, the test must fail, not skip
import pytest
import timm
import torch


@pytest.mark.parametrize('name, kwargs, size', [
    ('lm_resnet20_cifar', dict(k_per_channel=True, k_init=(-0.4, 0.4)), 32),
    ('lm_resnet18', dict(k_stable=True, k_init=(-0.4, 0.4)), 64),
])
def test_onnx_export_matches_pytorch(tmp_path, name, kwargs, size):
    from timm.utils.onnx import onnx_export
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    path = tmp_path / f'{name}.onnx'
    onnx_export(model, str(path), example_input=x, check=True)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, model(x).numpy(), rtol=1e-4, atol=1e-4)
