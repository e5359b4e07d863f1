"""Accuracy per parameter on real data: LM-ResNets beside plain ResNets on Fashion-MNIST, CPU-sized.

    python benchmarks/fmnist_study.py [--epochs 1] [--seeds 0 1] [--models ...] [--data-dir DIR]

Every model gets the same recipe (the quickstart's, ``train_wrappers.quickstart.RECIPE``: SGD
(Nesterov) lr 0.1 with a per-step cosine schedule to 0, weight decay 5e-4, batch 128, a mild
random-resized-crop + flip, 28x28 inputs, channels last, the idx files held in memory) on the full
60,000-image training set, and is evaluated on the 10,000 test images. Runs are
ordered seed by seed (all models for seed 0, then seed 1, ...) so that any drift of the machine spreads
over every model. The baselines are the same CIFAR-style networks built with ``lm=False``; ResNet-110 is
the "twice the parameters of ResNet-56" point.

Results (appended run by run, so an interrupted study resumes): ``benchmarks/results/fmnist_study.json``,
a table ``fmnist_study.md`` and a plot ``fmnist_study.png`` of top-1 against parameters.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import timm
import torch

import timm_lm  # noqa: F401
from machine import cpu_counters, machine_info, steal_percent
from train_wrappers.quickstart import DEBIAN_FMNIST, QuickstartError, check_fashion_mnist, train_config
from train_wrappers.trainer import train

RESULTS = Path(__file__).parent / 'results'
MODELS = ['lm_resnet20_cifar', 'lm_resnet32_cifar', 'lm_resnet56_cifar',
          'resnet20', 'resnet32', 'resnet56', 'resnet110']  # plain names: the lm=False baselines


def model_spec(name: str):
    """(timm name, kwargs, family label) for a study model name."""
    if name.startswith('lm_'):
        return name, {}, 'LM-ResNet'
    return f'lm_{name}_cifar', {'lm': False}, 'ResNet'


def run_one(name: str, seed: int, args: argparse.Namespace) -> Dict:
    timm_name, kwargs, family = model_spec(name)
    cfg = train_config(Path(args.data_dir), Path(args.work_dir), model=timm_name, model_kwargs=kwargs,
                       batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, seed=seed, progress=args.progress,
                       experiment=f'{name}-seed{seed}')
    counters, start = cpu_counters(), time.time()
    result = train(cfg)
    seconds = time.time() - start
    model = timm.create_model(timm_name, in_chans=1, num_classes=10, **kwargs)
    return dict(model=name, family=family, timm_name=timm_name, model_kwargs=kwargs, seed=seed,
                params=sum(p.numel() for p in model.parameters()), top1=result.last_metrics['top1'],
                top5=result.last_metrics['top5'], seconds=round(seconds, 1),
                steal_percent=steal_percent(counters, cpu_counters()))


def summarize(runs: List[Dict]) -> List[Dict]:
    rows = []
    for name in dict.fromkeys(r['model'] for r in runs):
        mine = [r for r in runs if r['model'] == name]
        top1 = [r['top1'] for r in mine]
        rows.append(dict(model=name, family=mine[0]['family'], params=mine[0]['params'], runs=len(mine),
                         top1_mean=statistics.mean(top1), top1_min=min(top1), top1_max=max(top1),
                         top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
                         seconds_mean=statistics.mean(r['seconds'] for r in mine),
                         steal_mean=statistics.mean(r.get('steal_percent', float('nan')) for r in mine)))
    return rows


def markdown(results: Dict) -> str:
    m = results['machine']
    lines = [
        f'Command: `{results["command"]}`  ',
        f'Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]}, timm {m["timm"]}; {m["date"]}.  ',
        f'Recipe: {results["recipe"]}',
        '',
        '| model | family | parameters | runs (seeds) | test top-1 mean | min-max | std | wall time per run | CPU stolen |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in summarize(results['runs']):
        lines.append(f'| {r["model"]} | {r["family"]} | {r["params"]:,} | {r["runs"]} | **{r["top1_mean"]:.2f}** | '
                     f'{r["top1_min"]:.2f}-{r["top1_max"]:.2f} | {r["top1_std"]:.2f} | {r["seconds_mean"]:.0f} s | '
                     f'{r["steal_mean"]:.0f}% |')
    return '\n'.join(lines) + '\n'


def plot(results: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = summarize(results['runs'])
    for family, style in (('LM-ResNet', 'o-'), ('ResNet', 's--')):
        part = sorted((r for r in rows if r['family'] == family), key=lambda r: r['params'])
        if not part:
            continue
        x = [r['params'] / 1e6 for r in part]
        y = [r['top1_mean'] for r in part]
        err = [[r['top1_mean'] - r['top1_min'] for r in part], [r['top1_max'] - r['top1_mean'] for r in part]]
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=family)
        for r, xi, yi in zip(part, x, y):
            ax.annotate(r['model'].replace('lm_', 'LM-').replace('_cifar', ''), (xi, yi), textcoords='offset points',
                        xytext=(4, -10), fontsize=7)
    ax.set_xlabel('parameters (millions)')
    ax.set_ylabel('Fashion-MNIST test top-1 (%)')
    ax.set_title(f'Accuracy per parameter ({results["epochs"]} epoch(s), mean and min-max over seeds)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=MODELS)
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--data-dir', default=DEBIAN_FMNIST)
    p.add_argument('--work-dir', default='output/fmnist_study', help='checkpoints and summaries of the runs')
    p.add_argument('--out', default=str(RESULTS / 'fmnist_study'), help='writes OUT.json, OUT.md and OUT.png')
    p.add_argument('--progress', action='store_true')
    args = p.parse_args(argv)
    for name in args.models:
        timm_name = model_spec(name)[0]
        if not timm.is_model(timm_name):
            print(f'fmnist_study: unknown model {name!r}: use lm_resnet<depth>_cifar or resnet<depth>', file=sys.stderr)
            return 2

    try:
        check_fashion_mnist(Path(args.data_dir))
    except QuickstartError as err:
        print(f'fmnist_study: {err}', file=sys.stderr)
        return 2
    out = Path(args.out)
    recipe = (f'{args.epochs} epoch(s) over the 60,000 training images, batch {args.batch_size}, SGD (Nesterov) lr '
              f'{args.lr}, cosine per step, weight decay 5e-4, random-resized-crop (scale 0.85-1) + flip, 28x28, '
              f'in-memory idx loader, evaluated on the 10,000 test images; seeds {args.seeds}')
    results = dict(command=' '.join(['python benchmarks/fmnist_study.py', *(argv if argv is not None else sys.argv[1:])]),
                   machine=machine_info(), epochs=args.epochs, recipe=recipe, runs=[])
    if out.with_suffix('.json').is_file():
        previous = json.loads(out.with_suffix('.json').read_text())
        if previous.get('recipe') == recipe:  # resume an interrupted study with the same recipe
            results['runs'] = previous['runs']
    done = {(r['model'], r['seed']) for r in results['runs']}
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.models:
            if (name, seed) in done:
                continue
            run = run_one(name, seed, args)
            results['runs'].append(run)
            out.with_suffix('.json').write_text(json.dumps(results, indent=2) + '\n')
            print(f'{name:20s} seed {seed}: top-1 {run["top1"]:.2f}  params {run["params"]:,}  {run["seconds"]:.0f} s',
                  flush=True)
    out.with_suffix('.md').write_text(markdown(results))
    plot(results, out.with_suffix('.png'))
    print(markdown(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
