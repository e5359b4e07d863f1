"""Shared by the family tests (tests/test_families*.py): small models of every LM family and the LM rule
written out with timm's own blocks.

Every model runs at ``SIZE`` x ``SIZE`` (kwargs shrink the transformers), so a family costs seconds on a CPU.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import regnet, resnet, resnetv2

from timm_lm.pretrained import lm_coefficient_keys, zero_lm_coefficients
from timm_lm.stage import LMStage, lm_stages

SIZE = 64
_SMALL_VIT = dict(img_size=SIZE, embed_dim=64, depth=4, num_heads=2)
_SMALL_SWIN = dict(img_size=SIZE, window_size=2, embed_dim=24)

# timm module -> [(timm model, kwargs)]: several models of each family (block types, V1/V2, tokens, stems);
# the first one of each is the family's representative in the per-family API tests
CASES: Dict[str, List[Tuple[str, dict]]] = {
    'convnext': [('test_convnext', {}), ('convnextv2_atto', {}), ('convnext_atto', dict(output_stride=16))],
    'vision_transformer': [
        ('test_vit', dict(img_size=SIZE)),
        ('test_vit3', dict(img_size=SIZE)),  # register token, no class token, attention pooling
        ('vit_tiny_patch16_224', dict(img_size=SIZE)),
        ('vit_base_patch16_rpn_224', _SMALL_VIT),  # ResPostBlock
        ('vit_small_patch16_18x2_224', _SMALL_VIT),  # ParallelThingsBlock
        ('vit_pwee_patch16_reg1_gap_256', _SMALL_VIT),  # ParallelScalingBlock
        # DiffParallelScalingBlock, a block type of newer timm releases (not in 1.0.22)
        *[('vit_dpwee_patch16_reg1_gap_256', _SMALL_VIT)] * timm.is_model('vit_dpwee_patch16_reg1_gap_256'),
    ],
    'deit': [
        ('deit_tiny_distilled_patch16_224', dict(img_size=SIZE)),
        ('deit_tiny_patch16_224', dict(img_size=SIZE)),
        ('deit3_small_patch16_224', dict(img_size=SIZE, depth=4)),
    ],
    'vision_transformer_hybrid': [
        ('vit_tiny_r_s16_p8_224', dict(img_size=SIZE)),
        ('vit_small_r26_s32_224', dict(img_size=SIZE, depth=3)),
    ],
    'swin_transformer': [('swin_tiny_patch4_window7_224', _SMALL_SWIN), ('swin_s3_tiny_224', _SMALL_SWIN)],
    'efficientnet': [('efficientnet_b0', {}), ('efficientnetv2_rw_t', {}), ('mixnet_s', {}),
                     ('efficientnet_cc_b0_4e', {})],
    'mobilenetv3': [('mobilenetv3_small_050', {}), ('mobilenetv4_conv_small', {}),
                    ('mobilenetv4_hybrid_medium', {}), ('fbnetv3_b', {})],
    'regnet': [('regnetx_002', {}), ('regnety_002', {}), ('regnetv_040', {})],
    'resnetv2': [('resnetv2_18', {}), ('resnetv2_50', dict(preact=False))],
}
ALL_CASES = [case for cases in CASES.values() for case in cases]
REPRESENTATIVES = {family: cases[0] for family, cases in CASES.items()}
TOKEN_FAMILIES = ('vision_transformer', 'deit', 'vision_transformer_hybrid')


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread while a family test runs (import this fixture into the test module).

    The models are small (64 x 64, batch 2): a second thread saves little, and on a shared 2-core machine
    (or with pytest-xdist) its barriers stall behind other processes, e.g. 25 ms -> 1-2.5 s a forward.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def case_id(case: Tuple[str, dict]) -> str:
    name, kwargs = case
    return name + ''.join(f'-{k}{v}' for k, v in kwargs.items() if k not in ('img_size', 'window_size', 'embed_dim',
                                                                              'depth', 'num_heads'))


def image(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@torch.no_grad()
def liven(model: nn.Module) -> nn.Module:
    """Give near-zero constant weights (layer scale at 1e-5 / 1e-6, zero-initialised norms, GRN) values in
    [0.5, 1]: at timm's initialisation such blocks barely touch the state, and a k = 0 comparison or a
    recurrence check would pass whatever the blocks computed."""
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if p.dim() == 1 and p.numel() > 1 and name.rsplit('.', 1)[-1] in ('gamma', 'weight') \
                and float(p.abs().max()) < 1e-2:
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
    return model


def coefficient_values(n: int, index: int) -> torch.Tensor:
    """Distinct, large coefficients (n of them, for block ``index``): any mistake in the rule shows."""
    if n == 1:
        return torch.tensor([(-0.5, 0.3, 0.6, -0.2, 0.45)[index % 5]])
    return torch.linspace(-0.6, 0.7, n).roll(index) * (-1) ** index


@torch.no_grad()
def set_coefficients(model: nn.Module) -> None:
    for i, key in enumerate(lm_coefficient_keys(model)):
        k = model.get_parameter(key)
        k.copy_(coefficient_values(k.numel(), i).reshape(k.shape))


def timm_and_lm(name: str, kwargs: dict, **lm_kwargs) -> Tuple[nn.Module, nn.Module]:
    """timm's model (livened) and the LM model with the same weights; the LM model's k_n are 0."""
    torch.manual_seed(0)
    reference = liven(timm.create_model(name, **kwargs)).eval()
    model = timm.create_model(f'lm_{name}', **kwargs, **lm_kwargs).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and set(missing) == set(lm_coefficient_keys(model))
    zero_lm_coefficients(model)
    return reference, model


def build_structure(name: str, **kwargs) -> nn.Module:
    """``name`` without real weights: on the meta device, or on the CPU where timm cannot build the model
    there (timm 1.0.22's RegNet calls torch.unique while it builds, which has no meta kernel)."""
    try:
        with torch.device('meta'):
            return timm.create_model(name, **kwargs)
    except NotImplementedError:
        return timm.create_model(name, **kwargs)


def lm_model(name: str, kwargs: dict, **options) -> nn.Module:
    """``lm_<name>`` (``kwargs`` and further ``options``) with livened weights and distinct non-zero k_n, in eval."""
    torch.manual_seed(0)
    model = liven(timm.create_model(f'lm_{name}', **kwargs, **options)).eval()
    set_coefficients(model)
    return model


# ---- the LM rule, written out with timm's own block code -----------------------------------------------

_POST_ACTIVATION = {resnet.BasicBlock: 'act2', resnet.Bottleneck: 'act3', resnetv2.Bottleneck: 'act3',
                    regnet.Bottleneck: 'act3'}
_CHANNELS_LAST_MODULES = ('timm.models.vision_transformer', 'timm.models.swin_transformer')


def timm_class(block: nn.Module) -> type:
    return next(c for c in type(block).__mro__ if c.__module__.startswith('timm.'))


def _shortcut(block: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """The block's shortcut output: what the documented rule hands on as the next block's u[n-1]."""
    cls = timm_class(block)
    if cls in (resnetv2.PreActBasic, resnetv2.PreActBottleneck):
        return u if block.downsample is None else block.downsample(block.norm1(u))  # reads the pre-activated input
    if cls is regnet.PreBottleneck:  # even its identity shortcut carries norm1(u)
        return u if block.downsample is None else block.downsample(block.norm1(u))
    if cls in _POST_ACTIVATION:
        return u if block.downsample is None else block.downsample(u)
    return u  # x + F(x) blocks (and blocks without a skip, whose successor has no k)


def _k(block: nn.Module, like: torch.Tensor) -> torch.Tensor:
    k = block.lm.value().to(like.dtype)
    if k.dim() and timm_class(block).__module__ not in _CHANNELS_LAST_MODULES:
        k = k.view(-1, *([1] * (like.dim() - 2)))  # NCHW
    return k


def timm_copy(block: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """A copy of an LM block as timm's own class (its forward is timm's code), and its final activation.

    The activation of a post-activation block is taken out of the copy, whose forward then returns
    f(u) + s(u); a pre-activation block's forward already does (its "activation" is the identity).
    """
    plain = copy.deepcopy(block)
    plain.__class__ = timm_class(block)
    del plain.lm
    post = nn.Identity()
    attr = _POST_ACTIVATION.get(type(plain))
    if attr:
        post = getattr(plain, attr)
        setattr(plain, attr, nn.Identity())
    return plain, post


def reference_step(block: nn.Module, u: torch.Tensor, u_prev: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``post(f(u) + (1 - k) s(u) + k u[n-1])`` from timm's own forward: (u[n+1], the next block's u[n-1])."""
    plain, post = timm_copy(block)
    s = _shortcut(block, u)
    y = plain(u)  # f(u) + s(u), timm's code
    if block.lm is not None:
        y = y + _k(block, y) * (u_prev - s)
    return post(y), s


def reference_stage(stage: LMStage, x: torch.Tensor) -> List[torch.Tensor]:
    """Every block's output u[n+1] of an LM stage, by the documented rule; the first block is a plain step."""
    u, u_prev, outputs = x, x, []
    for block in stage:
        u, u_prev = reference_step(block, u, u_prev)
        outputs.append(u)
    return outputs


def stage_inputs_and_outputs(model: nn.Module, x: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{LM stage path: (its input, its output)} in one forward of the model."""
    seen, handles = {}, []
    for path, stage in lm_stages(model):
        handles.append(stage.register_forward_hook(
            lambda m, args, out, path=path: seen.__setitem__(path, (args[0], out))))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def two_step_pattern(stage: nn.Module) -> str:
    """'-' for a plain step, 'k' for a two-step block, in stage order (e.g. '--kk')."""
    return ''.join('-' if block.lm is None else 'k' for block in stage)


def feature_taps(out) -> Sequence[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)


def nchw(t: torch.Tensor, family: str) -> torch.Tensor:
    """A tap of a channels-last family (Swin's NHWC maps) as NCHW."""
    return t.permute(0, 3, 1, 2) if family == 'swin_transformer' else t


def tokens_to_nchw(t: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, prefix + H*W, C) tokens -> the (B, C, H, W) map of ViT's NCHW intermediates."""
    t = t[:, model.num_prefix_tokens:]
    side = int(round(t.shape[1] ** 0.5))
    return t.reshape(t.shape[0], side, side, -1).permute(0, 3, 1, 2)


def grads(model: nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg=None) -> None:
    """Equal up to float32 rounding at the tensors' scale (livened, LM-mixed states reach the hundreds)."""
    scale = max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5 * scale, msg=msg)


def safetensors_writer(state_dict: Dict[str, torch.Tensor]):
    """A writer for the ``hf_cache`` fixture: the state dict as model.safetensors."""
    from safetensors.torch import save_file
    return lambda path: save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


@torch.no_grad()
def features_of(full: nn.Module, name: str, kwargs: dict, **feature_kwargs) -> nn.Module:
    """The ``features_only`` model of ``lm_<name>`` with the weights and k_n of ``full`` (same LM options),
    whatever the feature class calls them (flattened stages, ``model.``, ``graph_module.``)."""
    options = dict(full.lm_options.model_args())
    features = timm.create_model(f'lm_{name}', features_only=True, **kwargs, **options, **feature_kwargs).eval()
    source = full.state_dict()
    state = features.state_dict()
    for key in state:
        if '_tensor_constant' in key:  # a constant that fx recorded while tracing, not a weight
            continue
        name_ = key.split('.', 1)[1] if key.startswith(('model.', 'graph_module.')) else key
        if name_ not in source:  # flatten_sequential: 'stages_0.blocks...' is 'stages.0.blocks...'
            head, rest = name_.split('.', 1)
            name_ = head[::-1].replace('_', '.', 1)[::-1] + '.' + rest
        state[key] = source[name_]
    features.load_state_dict(state)
    return features
