"""How OpenMP's waiting policy changes the quickstart's training steps, alone and beside a busy process.

The training tools set ``OMP_WAIT_POLICY=PASSIVE`` (``train_wrappers/__init__.py``): torch's OpenMP threads
then sleep as soon as a parallel region ends instead of spinning. This script measures what that choice
costs and saves: the quickstart's own model, loader and optimiser (``RECIPE``), ``--steps`` training
steps after three warm-up steps, with torch's default waiting (libgomp spins for a while), with passive
waiting, and with libgomp's spin count cut to ``GOMP_SPINCOUNT=10000``; each setting in a fresh process
(libgomp reads them when torch loads), alternated, ``--repeats`` times, first on the machine as it is and
then beside one busy single-threaded process. Seconds per step are wall clock, extrapolated to the
quickstart's epoch of 468 steps.

    python benchmarks/omp_wait.py [--steps 40] [--repeats 2] [--out benchmarks/results/omp_wait]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> environment (an empty OMP_WAIT_POLICY is libgomp's default, and keeps ours unset)
    'default (spin)': {'OMP_WAIT_POLICY': ''},
    'PASSIVE': {'OMP_WAIT_POLICY': 'PASSIVE'},
    'GOMP_SPINCOUNT=10000': {'OMP_WAIT_POLICY': '', 'GOMP_SPINCOUNT': '10000'},
}
EPOCH_STEPS = 468

STEPS_CODE = r'''
import json, sys, time
from pathlib import Path
import timm, torch
import train_wrappers.quickstart as qs
import train_wrappers.trainer as tr
from timm.data import resolve_data_config
steps = int(sys.argv[1])
cfg = qs.train_config(Path(sys.argv[2]), Path(sys.argv[3]))
timm.utils.random_seed(cfg.seed, 0)
model = tr.create_model(cfg).to(memory_format=torch.channels_last)
data_config = resolve_data_config(vars(tr._namespace(cfg)), model=model)
optimizer = timm.optim.create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           momentum=cfg.momentum)
batches = iter(tr.create_split_loader(cfg, data_config, cfg.train_split, True))
loss_fn = torch.nn.CrossEntropyLoss()
model.train()
def step():
    x, y = next(batches)
    loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    loss.item()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps(dict(seconds_per_step=(time.perf_counter() - start) / steps, threads=torch.get_num_threads())))
'''


def run_setting(env_changes, steps: int, data_dir: str, out_dir: str) -> dict:
    env = dict(os.environ)
    env.pop('GOMP_SPINCOUNT', None)
    env.update(env_changes)
    proc = subprocess.run([sys.executable, '-c', STEPS_CODE, str(steps), data_dir, out_dir], env=env, cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=40)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--data-dir', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--out', default=str(REPO / 'benchmarks' / 'results' / 'omp_wait'))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error('--steps and --repeats must be >= 1')
    sys.path.insert(0, str(REPO / 'benchmarks'))
    from machine import machine_info

    results = dict(command=' '.join(['python benchmarks/omp_wait.py', *(argv if argv is not None else sys.argv[1:])]),
                   machine=machine_info(), steps=args.steps, repeats=args.repeats, runs=[])
    scratch = Path(args.out).with_suffix('.scratch')
    for condition in ('as it is', 'beside one busy process'):
        busy = subprocess.Popen([sys.executable, '-c', 'while True: pass']) if condition != 'as it is' else None
        try:
            for repeat in range(args.repeats):
                for name, env in SETTINGS.items():
                    r = run_setting(env, args.steps, args.data_dir, str(scratch))
                    results['runs'].append(dict(condition=condition, setting=name, repeat=repeat, **r))
                    print(f'{condition:24s} {name:22s} {r["seconds_per_step"]:.3f} s/step', flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        time.sleep(1)
    lines = [f'Command: `{results["command"]}`  ',
             f'Machine: {results["machine"]["cpu"]}, {results["machine"]["cores"]} cores, torch '
             f'{results["machine"]["torch"]}; {results["machine"]["date"]}. Quickstart training steps (batch 128), '
             f'{args.steps} per run after 3 warm-up steps, {args.repeats} runs per cell, alternated; seconds per '
             f'epoch = mean seconds per step x {EPOCH_STEPS}.', '',
             '| OpenMP waiting | machine as it is: s/epoch | beside one busy process: s/epoch |', '|---|---|---|']
    for name in SETTINGS:
        cells = []
        for condition in ('as it is', 'beside one busy process'):
            per_step = [r['seconds_per_step'] for r in results['runs'] if r['setting'] == name
                        and r['condition'] == condition]
            cells.append(f'{statistics.mean(per_step) * EPOCH_STEPS:.0f} '
                         f'({", ".join(f"{s * EPOCH_STEPS:.0f}" for s in per_step)})')
        lines.append(f'| {name} | {cells[0]} | {cells[1]} |')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(results, indent=2) + '\n')
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print(f'wrote {out.with_suffix(".json")} and {out.with_suffix(".md")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
