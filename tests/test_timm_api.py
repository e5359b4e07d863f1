"""An LM model behaves like timm's own ResNets in every timm API."""
import pytest
import timm
import torch
from timm.models import create_feature_extractor, get_graph_node_names, group_parameters
from timm.optim import create_optimizer_v2

import timm_lm

SMALL = ['lm_resnet18', 'lm_resnetv2_18', 'lm_resnet20_cifar']


def _input(model, batch=2):
    size = model.pretrained_cfg['input_size'][1]
    return torch.randn(batch, model.pretrained_cfg['input_size'][0], min(size, 64), min(size, 64))


@pytest.mark.parametrize('name', ['lm_resnet50', 'lm_resnext50', 'lm_resnetv2_50', 'lm_resnet56_cifar'])
def test_pretrained_cfg_is_complete(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    for field in ('input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv',
                  'classifier', 'num_classes', 'license'):
        assert cfg.get(field) is not None, field
    assert cfg['paper_ids'] == 'arXiv:1710.10121'
    assert model.get_submodule(cfg['first_conv']).in_channels == cfg['input_size'][0]
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    assert cfg['architecture'] == name


@pytest.mark.parametrize('name', SMALL)
def test_features_only(name):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3)).eval()
    x = _input(model)
    feats = model(x)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [x.shape[-1] // f.shape[-1] for f in feats] == model.feature_info.reduction()
    torch.manual_seed(0)
    full = timm.create_model(name).eval()  # same seed: same weights as the wrapped model
    with torch.no_grad():
        torch.testing.assert_close(feats[-1], full.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)[-1])


@pytest.mark.parametrize('name', SMALL)
@torch.no_grad()
def test_forward_features_head_intermediates_and_pruning(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    torch.testing.assert_close(logits, model(x))
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)

    final, inter = model.forward_intermediates(x)
    assert len(inter) == (4 if name == 'lm_resnet20_cifar' else 5)  # stem + 4 stages; CIFAR: stem + 3 stages
    torch.testing.assert_close(final, feats)
    assert [t.shape[1] for t in inter] == [f['num_chs'] for f in model.feature_info]

    taps = model.prune_intermediate_layers(indices=(1, 2), prune_head=True)
    assert list(taps) == [1, 2]
    pruned = model.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert len(pruned) == 2
    for a, b in zip(pruned, inter[1:3]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('name', SMALL)
def test_reset_and_get_classifier(name):
    model = timm.create_model(name)
    model.reset_classifier(10)
    assert model.get_classifier().out_features == 10 if hasattr(model.get_classifier(), 'out_features') \
        else model.get_classifier().out_channels == 10
    assert model(_input(model)).shape == (2, 10)
    model.reset_classifier(0)
    assert model(_input(model)).shape == (2, model.num_features)


def test_group_matcher_puts_each_k_with_its_block():
    model = timm.create_model('lm_resnet18')
    groups = group_parameters(model, model.group_matcher())
    group_of = {name: gid for gid, names in groups.items() for name in names}
    assert group_of['layer2.1.lm.k'] == group_of['layer2.1.conv1.weight']
    assert group_of['layer2.1.lm.k'] != group_of['layer2.0.conv1.weight']
    v2 = timm.create_model('lm_resnetv2_18')
    groups = group_parameters(v2, v2.group_matcher())
    group_of = {name: gid for gid, names in groups.items() for name in names}
    assert group_of['stages.1.blocks.1.lm.k'] == group_of['stages.1.blocks.1.conv1.weight']


def test_layer_decay_and_no_weight_decay_for_k():
    model = timm.create_model('lm_resnet18')
    k_params = {id(p) for n, p in model.named_parameters() if '.lm.' in n}
    assert k_params
    opt = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4)
    for group in opt.param_groups:
        if any(id(p) in k_params for p in group['params']):
            assert group['weight_decay'] == 0.0
    assert sum(id(p) in k_params for g in opt.param_groups for p in g['params']) == len(k_params)

    opt = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=1e-4, layer_decay=0.5)
    scale_of = {id(p): g['lr_scale'] for g in opt.param_groups for p in g['params']}
    assert scale_of[id(model.layer2[1].lm.k)] == scale_of[id(model.layer2[1].conv1.weight)]
    assert scale_of[id(model.layer1[1].lm.k)] < scale_of[id(model.layer4[1].lm.k)]


@pytest.mark.parametrize('name', SMALL)
def test_grad_checkpointing_same_outputs_and_gradients(name):
    model = timm.create_model(name, drop_rate=0.0).train()
    x = _input(model)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_plain, grads_plain = run()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.modules() if isinstance(s, timm_lm.stage.LMStage))
    out_ckpt, grads_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain)
    assert any('.lm.' in n for n in grads_plain)
    for n in grads_plain:
        torch.testing.assert_close(grads_ckpt[n], grads_plain[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize('name', SMALL)
@torch.no_grad()
def test_torchscript(name):
    model = timm.create_model(name, k_per_channel=name.endswith('cifar')).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('name', SMALL)
@torch.no_grad()
def test_fx_feature_extractor(name):
    model = timm.create_model(name, k_stable=True).eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert any('lm' in n for n in eval_nodes)  # the mix is traced, not hidden in a leaf
    stage_nodes = [f['module'] for f in model.feature_info[1:]]
    extractor = create_feature_extractor(model, return_nodes={n: n for n in stage_nodes})
    x = _input(model)
    out = extractor(x)
    ref = model.forward_intermediates(x, indices=len(stage_nodes), intermediates_only=True)
    assert stage_nodes and len(ref) == len(stage_nodes) and set(out) == set(stage_nodes)
    for node, expected in zip(stage_nodes, ref):
        torch.testing.assert_close(out[node], expected)
    fx_model = timm.create_model(name, features_only=True, feature_cls='fx', k_stable=True).eval()
    assert len(fx_model(x)) == len(model.feature_info)


@torch.no_grad()
def test_channels_last():
    model = timm.create_model('lm_resnet18', k_per_channel=True).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('per_channel', [False, True])
def test_bf16_autocast_on_cpu(per_channel):
    model = timm.create_model('lm_resnet18', k_per_channel=per_channel).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(x).float().mean().backward()
    assert model.layer1[1].lm.k.grad is not None and model.layer1[1].lm.k.grad.dtype == torch.float32


def test_torch_compile_fullgraph():
    model = timm.create_model('lm_resnet20_cifar', k_per_channel=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), ref, rtol=1e-4, atol=1e-4)
