"""Render a published checkpoint's README.md (its Hub model card) from the project's MODEL_CARD.md.

The project card marks the sections every checkpoint shares (``<!-- card:begin NAME -->`` ...
``<!-- card:end NAME -->``: the architecture, intended use and limitations, the citation); this module
puts them after the checkpoint's own facts: Hub metadata, model and data, what trained it and the
metrics that run logged in summary.csv, the learned k_n, and how to load it.
"""
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch.nn as nn

from timm_lm import __version__
from timm_lm.analysis import format_coefficients, lm_coefficients, summarize_coefficients
from train_wrappers.trainer import TRAINER_ID

__all__ = ['CardFacts', 'read_summary', 'card_sections', 'render_card', 'trained_by', 'PROJECT_CARD']

PROJECT_CARD = Path(__file__).with_name('MODEL_CARD.md')  # a link to the top-level MODEL_CARD.md
_SECTION = re.compile(r'<!-- card:begin (\w+) -->\n(.*?)<!-- card:end \1 -->', re.S)


@dataclass
class CardFacts:
    """What is known about one checkpoint."""
    model_name: str
    repo_id: Optional[str] = None
    dataset: Optional[str] = None
    checkpoint: Optional[str] = None
    epoch: Optional[int] = None
    ema: bool = False
    trained_by: Optional[str] = None  # e.g. 'timm train.py'; None: not recorded in the checkpoint
    metrics: Dict[str, str] = field(default_factory=dict)
    best: Optional[Dict[str, str]] = None


def trained_by(train_args: Optional[Dict[str, Any]]) -> Optional[str]:
    """What wrote a checkpoint, from the args it saved: the compact trainer names itself, train.py does not."""
    if not train_args:
        return None
    if train_args.get('trainer') == TRAINER_ID:
        return "timm-lm's compact trainer (train_wrappers.trainer, timm library parts)"
    return 'timm train.py'


def read_summary(path, epoch: Optional[int]) -> Dict[str, Dict[str, str]]:
    """train.py's summary.csv: the row of ``epoch`` (the last row if unknown) and the best eval_top1 row."""
    with open(path, newline='') as f:
        rows = [r for r in csv.DictReader(f) if r.get('epoch') != 'epoch']  # a resumed train.py run repeats the header
    if not rows or 'epoch' not in rows[0]:
        raise ValueError(f'{path}: not a train.py summary.csv (no epoch column)')
    chosen = next((r for r in rows if epoch is not None and str(r['epoch']) == str(epoch)), rows[-1])
    scored = [r for r in rows if r.get('eval_top1') not in (None, '')]
    best = max(scored, key=lambda r: float(r['eval_top1'])) if scored else None
    return dict(row=chosen, best=best)


def card_sections(path: Path = PROJECT_CARD) -> Dict[str, str]:
    """The shared sections of the project card, by name."""
    return {name: body.strip() for name, body in _SECTION.findall(path.read_text())}


def _metrics_lines(facts: CardFacts) -> List[str]:
    if not facts.metrics:
        return ['- **Metrics:** none given (pass `--summary summary.csv` from the training run)']
    row = facts.metrics
    shown = ', '.join(f'{k.replace("eval_", "")} {float(v):.2f}' if 'top' in k else f'{k} {float(v):.4f}'
                      for k, v in row.items() if k.startswith('eval_') and v not in ('', None))
    source = f'evaluation logged by {facts.trained_by}' if facts.trained_by else 'evaluation logged in summary.csv'
    lines = [f'- **Metrics** ({source}, epoch {row.get("epoch")}): {shown}']
    if facts.best and facts.best is not row and facts.best.get('epoch') != row.get('epoch'):
        lines.append(f'- Best eval top-1 of the run: {float(facts.best["eval_top1"]):.2f} at epoch {facts.best["epoch"]}')
    return lines


def render_card(model: nn.Module, facts: CardFacts, sections: Optional[Dict[str, str]] = None) -> str:
    sections = card_sections() if sections is None else sections
    cfg = model.pretrained_cfg
    name = facts.repo_id or facts.model_name
    rows = lm_coefficients(model)
    options = getattr(model, 'lm_options', None)
    params = sum(p.numel() for p in model.parameters())
    parametrisation = 'none (plain ResNet, lm=False)' if not rows else ', '.join(filter(None, [
        'tanh-stable' if options and options.k_stable else 'free',
        'per channel' if options and options.k_per_channel else 'one per block']))
    header = ['---', 'library_name: timm', f'license: {cfg.get("license") or "apache-2.0"}', 'tags:',
              '- image-classification', '- timm', '- timm-lm', '- lm-architecture', 'pipeline_tag: image-classification']
    if facts.dataset:
        header += ['datasets:', f'- {facts.dataset}']
    header.append('---')
    load_name = f'hf-hub:{facts.repo_id}' if facts.repo_id else 'local-dir:PATH/TO/THIS/FOLDER'
    parts = [
        '\n'.join(header),
        f'# {name}',
        f'`{facts.model_name}`: an LM-architecture image classifier (arXiv:1710.10121) trained with timm and '
        f'published with timm-lm {__version__}.',
        '## Model details',
        '\n'.join([
            f'- **Architecture:** `{facts.model_name}`, {params / 1e6:.3f}M parameters, '
            f'{len(rows)} LM coefficients ({parametrisation})',
            f'- **Data:** {facts.dataset or "not stated"}; input {tuple(cfg["input_size"])}, '
            f'mean {tuple(round(v, 4) for v in cfg["mean"])}, std {tuple(round(v, 4) for v in cfg["std"])}, '
            f'{model.num_classes} classes',
            f'- **Weights:** {"EMA weights of " if facts.ema else ""}`{facts.checkpoint or "checkpoint"}`'
            + (f', epoch {facts.epoch}' if facts.epoch is not None else '')
            + (f', trained by {facts.trained_by}' if facts.trained_by else ''),
            *_metrics_lines(facts),
        ]),
        '## Usage',
        '```python\nimport timm\nimport timm_lm  # registers the LM architectures with timm\n\n'
        f"model = timm.create_model('{load_name}', pretrained=True).eval()\n"
        'config = timm.data.resolve_model_data_config(model)\n'
        'transform = timm.data.create_transform(**config, is_training=False)\n'
        'print(timm_lm.format_coefficients(model))  # the learned k_n\n```',
        '## Learned k_n',
        summarize_coefficients(rows) + '\n\n' + format_coefficients(rows, markdown=True) if rows else
        'This checkpoint has no LM coefficients (a plain ResNet baseline, `lm=False`).',
    ]
    parts += [sections[k] for k in ('architecture', 'limitations', 'citation') if k in sections]
    return '\n\n'.join(parts) + '\n'
