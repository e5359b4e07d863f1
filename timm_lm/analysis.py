"""Reading an LM model's coefficients k_n, and what they mean numerically.

For each two-step block ``u[n+1] = (1 - k) u[n] + k u[n-1] + f(u[n])``:

* modified equation (the paper's explanation of why LM nets need fewer layers): with step dt the
  scheme approximates ``(1 + k) u' + (1 - k) (dt / 2) u'' = f(u)``, a damped second-order (momentum)
  system; the coefficients are ``1 + k`` on u' and ``(1 - k) / 2`` on dt u'';
* zero-stability: the characteristic polynomial ``(z - 1)(z + k)`` has roots 1 and ``-k``; the step
  is zero-stable iff ``-1 < k <= 1`` (k = -1 gives a double root at 1).

Per-channel coefficients are summarised by their mean, min and max; a block is zero-stable only if
every channel is.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .stage import lm_stages

__all__ = [
    'BlockCoefficient', 'lm_coefficients', 'format_coefficients', 'summarize_coefficients', 'plot_coefficients',
]


@dataclass(frozen=True)
class BlockCoefficient:
    """The k_n of one two-step block.

    Attributes:
        stage: index of the LM stage in the model (0-based, in forward order).
        stage_path: module path of the stage (``layer2``, ``stages.1.blocks``).
        block: index of the block inside its stage (the first block of a stage has no k).
        depth: index of the block among all blocks of the model (0-based), for plots against depth.
        k: float tensor, 0-D (one k per block) or 1-D (one per channel).
    """
    stage: int
    stage_path: str
    block: int
    depth: int
    k: torch.Tensor

    @property
    def name(self) -> str:
        return f'{self.stage_path}.{self.block}'

    @property
    def k_mean(self) -> float:
        return float(self.k.mean())

    @property
    def u_prime_coefficient(self) -> torch.Tensor:
        """1 + k: the coefficient of u' in the modified equation."""
        return 1 + self.k

    @property
    def u_second_coefficient(self) -> torch.Tensor:
        """(1 - k) / 2: the coefficient of dt u'' in the modified equation."""
        return (1 - self.k) / 2

    @property
    def zero_stable(self) -> bool:
        """-1 < k <= 1 (every channel): the roots 1 and -k of (z - 1)(z + k) satisfy the root condition."""
        return bool(((self.k > -1) & (self.k <= 1)).all())


def lm_coefficients(model: nn.Module) -> List[BlockCoefficient]:
    """Every k_n of an LM model (also a features_only one), in forward order.

    Raises ValueError for a model without LM stages, so that a plain timm model is not reported as an
    LM model with no coefficients.
    """
    stages = list(lm_stages(model))
    if not stages:
        raise ValueError(f'{type(model).__name__} has no LM stages: pass a model created from a timm_lm name (lm_*)')
    rows, depth = [], 0
    for s, (path, stage) in enumerate(stages):
        for b, block in enumerate(stage):
            if block.lm is not None:
                rows.append(BlockCoefficient(stage=s, stage_path=path, block=b, depth=depth, k=block.lm.value()))
            depth += 1
    return rows


def _stat(t: torch.Tensor) -> str:
    return f'{float(t.mean()):+.4f}' if t.numel() == 1 else f'{float(t.mean()):+.4f} [{float(t.min()):+.4f}, {float(t.max()):+.4f}]'


def format_coefficients(model_or_rows, markdown: bool = False) -> str:
    """A table of k_n per stage and block with the modified-equation coefficients and stability.

    Columns: stage, block, module, k, 1 + k (on u'), (1 - k)/2 (on dt u''), the roots of the
    characteristic polynomial (1 and -k), zero-stable. Per-channel values read ``mean [min, max]``.
    """
    rows = model_or_rows if isinstance(model_or_rows, list) else lm_coefficients(model_or_rows)
    if not rows:
        return 'no LM coefficients (built with lm=False, or every stage has a single block)'
    header = ['stage', 'block', 'module', 'k', "1+k (u')", "(1-k)/2 (dt u'')", 'roots', 'zero-stable']
    body = [[
        str(r.stage), str(r.block), r.name, _stat(r.k), _stat(r.u_prime_coefficient), _stat(r.u_second_coefficient),
        f'1, {_stat(-r.k)}', 'yes' if r.zero_stable else 'NO',
    ] for r in rows]
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        lines += ['| ' + ' | '.join(cells) + ' |' for cells in body]
        return '\n'.join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return '\n'.join([fmt(header), fmt(['-' * w for w in widths])] + [fmt(cells) for cells in body])


def summarize_coefficients(model_or_rows) -> str:
    """One line: mean k per stage, and how many blocks are not zero-stable."""
    rows = model_or_rows if isinstance(model_or_rows, list) else lm_coefficients(model_or_rows)
    if not rows:
        return 'no LM coefficients'
    per_stage: Dict[int, List[float]] = {}
    for r in rows:
        per_stage.setdefault(r.stage, []).append(r.k_mean)
    means = ', '.join(f'stage {s}: {sum(v) / len(v):+.4f}' for s, v in per_stage.items())
    unstable = sum(not r.zero_stable for r in rows)
    return f'mean k per stage: {means}; {unstable} of {len(rows)} blocks not zero-stable'


def plot_coefficients(model_or_rows, path, title: Optional[str] = None) -> None:
    """Draw k_n against depth with stage boundaries (PNG, or any format matplotlib infers from ``path``)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError('plotting needs matplotlib: pip install "timm-lm[plot]"') from None
    rows = model_or_rows if isinstance(model_or_rows, list) else lm_coefficients(model_or_rows)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    per_channel = bool(rows) and rows[0].k.numel() > 1
    for stage in sorted({r.stage for r in rows}):  # one line per stage: the first block of a stage has no k
        part = [r for r in rows if r.stage == stage]
        depth = [r.depth for r in part]
        ax.plot(depth, [r.k_mean for r in part], 'o-', color='tab:blue',
                label=None if stage else ('k_n (mean over channels)' if per_channel else 'k_n'))
        if per_channel:
            ax.fill_between(depth, [float(r.k.min()) for r in part], [float(r.k.max()) for r in part],
                            color='tab:blue', alpha=0.2, label=None if stage else 'channel range')
    for start in sorted({r.depth - r.block for r in rows})[1:]:
        ax.axvline(start - 0.5, color='grey', linestyle=':', linewidth=1)
    ax.axhline(0.0, color='black', linewidth=0.6)
    ax.set_xlabel('block (depth)')
    ax.set_ylabel('k_n')
    ax.set_title(title or 'LM coefficients k_n (dotted lines: stage boundaries)')
    ax.legend(loc='best', fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
