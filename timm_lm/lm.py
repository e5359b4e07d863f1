"""The LM two-step mix and the parametrisations of its coefficient k_n.

One LM block computes ``u[n+1] = (1 - k_n) u[n] + k_n u[n-1] + f_n(u[n])``. This module holds the
pieces that are about k_n alone: the user-facing options (validated once, with messages that say
what to pass instead) and the ``nn.Module`` that owns one block's k_n.

Parametrisations:

* free (default): ``k`` is the trainable parameter itself, one scalar per block.
* ``k_per_channel=True``: one k per channel of the block's output, as the reference code's channel
  variant (``MResNetC``).
* ``k_stable=True``: the parameter is ``k_raw`` and ``k = tanh(k_raw)``, so ``|k| < 1`` throughout
  training. The recurrence's characteristic polynomial ``(z - 1)(z + k)`` then has roots 1 and
  ``-k`` inside the unit disc: the step stays zero-stable whatever the optimiser does.

Every coefficient tensor is at most 1-D, so timm's ``create_optimizer_v2`` exempts it from weight
decay exactly as it does norm weights and biases.
"""
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['LMOptions', 'LMCoefficient', 'StableLMCoefficient', 'create_coefficient', 'lm_mix', 'DEFAULT_K_INIT']

DEFAULT_K_INIT: Tuple[float, float] = (-0.1, 0.0)  # the paper's U[-0.1, 0]


@dataclass(frozen=True)
class LMOptions:
    """The LM model options shared by every family (they travel as ``create_model`` kwargs).

    Attributes:
        lm: False builds the plain ResNet (forward Euler) from the same code, for baselines.
        k_init: (low, high) of the uniform initialisation of k_n, inside (-1, 1). (0, 0) starts
            at the plain ResNet's function, e.g. for fine-tuning from ResNet weights.
        k_per_channel: one k per output channel instead of one per block.
        k_stable: parametrise ``k = tanh(k_raw)`` to keep every step zero-stable.
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
        return cls(lm=lm, k_init=_check_k_init(k_init), k_per_channel=k_per_channel, k_stable=k_stable)

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


class LMCoefficient(nn.Module):
    """The trainable k_n of one LM block, stored as is (parameter ``k``)."""
    param_name = 'k'

    def __init__(
            self,
            num_channels: int,
            k_init: Tuple[float, float] = DEFAULT_K_INIT,
            per_channel: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.per_channel = per_channel
        self.k_init = k_init
        shape = (num_channels,) if per_channel else ()
        self.register_parameter(self.param_name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.k.uniform_(*self.k_init)

    def _k(self) -> torch.Tensor:
        return self.k

    def value(self) -> torch.Tensor:
        """k_n as a detached float tensor (0-D, or 1-D when per channel), for reports."""
        return self._k().detach().float()

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        """k_n in the dtype of ``like`` and shaped to broadcast over its (N, C, H, W)."""
        k = self._k().to(like.dtype)
        if self.per_channel:
            k = k.view(-1, 1, 1)
        return k

    def extra_repr(self) -> str:
        return f'per_channel={self.per_channel}, k_init={self.k_init}'

    def _from_other_parametrisation(self, value: torch.Tensor) -> Optional[torch.Tensor]:
        """This parametrisation's parameter for the other one's stored value (k_raw -> k here)."""
        return torch.tanh(value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint of the other parametrisation holds the same k_n, so the same function: convert it,
        # so that scripts without --model-kwargs (validate.py, onnx_export.py) load k_stable checkpoints.
        own = prefix + self.param_name
        other = prefix + ('k' if self.param_name == 'k_raw' else 'k_raw')
        if own not in state_dict and other in state_dict:
            converted = self._from_other_parametrisation(state_dict[other])
            if converted is None:
                error_msgs.append(f'{other}: k_n outside (-1, 1) cannot be loaded into a k_stable=True model')
            else:
                del state_dict[other]
                state_dict[own] = converted
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class StableLMCoefficient(LMCoefficient):
    """k_n = tanh(k_raw): always inside (-1, 1), so the step is zero-stable throughout training.

    The parameter has its own name (``k_raw``): what is stored differs from the free parametrisation's
    ``k``. Loading a checkpoint of one parametrisation into the other converts the value (same k_n).
    """
    param_name = 'k_raw'

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.k_raw.uniform_(*self.k_init).atanh_()

    def _k(self) -> torch.Tensor:
        return torch.tanh(self.k_raw)

    def _from_other_parametrisation(self, value: torch.Tensor) -> Optional[torch.Tensor]:
        return torch.atanh(value) if bool((value.abs() < 1).all()) else None


def lm_mix(f: torch.Tensor, shortcut: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``f + (1 - k) shortcut + k u_prev``, computed in place in ``f`` (the block's fresh branch output).

    This replaces the ResNet's ``f += shortcut``. Written as two in-place ``addcmul_`` it makes no new
    tensor: on CPUs a fresh activation-sized buffer (as ``f + lerp(...)`` makes) costs more than the
    arithmetic, through page faults. In eager training, autograd's generic backward of that expression
    would again make several activation-sized temporaries; ``_LMMixBackward`` makes only the two scaled
    copies of the gradient that the two inputs need, and gets dk from dot products that only read.
    Under torch.compile the expression is fused into one kernel by the compiler.
    """
    if not torch.jit.is_scripting() and _wants_custom_backward(f, shortcut, u_prev, k):
        return _mix_with_custom_backward(f, shortcut, u_prev, k)
    return _mix_in_place(f, shortcut, u_prev, k)


def _mix_in_place(f: torch.Tensor, shortcut: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return f.addcmul_(1 - k, shortcut).addcmul_(k, u_prev)


@torch.jit.unused
def _wants_custom_backward(f: torch.Tensor, shortcut: torch.Tensor, u_prev: torch.Tensor, k: torch.Tensor) -> bool:
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    tensors = (f, shortcut, u_prev, k)  # torch.fx tracing passes Proxies: they take the plain expression
    return all(isinstance(t, torch.Tensor) for t in tensors) and any(t.requires_grad for t in tensors)


@torch.jit.unused
def _mix_with_custom_backward(f, shortcut, u_prev, k):
    return _LMMixBackward.apply(f, shortcut, u_prev, k)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) without writing a product tensor, when both share a dense layout."""
    if a.dim() == 4 and a.dtype in (torch.float32, torch.float64):
        for fmt in (torch.contiguous_format, torch.channels_last):
            if a.is_contiguous(memory_format=fmt) and b.is_contiguous(memory_format=fmt):
                if fmt is torch.channels_last:
                    a, b = a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)
                return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()


class _LMMixBackward(torch.autograd.Function):
    """``lm_mix`` for eager training: in-place forward, and a backward written for the mix."""

    @staticmethod
    def forward(ctx, f, s, p, k):
        ctx.save_for_backward(s, p, k)  # s and p are held for the blocks' own backward already: no extra memory
        ctx.mark_dirty(f)
        return _mix_in_place(f, s, p, k)

    @staticmethod
    def backward(ctx, grad):
        # differentiable torch ops only, so double backward (create_graph=True) works too
        s, p, k = ctx.saved_tensors
        _, need_s, need_p, need_k = ctx.needs_input_grad
        grad_s = grad * (1 - k) if need_s else None
        grad_p = grad * k if need_p else None
        grad_k = None
        if need_k:
            if k.dim() == 0:  # d/dk of <grad, f + (1 - k) s + k p> = <grad, p> - <grad, s>
                grad_k = _dot(grad, p) - _dot(grad, s)
            else:  # one k per channel, broadcast as (C, 1, 1)
                grad_k = (grad * (p - s)).sum(dim=(0, 2, 3)).view_as(k)
        return grad, grad_s, grad_p, grad_k


def create_coefficient(
        options: LMOptions,
        num_channels: int,
        device=None,
        dtype=None,
) -> Optional[LMCoefficient]:
    """The coefficient module for one two-step block, or None when ``options.lm`` is False."""
    if not options.lm:
        return None
    cls = StableLMCoefficient if options.k_stable else LMCoefficient
    return cls(num_channels, options.k_init, per_channel=options.k_per_channel, device=device, dtype=dtype)
