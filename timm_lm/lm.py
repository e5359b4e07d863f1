"""The LM two-step mix and the parametrisations of its coefficient k_n.

One LM block computes ``u[n+1] = (1 - k_n) u[n] + k_n u[n-1] + f_n(u[n])``. This module holds the
pieces that are about k_n alone: the user-facing options (validated once, with messages that say
what to pass instead), the ``nn.Module`` that owns one block's k_n, and the mix itself.

Parametrisations:

* free (default): ``k`` is the trainable parameter itself, one scalar per block.
* ``k_per_channel=True``: one k per channel of the block's output, as the reference code's channel
  variant (``MResNetC``).
* ``k_stable=True``: the parameter is ``k_raw`` and ``k = b tanh(k_raw)`` with ``b = 1 - 2^-8``
  (0.99609375), so ``|k| <= b < 1`` in float32, bfloat16 and float16, whatever ``k_raw`` is (``tanh``
  alone rounds to exactly +-1 once ``|k_raw|`` passes ~9 in float32, ~3 in bfloat16, and k = -1 is not
  zero-stable). The recurrence's characteristic polynomial ``(z - 1)(z + k)`` then keeps its roots 1
  and ``-k`` with ``|-k| < 1``: every step stays zero-stable, whatever the optimiser does.

Every coefficient tensor is at most 1-D, so timm's ``create_optimizer_v2`` exempts it from weight
decay exactly as it does norm weights and biases.
"""
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    'LMOptions', 'LMCoefficient', 'StableLMCoefficient', 'create_coefficient', 'lm_mix', 'STABLE_BOUND',
    'DEFAULT_K_INIT',
]

DEFAULT_K_INIT: Tuple[float, float] = (-0.1, 0.0)  # the paper's U[-0.1, 0]


@dataclass(frozen=True)
class LMOptions:
    """The LM model options shared by every family (they travel as ``create_model`` kwargs).

    Attributes:
        lm: False builds the plain network (forward Euler) from the same code, for baselines.
        k_init: (low, high) of the uniform initialisation of k_n, inside (-1, 1). (0, 0) starts
            at the plain network's function, e.g. for fine-tuning from its weights.
        k_per_channel: one k per output channel instead of one per block.
        k_stable: parametrise ``k = b tanh(k_raw)``, ``b = 1 - 2^-8``, to keep every step zero-stable
            (``|k| <= b`` in float32, bfloat16 and float16).
    """
    lm: bool = True
    k_init: Tuple[float, float] = DEFAULT_K_INIT
    k_per_channel: bool = False
    k_stable: bool = False

    @classmethod
    def create(
            cls,
            lm: bool = True,
            k_init: Union[float, Tuple[float, float]] = DEFAULT_K_INIT,
            k_per_channel: bool = False,
            k_stable: bool = False,
    ) -> 'LMOptions':
        """Validate user values; every error is a ValueError naming the option and its range."""
        for name, value in (('lm', lm), ('k_per_channel', k_per_channel), ('k_stable', k_stable)):
            if not isinstance(value, bool):
                raise ValueError(f'{name}={value!r} is not a bool: pass {name}=True or {name}=False')
        k_init = _check_k_init(k_init)
        if k_stable and max(abs(v) for v in k_init) >= STABLE_BOUND:
            raise ValueError(
                f'k_init={k_init!r} with k_stable=True: k_stable keeps |k| <= {STABLE_BOUND} (1 - 2^-8), so pass '
                f'values inside (-{STABLE_BOUND}, {STABLE_BOUND})')
        return cls(lm=lm, k_init=k_init, k_per_channel=k_per_channel, k_stable=k_stable)

    def model_args(self) -> Dict[str, Any]:
        """The options that differ from the defaults, as ``create_model`` kwargs (for config.json)."""
        default = LMOptions()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}


def _check_k_init(k_init: Union[float, Tuple[float, float]]) -> Tuple[float, float]:
    given = k_init
    if isinstance(k_init, Real) and not isinstance(k_init, bool):
        k_init = (k_init, k_init)
    if (not isinstance(k_init, (tuple, list)) or len(k_init) != 2
            or not all(isinstance(v, Real) and not isinstance(v, bool) for v in k_init)):
        raise ValueError(
            f'k_init={given!r} is not a range: pass k_init=(low, high) with -1 < low <= high < 1, '
            f'or one number for a constant initial k')
    low, high = float(k_init[0]), float(k_init[1])
    if not (-1.0 < low < 1.0 and -1.0 < high < 1.0):
        raise ValueError(
            f'k_init={given!r} is outside (-1, 1): the two-step recurrence is zero-stable only for '
            f'-1 < k < 1 at initialisation; pass values such as the default {DEFAULT_K_INIT}')
    if low > high:
        raise ValueError(f'k_init={given!r} is reversed: pass (low, high) with low <= high, e.g. ({high}, {low})')
    return low, high


# The bound of k_stable: the largest number below 1 that bfloat16 represents (1 - 2^-8 = 0.99609375). It is
# exactly representable in float16 and float32 too, and rounding is monotone, so |k| <= STABLE_BOUND < 1
# holds after any cast between these dtypes, whatever k_raw is.
STABLE_BOUND = 1.0 - 2.0 ** -8


class LMCoefficient(nn.Module):
    """The trainable k_n of one LM block, stored as is (parameter ``k``).

    Args:
        num_channels: channels of the block's output (used when ``per_channel``).
        k_init: (low, high) of the uniform initialisation.
        per_channel: one k per channel instead of one per block.
        channel_dim: where the channels are in the block's activations: 1 for NCHW feature maps,
            -1 for token (NLC) or NHWC layouts.
    """
    param_name = 'k'

    def __init__(
            self,
            num_channels: int,
            k_init: Tuple[float, float] = DEFAULT_K_INIT,
            per_channel: bool = False,
            channel_dim: int = 1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if channel_dim not in (1, -1):
            raise ValueError(f'channel_dim={channel_dim!r}: pass 1 (NCHW) or -1 (channels last)')
        self.per_channel = per_channel
        self.k_init = k_init
        self.channel_dim = channel_dim
        # the shape that broadcasts k over one activation: (C, 1, 1) for NCHW, (C,) for channels last
        self.broadcast_shape: List[int] = [-1, 1, 1] if per_channel and channel_dim == 1 else [-1]
        shape = (num_channels,) if per_channel else ()
        self.register_parameter(self.param_name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.k.uniform_(*self.k_init)

    def _k(self, dtype: torch.dtype) -> torch.Tensor:
        return self.k.to(dtype)

    def value(self) -> torch.Tensor:
        """k_n as a detached float tensor (0-D, or 1-D when per channel), for reports."""
        return self._k(torch.float32).detach()

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        """k_n in the dtype of ``like``, shaped to broadcast over it."""
        k = self._k(like.dtype)
        if self.per_channel:
            k = k.view(self.broadcast_shape)
        return k

    def extra_repr(self) -> str:
        return f'per_channel={self.per_channel}, k_init={self.k_init}, channel_dim={self.channel_dim}'

    def _from_other_parametrisation(self, value: torch.Tensor) -> Optional[torch.Tensor]:
        """This parametrisation's parameter for the other one's stored value (k_raw -> k here)."""
        return STABLE_BOUND * torch.tanh(value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint of the other parametrisation holds the same k_n, so the same function: convert it,
        # so that scripts without --model-kwargs (validate.py, onnx_export.py) load k_stable checkpoints.
        own = prefix + self.param_name
        other = prefix + ('k' if self.param_name == 'k_raw' else 'k_raw')
        if own not in state_dict and other in state_dict:
            converted = self._from_other_parametrisation(state_dict[other])
            if converted is None:
                error_msgs.append(f'{other}: k_n outside [-{STABLE_BOUND}, {STABLE_BOUND}] cannot be loaded into a '
                                  f'k_stable=True model (its bound)')
            else:
                del state_dict[other]
                state_dict[own] = converted
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class StableLMCoefficient(LMCoefficient):
    """k_n = b tanh(k_raw) with b = ``STABLE_BOUND`` = 1 - 2^-8: |k_n| <= b < 1 in float32, bfloat16 and float16.

    ``tanh`` alone rounds to exactly +-1 once |k_raw| passes ~9 in float32 (~3 in bfloat16), and k = -1
    is not zero-stable; the factor b keeps the bound after rounding to any of these dtypes, smoothly
    (no clamp, so no gradient is cut). The parameter has its own name (``k_raw``): what is stored
    differs from the free parametrisation's ``k``. Loading a checkpoint of one parametrisation into
    the other converts the value (same k_n).
    """
    param_name = 'k_raw'

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.k_raw.copy_(_stable_k_raw(self.k_raw.uniform_(*self.k_init)))

    def _k(self, dtype: torch.dtype) -> torch.Tensor:
        return (STABLE_BOUND * torch.tanh(self.k_raw)).to(dtype)

    def _from_other_parametrisation(self, value: torch.Tensor) -> Optional[torch.Tensor]:
        # every k this parametrisation computes, +-b included (what it gives at large |k_raw|), loads back
        return _stable_k_raw(value) if bool((value.abs() <= STABLE_BOUND).all()) else None


def _stable_k_raw(k: torch.Tensor) -> torch.Tensor:
    """k_raw with ``b tanh(k_raw) = k`` for |k| <= b, always finite.

    k = +-b (a k_init close to b rounds to b in the parameter's dtype; a checkpoint at the bound) maps to
    k_raw = +-20, where tanh rounds to exactly +-1 in every float dtype, so that k is b again; atanh would
    give +-inf. Computed in at least float32 (atanh in bfloat16 is coarse).
    """
    r = k.to(torch.promote_types(k.dtype, torch.float32)) / STABLE_BOUND
    return torch.where(r.abs() < 1, r.atanh(), r.sign() * 20.0).to(k.dtype)


def create_coefficient(
        options: LMOptions,
        num_channels: int,
        channel_dim: int = 1,
        device=None,
        dtype=None,
) -> Optional[LMCoefficient]:
    """The coefficient module for one two-step block, or None when ``options.lm`` is False."""
    if not options.lm:
        return None
    cls = StableLMCoefficient if options.k_stable else LMCoefficient
    return cls(num_channels, options.k_init, per_channel=options.k_per_channel, channel_dim=channel_dim,
               device=device, dtype=dtype)


def lm_mix(
        f: torch.Tensor,
        u: torch.Tensor,
        u_prev: torch.Tensor,
        k: torch.Tensor,
        f_includes_u: bool = False,
) -> torch.Tensor:
    """The LM step from a block's parts: ``f + (1 - k) u + k u_prev``.

    Two forms, one formula ``f + (c - k) u + k u_prev``:

    * ``f_includes_u=False`` (c = 1): ``f`` is the residual branch and ``u`` the shortcut, mixed before a
      post-activation block's final activation;
    * ``f_includes_u=True`` (c = 0): ``f`` is the whole block's output ``u + F(u)``, so the step is
      ``block(u) + k (u_prev - u)``: timm's own forward, untouched, plus the correction.

    At k = 0 both are exactly the block. Where it is safe the result is computed in place in ``f`` (a
    fresh activation that nothing else holds): on CPUs a new activation-sized buffer costs more than the
    arithmetic. In eager training ``_LMMixBackward`` makes only the two scaled gradient copies the
    inputs need (dk = <grad, u_prev - u> is read from the first of them before it is filled). Under
    torch.compile, torch.func transforms, forward-mode AD and fx tracing the out-of-place expression
    ``f + c u + k (u_prev - u)`` is used: the compiler fuses it, and the transforms differentiate it
    themselves. Under torch.fx tracing the mix is one node calling this function, so a traced model
    (timm's fx feature extraction, ``torch.fx.symbolic_trace``) runs it as the eager model does, bit
    for bit.
    """
    if not torch.jit.is_scripting() and _is_fx_proxy(f, u, u_prev, k):
        return _fx_mix_node(f, u, u_prev, k, f_includes_u)
    c = 0.0 if f_includes_u else 1.0
    if torch.jit.is_scripting():
        return _mix_in_place(f, u, u_prev, k, c)
    if _is_plain_autograd(f, u, u_prev, k):
        if f.requires_grad or u.requires_grad or u_prev.requires_grad or k.requires_grad:
            if f._base is None:  # in place on a view inside a custom Function is not allowed
                return _LMMixBackward.apply(f, u, u_prev, k, c)
            return _mix_out_of_place(f, u, u_prev, k, c)
        return _mix_in_place(f, u, u_prev, k, c)
    return _mix_out_of_place(f, u, u_prev, k, c)


def _mix_in_place(f: torch.Tensor, u: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor, c: float) -> torch.Tensor:
    return f.addcmul_(c - k, u).addcmul_(k, u_prev)


def _mix_out_of_place(f: torch.Tensor, u: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor,
                      c: float) -> torch.Tensor:
    # k (u_prev - u): autograd's dk is then <grad, u_prev - u>, accurate for small steps (see _LMMixBackward)
    return torch.addcmul(f if c == 0.0 else f + u, k, u_prev - u)


@torch.jit.unused
def _is_fx_proxy(f: torch.Tensor, u: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor) -> bool:
    return any(isinstance(v, torch.fx.Proxy) for v in (f, u, u_prev, k))


@torch.jit.unused
def _fx_mix_node(f: torch.Tensor, u: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor,
                 f_includes_u: bool) -> torch.Tensor:
    """Record ``lm_mix`` as a single call in the graph being traced (what ``torch.fx.wrap`` does for a
    function called by its global name; here the callers import it into their own modules)."""
    tracer = next(v.tracer for v in (f, u, u_prev, k) if isinstance(v, torch.fx.Proxy))
    return tracer.create_proxy('call_function', lm_mix, (f, u, u_prev, k), {'f_includes_u': f_includes_u})


@torch.jit.unused
def _is_plain_autograd(*tensors) -> bool:
    """Ordinary eager tensors: no compiler, tracer, torch.func transform or forward-mode AD at work."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return False
    return all(type(t) is torch.Tensor or type(t) is nn.Parameter for t in tensors)


_is_legacy_batched = getattr(torch._C._functorch, 'is_legacy_batchedtensor', lambda t: False)


def _is_batched(t: torch.Tensor) -> bool:
    """``t`` is seen through vmap (torch.func's, or the legacy one of ``is_grads_batched``)."""
    return torch._C._are_functorch_transforms_active() or _is_legacy_batched(t)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) without writing a product tensor, when both share a dense layout.

    The backward itself can run under vmap (``torch.autograd.grad(..., is_grads_batched=True)``,
    ``torch.autograd.functional.jacobian(..., vectorize=True)`` and ``hessian``, which use the legacy
    vmap, or ``torch.func.vmap`` around ``autograd.grad``): there ``a`` is batched, vmap refuses layout
    queries other than contiguous, and the plain expression is what vmap knows how to batch.
    """
    if _is_batched(a) or _is_batched(b):
        return (a * b).sum()
    if a.dtype in (torch.float32, torch.float64) and a.dtype == b.dtype:
        if a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.reshape(-1), b.reshape(-1))
        if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) \
                and b.is_contiguous(memory_format=torch.channels_last):
            return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    return (a * b).sum()


class _LMMixBackward(torch.autograd.Function):
    """``lm_mix`` for eager training: in-place forward, and a backward written for the mix.

    Used only under plain autograd (``lm_mix`` steps aside under torch.func transforms and forward-mode
    AD). The backward is made of differentiable torch ops, so double backward works.
    """

    @staticmethod
    def forward(ctx, f, u, u_prev, k, c):
        ctx.save_for_backward(u, u_prev, k)  # both are held for the blocks' own backward already
        ctx.c = c
        ctx.mark_dirty(f)
        return _mix_in_place(f, u, u_prev, k, c)

    @staticmethod
    def backward(ctx, grad):
        u, u_prev, k = ctx.saved_tensors
        _, need_u, need_prev, need_k, _ = ctx.needs_input_grad
        c = ctx.c
        grad_u = grad_k = None
        if need_k:
            # d/dk <grad, f + (c - k) u + k u_prev> = <grad, u_prev - u>, taken from the difference: where the
            # step is small (u_prev ~ u: ConvNeXt's layer scale starts at 1e-6) the difference is exact in
            # floating point, while <grad, u_prev> - <grad, u> cancels down to rounding noise.
            diff = u_prev - u
            grad_k = _dot(grad, diff) if k.dim() == 0 else (grad * diff).sum_to_size(k.shape)
            if need_u and not torch.is_grad_enabled() and not _is_batched(grad):
                grad_u = torch.mul(grad, c - k, out=diff)  # reuse the difference's buffer: no new activation
        if need_u and grad_u is None:  # (double backward and vmap need the differentiable, out-of-place op)
            grad_u = grad * (c - k)
        grad_prev = grad * k if need_prev else None
        return grad, grad_u, grad_prev, grad_k, None
