"""Every LM family against timm's own model: exactness at k = 0, the documented recurrence (checked with timm's
block code), intermediates, features, pruning, gradient checkpointing and stochastic depth.

Models and helpers: tests/family_cases.py (small models at 64 x 64).
"""
import inspect

import pytest
import timm
import torch
from family_cases import ALL_CASES, CASES, REPRESENTATIVES, SIZE, TOKEN_FAMILIES, assert_close, case_id, feature_taps, \
    features_of, grads, image, liven, lm_model, nchw, reference_stage, reference_step, set_coefficients, \
    stage_inputs_and_outputs, timm_and_lm, two_step_pattern, build_structure
from family_cases import single_thread  # noqa: F401  (autouse fixture)
from timm.layers import DropPath
from timm.models._manipulate import checkpoint_seq

from timm_lm.blocks import is_lm_block
from timm_lm.pretrained import lm_coefficient_keys, zero_lm_coefficients
from timm_lm.stage import LMStage, lm_stages

FAMILIES = sorted(REPRESENTATIVES)


def _rep(family):
    return REPRESENTATIVES[family]


# ---------------------------------------------------------------- 1. k = 0 is timm's model


@pytest.mark.parametrize('case', ALL_CASES, ids=case_id)
@torch.no_grad()
def test_zero_k_is_timms_model_and_nonzero_k_changes_it(case):
    name, kwargs = case
    reference, model = timm_and_lm(name, kwargs)
    keys = set(lm_coefficient_keys(model))
    assert keys and all(k.endswith('.lm.k') and is_lm_block(model.get_submodule(k[:-len('.lm.k')])) for k in keys)
    assert set(model.state_dict()) == set(reference.state_dict()) | keys  # timm's keys, plus the k_n only

    x = image()
    expected = reference(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    set_coefficients(model)
    assert (model(x) - expected).abs().max() > 1e-3 * expected.abs().max()


# ---------------------------------------------------------------- 2. the recurrence, by hand

RECURRENCE_CASES = [(REPRESENTATIVES[f], False) for f in FAMILIES] + [
    (REPRESENTATIVES['vision_transformer'], True),  # per-channel k on tokens (channels last)
    (REPRESENTATIVES['swin_transformer'], True),  # per-channel k on NHWC maps
    (REPRESENTATIVES['convnext'], True),  # per-channel k on NCHW maps
    (CASES['mobilenetv3'][2], True),  # MobileNetV4 hybrid: universal inverted residuals and MobileAttention
    (CASES['regnet'][2], False),  # RegNet V: pre-activation, shortcut on the pre-activated input
    (CASES['regnet'][0], True),
    (CASES['efficientnet'][1], False),  # EfficientNetV2: ConvBnAct / EdgeResidual stages
    (CASES['resnetv2'][1], False),  # ResNetV2 post-activation bottleneck
    (('resnet20_cifar', {}), True),  # CIFAR family: pre-activation, whole path except the projecting blocks
]


@pytest.mark.parametrize('case, per_channel', RECURRENCE_CASES,
                         ids=[case_id(c) + ('-per_channel' if p else '') for c, p in RECURRENCE_CASES])
@torch.no_grad()
def test_every_stage_computes_the_documented_rule(case, per_channel):
    """u[n+1] = post(f(u[n]) + (1 - k) s(u[n]) + k u[n-1]), with timm's own block forward; each block hands its
    shortcut output on (its input for x + F(x) blocks); the first block of a stage is a plain step."""
    name, kwargs = case
    model = lm_model(name, kwargs, k_per_channel=per_channel)
    seen = stage_inputs_and_outputs(model, image())
    assert set(seen) == {path for path, _ in lm_stages(model)}
    for path, stage in lm_stages(model):
        x, out = seen[path]
        expected = reference_stage(stage, x)
        assert_close(out, expected[-1], msg=path)
        for block, y in zip(stage, expected):
            if per_channel and block.lm is not None:  # one k per channel of the block's output
                assert block.lm.k.shape == (y.shape[block.lm_channel_dim],)


@torch.no_grad()
def test_first_block_rules_convnext_and_swin_hand_on_the_downsample_output():
    for name, kwargs, container in (('test_convnext', {}, 'stages'), (*CASES['swin_transformer'][0], 'layers')):
        model = lm_model(name, kwargs)
        inputs = {}
        for i, stage in enumerate(model.get_submodule(container)):
            assert two_step_pattern(stage.blocks) == '-' + 'k' * (len(stage.blocks) - 1)
            stage.downsample.register_forward_hook(lambda m, a, out, i=i: inputs.__setitem__(('ds', i), out))
            stage.blocks.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(('lm', i), a[0]))
        model(image())
        for i in range(len(model.get_submodule(container))):
            assert inputs[('lm', i)] is inputs[('ds', i)]  # the stage's state starts at the downsample output


@pytest.mark.parametrize('case', [REPRESENTATIVES[f] for f in TOKEN_FAMILIES], ids=case_id)
@torch.no_grad()
def test_first_block_rule_vit_hands_on_the_embedded_tokens(case):
    model = lm_model(*case)
    x = image()
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))  # timm's embedding
    assert two_step_pattern(model.blocks) == '-' + 'k' * (len(model.blocks) - 1)
    expected = reference_stage(model.blocks, tokens)  # block 1 mixes in the tokens, block 0's input
    assert_close(model.forward_features(x), model.norm(expected[-1]))


def test_first_block_rule_efficientnet_starts_at_the_third_block():
    for name, kwargs in CASES['efficientnet'][:1] + CASES['mobilenetv3'][:1]:
        with torch.device('meta'):
            model = timm.create_model(f'lm_{name}', **kwargs)
        for _, stage in lm_stages(model):
            skips = [bool(b.has_skip) for b in stage]
            if not skips[0]:  # a stride / width change without a skip: blocks 0 and 1 are plain steps
                assert two_step_pattern(stage) == ('--' + 'k' * len(stage))[:len(stage)]
            else:
                assert two_step_pattern(stage) == '-' + ''.join('k' if s else '-' for s in skips[1:])
    with torch.device('meta'):
        patterns = [two_step_pattern(s) for _, s in lm_stages(timm.create_model('lm_efficientnet_b0'))]
    assert patterns == ['-', '--', '--', '--k', '--k', '--kk', '-']


@torch.no_grad()
def test_first_block_rule_regnet_hands_on_the_projected_shortcut():
    """With k = 1 in the second block, its output is act(f(u1) + s0): s0 = the first block's projection."""
    model = lm_model('regnetx_002', {})
    stage = model.s3
    for block in stage:
        if block.lm is not None:
            block.lm.k.zero_()
    stage[1].lm.k.fill_(1.0)
    x = torch.randn(2, stage[0].conv1.conv.in_channels, 8, 8)
    u1 = stage[0](x)
    f1 = stage[1].conv3(stage[1].se(stage[1].conv2(stage[1].conv1(u1))))
    expected = stage[2:].forward(stage[1].act3(f1 + stage[0].downsample(x)))  # k = 0 from block 2 on
    torch.testing.assert_close(stage(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['lm_resnetv2_18', 'lm_resnetv2_50', 'lm_resnet20_cifar', 'lm_regnetv_040'])
def test_pre_activation_blocks_are_run_from_their_parts(name):
    """ResNetV2 / CIFAR: every block is split (faster than timm's forward + correction on CPUs, and the
    projecting first block needs it); RegNet V: split wherever it has a shortcut (even its identity
    shortcut carries the pre-activated input), its blocks without one run timm's forward."""
    model = build_structure(name)
    blocks = [b for _, stage in lm_stages(model) for b in stage]
    assert any(b.lm is not None for b in blocks)
    assert any(b.downsample is None or isinstance(b.downsample, torch.nn.Identity) for b in blocks)  # identity ones
    for block in blocks:
        assert block.lm_split == (name != 'lm_regnetv_040' or block.downsample is not None)


# ---------------------------------------------------------------- 3. intermediates, features, pruning


def _call_options(model):
    params = inspect.signature(model.forward_intermediates).parameters
    options = [dict(), dict(indices=2), dict(indices=[0, 1], intermediates_only=True),
               dict(indices=1, stop_early=True, intermediates_only=True), dict(norm=True)]
    if 'output_dict' in params:  # the ViT override
        options += [dict(output_fmt='NLC'), dict(output_fmt='NLC', return_prefix_tokens=True),
                    dict(return_prefix_tokens=True, intermediates_only=True), dict(output_dict=True),
                    dict(output_dict=True, return_prefix_tokens=True, intermediates_only=True),
                    dict(indices=[1, 3], stop_early=True, norm=True, output_fmt='NLC')]
    return options


def _assert_same_structure(a, b, msg):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=msg)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), msg
        for key in a:
            _assert_same_structure(a[key], b[key], msg)
    else:
        assert type(a) is type(b) and len(a) == len(b), msg
        for x, y in zip(a, b):
            _assert_same_structure(x, y, msg)


@pytest.mark.parametrize('case', [c for f, cases in CASES.items() for c in cases[:2 if f in TOKEN_FAMILIES else 1]],
                         ids=case_id)
@torch.no_grad()
def test_forward_intermediates_at_zero_k_are_timms(case):
    reference, model = timm_and_lm(*case)
    x = image()
    for options in _call_options(model):
        try:
            expected = reference.forward_intermediates(x, **options)
        except AssertionError:  # not supported by timm's model (e.g. MobileNetV3: stop_early needs intermediates_only)
            with pytest.raises(AssertionError):
                model.forward_intermediates(x, **options)
            continue
        _assert_same_structure(model.forward_intermediates(x, **options), expected, f'{case_id(case)} {options}')


@pytest.mark.parametrize('case', [REPRESENTATIVES[f] for f in TOKEN_FAMILIES] + [CASES['vision_transformer'][1]],
                         ids=case_id)
@torch.no_grad()
def test_vit_forward_intermediates_run_the_recurrence(case):
    model = lm_model(*case)
    prefix = model.num_prefix_tokens
    x = image()
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    expected = reference_stage(model.blocks, tokens)

    final, taps = model.forward_intermediates(x, output_fmt='NLC', return_prefix_tokens=True)
    assert_close(final, model.forward_features(x))
    assert_close(final, model.norm(expected[-1]))
    assert len(taps) == len(model.blocks)
    for (tap, prefix_tap), ref in zip(taps, expected):
        assert_close(tap, ref[:, prefix:])
        assert_close(prefix_tap, ref[:, :prefix])

    maps = model.forward_intermediates(x, intermediates_only=True)  # NCHW
    grid = model.patch_embed.dynamic_feat_size((SIZE, SIZE))
    for tap, ref in zip(maps, expected):
        assert_close(tap, ref[:, prefix:].reshape(2, *grid, -1).permute(0, 3, 1, 2))

    early = model.forward_intermediates(x, indices=[1, 2], stop_early=True, norm=True, output_fmt='NLC',
                                        intermediates_only=True)
    for tap, i in zip(early, (1, 2)):
        assert_close(tap, model.norm(expected[i])[:, prefix:])

    out = model.forward_intermediates(x, indices=2, output_dict=True, return_prefix_tokens=True, output_fmt='NLC')
    assert_close(out['image_features'], model.norm(expected[-1]))
    for tap, prefix_tap, ref in zip(out['image_intermediates'], out['image_intermediates_prefix'], expected[-2:]):
        assert_close(tap, ref[:, prefix:])
        assert_close(prefix_tap, ref[:, :prefix])


@torch.no_grad()
def test_vit_masked_attention_path_runs_the_recurrence():
    """timm's ViT runs its blocks one by one when given an attention mask: the LM override runs the recurrence."""
    reference, model = timm_and_lm(*REPRESENTATIVES['vision_transformer'])
    x = image()
    tokens = 1 + (SIZE // 16) ** 2
    mask = torch.rand(2, 1, tokens, tokens) > 0.3
    mask[..., 0] = True
    torch.testing.assert_close(model.forward_features(x, attn_mask=mask), reference.forward_features(x, attn_mask=mask),
                               rtol=1e-5, atol=1e-5)  # k = 0: timm's masked model
    set_coefficients(model)
    no_mask = torch.ones(2, 1, tokens, tokens, dtype=torch.bool)
    assert_close(model.forward_features(x, attn_mask=no_mask), model.forward_features(x))
    final, taps = model.forward_intermediates(x, attn_mask=no_mask)
    assert_close(final, model.forward_features(x))


@pytest.mark.parametrize('family', FAMILIES)
@torch.no_grad()
def test_intermediates_are_the_stage_outputs_and_pruning_keeps_them(family):
    name, kwargs = _rep(family)
    model = lm_model(name, kwargs)
    x = image()
    final, taps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(taps) == len(model.feature_info)
    seen = stage_inputs_and_outputs(model, x)
    stage_paths = {path for path, _ in lm_stages(model)}
    linked = 0
    for tap, info in zip(taps, model.feature_info):
        for path in (info['module'], info['module'] + '.blocks'):
            if path in stage_paths:  # the tap is an LM stage's output
                torch.testing.assert_close(tap, nchw(seen[path][1], family), msg=path)
                linked += 1
        if family in TOKEN_FAMILIES:
            assert info['module'].startswith('blocks.')
    if family not in TOKEN_FAMILIES:
        assert linked >= 2

    index = len(taps) - 2
    kept = model.prune_intermediate_layers(indices=[index], prune_head=True, prune_norm=True)
    assert list(kept) == [index]
    pruned = model.forward_intermediates(x, indices=[index], intermediates_only=True)
    torch.testing.assert_close(pruned[0], taps[index])


@pytest.mark.parametrize('family', FAMILIES)
@torch.no_grad()
def test_features_only_default_is_timms_and_gives_the_intermediates(family):
    name, kwargs = _rep(family)
    full = lm_model(name, kwargs)
    features = features_of(full, name, kwargs)
    reference = timm.create_model(name, features_only=True, **kwargs)
    assert type(features).__name__ in (type(reference).__name__, f'LM{type(reference).__name__}')  # timm's class
    assert set(features.state_dict()) == set(reference.state_dict()) | set(lm_coefficient_keys(features))
    assert features.feature_info.channels() == reference.feature_info.channels()
    assert features.feature_info.reduction() == reference.feature_info.reduction()
    assert features.feature_info.module_name() == reference.feature_info.module_name()

    x = image()
    taps = full.forward_intermediates(x, intermediates_only=True)
    out = feature_taps(features(x))
    assert len(out) == len(features.feature_info.get_dicts()) == len(feature_taps(reference(x)))
    for got, info in zip(out, features.feature_info.get_dicts()):
        got = nchw(got, family)
        assert got.shape[1] == info['num_chs'] and SIZE // got.shape[-1] == info['reduction']
        torch.testing.assert_close(got, taps[info['index']])


@torch.no_grad()
def test_swin_features_only_taps_every_stage_of_custom_depths():
    """timm's Swin derives its feature taps from ``depths`` (one per stage); so does LM-Swin."""
    name, kwargs = REPRESENTATIVES['swin_transformer']
    kwargs = dict(kwargs, depths=(2, 2), num_heads=(3, 6))
    reference = timm.create_model(name, features_only=True, **kwargs)
    features = timm.create_model(f'lm_{name}', features_only=True, **kwargs)
    assert features.feature_info.channels() == reference.feature_info.channels() == [24, 48]
    assert [t.shape[-1] for t in features(image())] == [24, 48]


def test_hooks_on_lm_blocks_warn_and_hook_features_on_blocks_are_refused():
    """The stage takes each step with lm_step, not block(x): block hooks cannot see u[n+1]. Registering one
    warns (and says what to hook instead); a hook feature extractor tapping blocks (ViT) is refused."""
    name, kwargs = REPRESENTATIVES['vision_transformer']
    model = timm.create_model(f'lm_{name}', **kwargs)
    with pytest.warns(UserWarning, match='hooks on LMViTBlock do not run.*Hook the stage'):
        model.blocks[-1].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="feature_cls='hook' taps blocks of LM stages"):
        timm.create_model(f'lm_{name}', features_only=True, feature_cls='hook', **kwargs)
    seen = []
    model.blocks.register_forward_hook(lambda module, args, out: seen.append(out))  # the stage: no warning
    with torch.no_grad():
        out = model.forward_features(image())
    torch.testing.assert_close(model.norm(seen[0]), out)


@pytest.mark.parametrize('name, options', [('efficientnet_b0', dict(feature_location='expansion', out_indices=(1, 3))),
                                           ('mobilenetv4_hybrid_medium', dict(out_indices=(2, 3, 4)))])
@torch.no_grad()
def test_features_only_options_are_timms_at_zero_k(name, options):
    torch.manual_seed(0)
    reference = liven(timm.create_model(name, features_only=True, **options)).eval()
    features = timm.create_model(f'lm_{name}', features_only=True, **options).eval()
    missing, unexpected = features.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(lm_coefficient_keys(features)) and missing
    zero_lm_coefficients(features)
    x = image()
    expected = reference(x)
    assert len(expected) == len(options['out_indices'])
    for got, want in zip(features(x), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 4. gradient checkpointing


@pytest.mark.parametrize('family', FAMILIES)
def test_grad_checkpointing_same_outputs_and_gradients(family):
    name, kwargs = _rep(family)
    model = lm_model(name, kwargs).train()
    x = image()
    block = next(b for _, s in lm_stages(model) for b in s if b.lm is not None)
    part = next(m for m in block.modules() if m is not block and any(True for _ in m.parameters(recurse=False)))
    calls = []
    part.register_forward_hook(lambda *_: calls.append(1))

    def run(intermediates=False):
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # dropout / drop path draw the same
        out = model.forward_intermediates(x)[1][-1] if intermediates else model(x)
        out.square().mean().backward()
        return out.detach(), grads(model), len(calls)

    # the ViT family runs its own loop over the blocks in forward_intermediates: check that path too
    paths = (False, True) if family in TOKEN_FAMILIES else (False,)
    plain = {intermediates: run(intermediates) for intermediates in paths}
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.modules() if isinstance(s, LMStage))
    for intermediates, (out0, grads0, plain_calls) in plain.items():
        out, ckpt_grads, ckpt_calls = run(intermediates)
        torch.testing.assert_close(out, out0)
        assert any(g is not None for n, g in grads0.items() if '.lm.' in n)
        for n, g in grads0.items():
            if g is None:
                assert ckpt_grads[n] is None, n
            else:
                torch.testing.assert_close(ckpt_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)
        assert ckpt_calls == 2 * plain_calls  # the block really is recomputed in backward


@pytest.mark.parametrize('family', FAMILIES)
def test_blocks_refuse_to_run_one_by_one(family):
    """timm code that runs the blocks of a stage one by one (e.g. ``checkpoint_seq``) fails loudly."""
    name, kwargs = _rep(family)
    model = lm_model(name, kwargs)
    seen = stage_inputs_and_outputs(model, image())
    path, stage = next((p, s) for p, s in lm_stages(model) if any(b.lm is not None for b in s))
    x = seen[path][0]
    block = next(b for b in stage if b.lm is not None)
    with pytest.raises(RuntimeError, match='run it through its LM stage'):
        block(x)
    with pytest.raises(RuntimeError, match='run it through its LM stage'):
        checkpoint_seq(stage, x)


# ---------------------------------------------------------------- 8. stochastic depth


@pytest.mark.parametrize('name, kwargs', [REPRESENTATIVES['convnext'], REPRESENTATIVES['vision_transformer']],
                         ids=['convnext', 'vit'])
def test_stochastic_depth_drops_the_branch_never_the_mix(name, kwargs):
    reference = timm.create_model(name, drop_path_rate=0.2, **kwargs)
    model = lm_model(name, kwargs, drop_path_rate=0.2).train()
    rates = lambda m: [d.drop_prob for d in m.modules() if isinstance(d, DropPath)]
    assert rates(model) and rates(model) == pytest.approx(rates(reference))  # timm's linear rule, same places
    for _, stage in lm_stages(model):
        for block in stage:  # drop every branch of the two-step blocks, keep the first block's
            for attr, _ in list(block.named_children()):
                if attr.startswith('drop_path'):
                    setattr(block, attr, DropPath(1.0 if block.lm is not None else 0.0))

    seen = stage_inputs_and_outputs(model, image())
    for path, stage in lm_stages(model):
        x, out = seen[path]
        u, u_prev = reference_step(stage[0], x, x)
        for block in list(stage)[1:]:  # f dropped: u[n+1] = u[n] + k (u[n-1] - u[n]), the LM mix survives
            u, u_prev = u + block.lm.k.detach() * (u_prev - u), u
        assert_close(out, u, msg=path)
        if len(stage) > 1:
            assert not torch.allclose(out, reference_step(stage[0], x, x)[0])  # the mix moved the state
