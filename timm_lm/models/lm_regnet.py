"""LM-RegNet: timm's RegNet X / Y / V with LM stages.

``lm_<name>`` is registered for every model of timm's ``regnet`` module. RegNet X and Y blocks are
post-activation bottlenecks (``act(F(x) + shortcut)``), so the mix goes before their final activation,
as in LM-ResNet. RegNet V blocks are pre-activation, but their shortcut reads the pre-activated input
even where it is the identity (``norm1(x) + F(norm1(x))``, not ``x + F(x)``), so they are run from their
parts too: ``F + (1 - k_n) s_n + k_n s_{n-1}`` with ``s`` the shortcut output. The first block of a
stage (stride / width change) hands its projected shortcut on as the second block's ``u[n-1]``, as in
the authors' reference code; every later block hands on its shortcut output.
"""
import re
from typing import List

from timm.models import list_models, regnet

from ._base import LMModelMixin
from ._factory import register_family

__all__ = ['LMRegNet']


class LMRegNet(LMModelMixin, regnet.RegNet):
    """timm ``RegNet`` whose stages (``s1`` ... ``s4``) run the LM recurrence."""

    def lm_stage_paths(self) -> List[str]:
        return [info['module'] for info in self.feature_info if re.fullmatch(r's\d+', info['module'])]


_TIMM_NAMES = register_family(
    globals(),
    LMRegNet,
    {f'lm_{name}': name for name in list_models(module='regnet')},
    'LM-{base}: timm {base} with the LM two-step recurrence in every stage (arXiv:1710.10121).',
)
