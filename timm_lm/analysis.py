"""Reading an LM model's coefficients k_n, by stage and block."""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from .stage import LMStage

__all__ = ['BlockCoefficient', 'lm_coefficients', 'format_coefficients']


@dataclass(frozen=True)
class BlockCoefficient:
    """The k_n of one two-step block.

    Attributes:
        stage: index of the LM stage in the model (0-based, in forward order).
        stage_path: module path of the stage (``layer2``, ``stages.1.blocks``).
        block: index of the block inside its stage (the first block of a stage has no k).
        k: float tensor, 0-D (one k per block) or 1-D (one per channel).
    """
    stage: int
    stage_path: str
    block: int
    k: torch.Tensor

    @property
    def name(self) -> str:
        return f'{self.stage_path}.{self.block}'

    @property
    def k_mean(self) -> float:
        return float(self.k.mean())


def lm_coefficients(model: nn.Module) -> List[BlockCoefficient]:
    """Every k_n of an LM model (also a features_only one), in forward order.

    Raises ValueError for a model without LM stages, so that a plain timm model is not reported as an
    LM model with no coefficients.
    """
    stages = [(path, m) for path, m in model.named_modules() if isinstance(m, LMStage)]
    if not stages:
        raise ValueError(f'{type(model).__name__} has no LM stages: pass a model created from a timm_lm name (lm_*)')
    return [
        BlockCoefficient(stage=s, stage_path=path, block=b, k=block.lm.value())
        for s, (path, stage) in enumerate(stages)
        for b, block in enumerate(stage)
        if block.lm is not None
    ]


def format_coefficients(model: nn.Module) -> str:
    """A plain-text table of k_n per stage and block (mean, min, max for per-channel k)."""
    rows = lm_coefficients(model)
    if not rows:
        return 'no LM coefficients (built with lm=False, or every stage has a single block)'
    lines = [f'{"stage":>5} {"block":>5}  {"module":<22} {"k":>9} {"k min":>9} {"k max":>9}']
    for r in rows:
        lines.append(
            f'{r.stage:>5} {r.block:>5}  {r.name:<22} {r.k_mean:>9.5f} {float(r.k.min()):>9.5f} {float(r.k.max()):>9.5f}')
    return '\n'.join(lines)
