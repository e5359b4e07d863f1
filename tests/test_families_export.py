"""TorchScript, torch.fx and torch.compile on every LM family, where timm's own model supports them.

Models and helpers: tests/family_cases.py.
"""
import pytest
import timm
import torch
from family_cases import REPRESENTATIVES, TOKEN_FAMILIES, assert_close, feature_taps, features_of, grads, image, \
    lm_model, nchw, reference_stage, stage_inputs_and_outputs, tokens_to_nchw
from family_cases import single_thread  # noqa: F401  (autouse fixture)
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import create_feature_extractor, get_graph_node_names
from torchvision.models.feature_extraction import create_feature_extractor as torchvision_feature_extractor

from timm_lm.stage import lm_stages

FAMILIES = sorted(REPRESENTATIVES)


@pytest.mark.parametrize('family', FAMILIES)
@torch.no_grad()
def test_torchscript_where_timms_model_scripts(family):
    name, kwargs = REPRESENTATIVES[family]
    torch.jit.script(timm.create_model(name, **kwargs))  # timm's model scripts, so the LM model must
    model = lm_model(name, kwargs, k_per_channel=family in ('vision_transformer', 'convnext'))
    scripted = torch.jit.script(model)
    x = image()
    torch.testing.assert_close(scripted(x), model(x))


def _as_tap(t, model, family):
    return tokens_to_nchw(t, model) if family in TOKEN_FAMILIES else nchw(t, family)


@pytest.mark.parametrize('family', FAMILIES)
@torch.no_grad()
def test_fx_graph_nodes_are_the_recurrence(family):
    """timm's fx feature extraction: a stage's or a block's node is its LM output (the mix is traced under
    the block, not hidden in a leaf), and features_only(feature_cls='fx') gives the default features."""
    name, kwargs = REPRESENTATIVES[family]
    model = lm_model(name, kwargs, k_stable=True)
    _, eval_nodes = get_graph_node_names(model)
    x = image()

    # every feature tap (ViT: each block's tokens), and the last two-step block of the stage with the most
    seen = stage_inputs_and_outputs(model, x)
    path, stage = max(lm_stages(model), key=lambda item: sum(b.lm is not None for b in item[1]))
    index = max(i for i, b in enumerate(stage) if b.lm is not None)
    block_path = f'{path}.{list(stage._modules)[index]}'
    assert any(n.startswith(f'{block_path}.lm.') for n in eval_nodes)
    modules = [f['module'] for f in model.feature_info]
    out = create_feature_extractor(model, return_nodes=modules)(x)
    taps = model.forward_intermediates(x, intermediates_only=True)
    for module, tap in zip(modules, taps):
        assert_close(_as_tap(out[module], model, family), tap, msg=module)
    # (a separate extraction: torchvision gives a node to one return name only, and a stage's last block and
    # the stage share their last node)
    out = create_feature_extractor(model, return_nodes=[block_path])(x)
    assert_close(out[block_path], reference_stage(stage, seen[path][0])[index], msg=block_path)

    timm.create_model(name, features_only=True, feature_cls='fx', **kwargs)  # timm supports it for this family
    fx_features = features_of(model, name, kwargs, feature_cls='fx')
    default = features_of(model, name, kwargs)
    got, expected = feature_taps(fx_features(x)), feature_taps(default(x))
    assert len(got) == len(expected) == len(default.feature_info.get_dicts())
    for a, b in zip(got, expected):
        if family in TOKEN_FAMILIES:  # fx returns the blocks' tokens, the default (getter) NCHW maps
            a = tokens_to_nchw(a, model)
        assert_close(a, b)


def _traced_and_eager(model, x):
    """(traced, eager) outputs in inference, and in training with the parameters' gradients, from the fx
    model timm's test_models.py builds (timm's tracer: its leaf modules and functions)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    traced = torchvision_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], suppress_diff_warning=True,
        tracer_kwargs=dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    model.eval(), traced.eval()
    with torch.inference_mode():
        inference = next(iter(traced(x).values())), model(x)
    results = []
    for net in (traced, model):
        net.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = net(x)
        out = next(iter(out.values())) if isinstance(out, dict) else out
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    return inference, results


@pytest.mark.parametrize('family', FAMILIES)
def test_fx_traced_model_computes_the_same_bits(family):
    """timm's fx tracer keeps each mix as one ``lm_mix`` node, run as in eager mode, so the traced LM model
    gives the eager model's logits bit for bit (older timm releases' test_models.py asserts exactly that),
    and, in training, its logits and gradients wherever timm's own model does (all but Swin)."""
    name, kwargs = REPRESENTATIVES[family]
    model = lm_model(name, kwargs, k_per_channel=family == 'convnext')
    _, eval_nodes = get_graph_node_names(model)
    two_step = [f'{path}.{child}' for path, stage in lm_stages(model)
                for child, block in stage._modules.items() if block.lm is not None]
    assert two_step and [n[:-len('.lm_mix')] for n in eval_nodes if n.endswith('.lm_mix')] == two_step
    x = image()
    (traced, eager), ((t_out, t_grads), (e_out, e_grads)) = _traced_and_eager(model, x)
    assert torch.equal(traced, eager)
    assert any('.lm.' in n and g is not None for n, g in e_grads.items())
    _, ((base_t, base_t_grads), (base_e, base_e_grads)) = _traced_and_eager(timm.create_model(name, **kwargs), x)
    if torch.equal(base_t, base_e) and all(torch.equal(base_t_grads[n], g) for n, g in base_e_grads.items()):
        assert torch.equal(t_out, e_out)
        for n, g in e_grads.items():
            assert torch.equal(t_grads[n], g), n
    else:  # timm's own traced Swin differs from its eager self in training mode (by ~1e-2): nothing to match
        assert family == 'swin_transformer', f'timm {name} traced in training differs from eager'


def test_torch_compile_fullgraph_forward_and_backward():
    """Where timm's model compiles as one graph, the LM model does, and computes the same outputs and
    gradients (AOTAutograd: the mix is differentiated by the compiler, not by the eager custom Function)."""
    x = image(size=32)
    for name, kwargs in (('test_vit', dict(img_size=32)), ('test_convnext', {})):
        torch._dynamo.reset()
        timm_model = timm.create_model(name, **kwargs)
        torch.compile(timm_model, fullgraph=True, backend='eager')(x)  # timm's model: one graph

        model = lm_model(name, kwargs).train()
        expected = model(x)
        expected.square().mean().backward()
        expected_grads = grads(model)
        model.zero_grad()
        compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
        out = compiled(x)
        out.square().mean().backward()
        assert_close(out, expected.detach())
        got = grads(model)
        assert any(g is not None for n, g in got.items() if '.lm.' in n)
        for n, g in expected_grads.items():
            assert (g is None) == (got[n] is None), n
            if g is not None:
                torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-5, msg=n)
