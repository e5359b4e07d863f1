"""Cost of the LM mix: each LM model beside the timm model it extends, in one process, interleaved.

    python benchmarks/overhead.py [--clock cpu|wall] [--repeats 30] [--modes train infer ...] [--pairs resnet50 ...]
    python benchmarks/overhead.py --device cuda [--pairs ...]      # bf16 autocast, channels-last, CUDA clock

For every pair and mode the two models run alternately, one step each (the order flips every repeat);
the throughput ratio LM / ResNet of each adjacent pair is summarised by its median, interquartile range
and min-max, so that drift and noisy neighbours hit both models alike. Peak training memory is read
from the PyTorch profiler's memory timeline (every tensor allocation of one training step).

Modes: ``train`` (forward + backward), ``infer`` (no_grad forward), ``compile-train`` and
``compile-infer`` (``torch.compile``, default inductor backend, timed after compiling), ``ckpt-train``
(training with ``set_grad_checkpointing()``). Results go to ``benchmarks/results/overhead_<clock>.{json,md}``.

Pairs: LM-ResNet-50 / LM-ResNeXt-50 / LM-ConvNeXt-T / LM-ViT-S / LM-EfficientNet-B0 beside timm's model,
the CIFAR LM-ResNet-56 beside itself built with ``lm=False``, and ``resnet56_cifar_split`` /
``resnetv2_50_split``: the model as it is, whose pre-activation blocks take the two-step rule from their
parts (the "split", as post-activation blocks do), beside the same model whose identity-shortcut blocks
run timm's own forward plus the correction instead (the "whole" step): what the split saves.

Clocks: on a shared virtual machine, elapsed time includes whatever the hypervisor takes (the "CPU
stolen" column); ``--clock cpu`` (the default) times the CPU work of one computing thread instead, which
is what the mix itself costs. ``--clock wall`` gives the elapsed time a user sees with all cores.
``--device cuda`` runs both models on the GPU under bfloat16 autocast with channels-last inputs, timed
with ``torch.cuda.synchronize`` around each step (wall clock), peak memory from
``torch.cuda.max_memory_allocated``.
"""
import argparse
import contextlib
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import timm_lm  # noqa: F401  (registers the LM models)
from machine import cpu_counters, machine_info, steal_percent
from timm_lm.blocks import LMPreActBasic, LMPreActBottleneck

RESULTS = Path(__file__).parent / 'results'


@dataclass(frozen=True)
class Pair:
    key: str
    lm: Tuple[str, Dict]
    base: Tuple[str, Dict]
    input_shape: Tuple[int, int, int, int]
    lm_label: str = ''  # how the LM side differs, where its name does not say it
    base_label: str = ''

    def describe(self) -> str:
        base = self.base_label or (self.base[0] + (' lm=False' if self.base[1].get('lm') is False else ''))
        n, _, h, w = self.input_shape
        return f'{self.lm_label or self.lm[0]} vs {base} ({n}x{h}x{w})'


def whole_where_possible(model: torch.nn.Module) -> torch.nn.Module:
    """Give every pre-activation ResNet block with an identity shortcut the whole-block step (timm's forward
    plus ``k (u[n-1] - u[n])``) instead of the split it takes by default; the projecting first block of a
    stage keeps the split (it hands its projected shortcut on)."""
    for block in model.modules():
        if isinstance(block, (LMPreActBasic, LMPreActBottleneck)) and block.downsample is None:
            block.lm_split = False
    return model


VIT_SMALL = dict(img_size=112)  # 7 x 7 patches + class token: a ViT-S step this CPU can repeat 30 times
PAIRS = {
    'resnet50': Pair('resnet50', ('lm_resnet50', {}), ('resnet50', {}), (8, 3, 128, 128)),
    'resnext50': Pair('resnext50', ('lm_resnext50', {}), ('resnext50_32x4d', {}), (8, 3, 128, 128)),
    'convnext_tiny': Pair('convnext_tiny', ('lm_convnext_tiny', {}), ('convnext_tiny', {}), (8, 3, 128, 128)),
    'vit_small': Pair('vit_small', ('lm_vit_small_patch16_224', VIT_SMALL), ('vit_small_patch16_224', VIT_SMALL),
                      (8, 3, 112, 112)),
    'efficientnet_b0': Pair('efficientnet_b0', ('lm_efficientnet_b0', {}), ('efficientnet_b0', {}), (8, 3, 128, 128)),
    'resnet56_cifar': Pair('resnet56_cifar', ('lm_resnet56_cifar', {}), ('lm_resnet56_cifar', {'lm': False}),
                           (64, 3, 32, 32)),
    'resnet56_cifar_split': Pair(
        'resnet56_cifar_split', ('lm_resnet56_cifar', {}), ('lm_resnet56_cifar', {'transform': 'whole_where_possible'}),
        (64, 3, 32, 32), lm_label='lm_resnet56_cifar (split blocks)', base_label='lm_resnet56_cifar (whole blocks)'),
    'resnetv2_50_split': Pair(
        'resnetv2_50_split', ('lm_resnetv2_50', {}), ('lm_resnetv2_50', {'transform': 'whole_where_possible'}),
        (8, 3, 128, 128), lm_label='lm_resnetv2_50 (split blocks)', base_label='lm_resnetv2_50 (whole blocks)'),
}
TRANSFORMS = {'whole_where_possible': whole_where_possible}
MODES = ('train', 'infer', 'compile-train', 'compile-infer', 'ckpt-train')
CLOCKS = dict(cpu='CPU time of the single computing thread (torch.set_num_threads(1), time.thread_time)',
              wall='elapsed time (time.perf_counter; on CUDA after torch.cuda.synchronize)')


@dataclass(frozen=True)
class Runtime:
    """Where and how the models run: the CPU in float32, or a CUDA GPU with bf16 autocast and channels-last."""
    device: str = 'cpu'

    @property
    def cuda(self) -> bool:
        return self.device.startswith('cuda')

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self):
        return torch.autocast('cuda', dtype=torch.bfloat16) if self.cuda else contextlib.nullcontext()

    def prepare(self, t):
        """A model or input on the device, channels-last on CUDA (where cuDNN wants it)."""
        t = t.to(self.device)
        return t.to(memory_format=torch.channels_last) if self.cuda and (not torch.is_tensor(t) or t.dim() == 4) else t


def _build(spec: Tuple[str, Dict], mode: str, rt: Runtime = Runtime()) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = dict(spec[1])
    transform = TRANSFORMS.get(kwargs.pop('transform', None), lambda m: m)
    model = rt.prepare(transform(timm.create_model(spec[0], **kwargs)))
    model.train(mode.endswith('train'))
    if mode == 'ckpt-train':
        model.set_grad_checkpointing(True)
    return model


def _step_fn(model: torch.nn.Module, mode: str, x: torch.Tensor, rt: Runtime = Runtime()) -> Callable[[], None]:
    runner = torch.compile(model) if mode.startswith('compile') else model
    if mode.endswith('infer'):
        def step():
            with torch.no_grad(), rt.autocast():
                runner(x)
            rt.sync()
    else:
        def step():
            model.zero_grad(set_to_none=True)
            with rt.autocast():
                loss = runner(x).float().sum()
            loss.backward()
            rt.sync()
    return step


def time_pair(pair: Pair, mode: str, repeats: int, clock: Callable[[], float] = time.perf_counter,
              rt: Runtime = Runtime()) -> Dict:
    """Alternate single steps of the two models ``repeats`` times (order flipped each time).

    Short, adjacent measurements: a burst of interference rarely hits only one of a pair, and the
    median of the per-pair ratios ignores the pairs it does hit. Interference only ever adds time, so
    the ratio of the two fastest steps (best of ``repeats``) is a second estimate of what the mix itself
    costs (for steps of a few milliseconds it is no steadier than the median); the step times are kept
    in the results.
    """
    x = rt.prepare(torch.randn(*pair.input_shape))
    counters = cpu_counters()
    fns, first_step_s = {}, {}
    for name, spec in (('lm', pair.lm), ('base', pair.base)):
        fn = _step_fn(_build(spec, mode, rt), mode, x, rt)
        start = time.perf_counter()
        fn()  # compiles in the compile modes
        first_step_s[name] = time.perf_counter() - start
        for _ in range(2):
            fn()
        fns[name] = fn
    ratios, seconds = [], {'lm': [], 'base': []}
    for r in range(repeats):
        for name in (('lm', 'base') if r % 2 == 0 else ('base', 'lm')):
            start = clock()
            fns[name]()
            seconds[name].append(clock() - start)
        ratios.append(seconds['base'][-1] / seconds['lm'][-1])  # throughput ratio LM / ResNet
    quartiles = statistics.quantiles(ratios, n=4)
    return dict(
        ratio_median=statistics.median(ratios), ratio_q1=quartiles[0], ratio_q3=quartiles[2],
        ratio_min=min(ratios), ratio_max=max(ratios), ratio_of_totals=sum(seconds['base']) / sum(seconds['lm']),
        ratio_of_fastest=min(seconds['base']) / min(seconds['lm']),
        lm_img_per_s=x.shape[0] / statistics.median(seconds['lm']),
        base_img_per_s=x.shape[0] / statistics.median(seconds['base']),
        lm_first_step_s=first_step_s['lm'], base_first_step_s=first_step_s['base'], repeats=repeats,
        steal_percent=steal_percent(counters, cpu_counters()),
        lm_step_s=[round(s, 6) for s in seconds['lm']], base_step_s=[round(s, 6) for s in seconds['base']])


def peak_training_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak of live tensor bytes over one training step (parameters, gradients, activations, temporaries)."""
    step = _step_fn(model, 'train', x)
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'timeline.raw.json.gz')
        prof.export_memory_timeline(path, device='cpu')
        with gzip.open(path) as f:
            events = json.load(f)  # (time, action, signed bytes, category)
    live = peak = 0
    for _, _, nbytes, _ in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_cuda_training_bytes(model: torch.nn.Module, x: torch.Tensor, rt: Runtime) -> int:
    """Peak CUDA memory allocated during one training step (after a warm-up step)."""
    step = _step_fn(model, 'train', x, rt)
    step()
    torch.cuda.reset_peak_memory_stats(rt.device)
    base = torch.cuda.memory_allocated(rt.device)
    step()
    return torch.cuda.max_memory_allocated(rt.device) - base


def memory_pair(pair: Pair, mode: str, rt: Runtime = Runtime()) -> Dict:
    x = rt.prepare(torch.randn(*pair.input_shape))
    measure = (lambda m: peak_cuda_training_bytes(m, x, rt)) if rt.cuda else (lambda m: peak_training_bytes(m, x))
    peaks = {name: measure(_build(spec, mode, rt)) for name, spec in (('lm', pair.lm), ('base', pair.base))}
    return dict(lm_peak_mib=peaks['lm'] / 2 ** 20, base_peak_mib=peaks['base'] / 2 ** 20,
                ratio=peaks['lm'] / peaks['base'])


def markdown(results: Dict) -> str:
    m = results['machine']
    lines = [
        f'Command: `{results["command"]}`  ',
        f'Machine: {m["cpu"]}, {m["cores"]} cores ({m["threads"]} torch threads), torch {m["torch"]}, timm {m["timm"]}; '
        f'{m["date"]}. Device: {results.get("device", "cpu")}{" (bfloat16 autocast, channels-last)" if results.get("device", "cpu") != "cpu" else " (float32)"}. '
        f'Clock: {CLOCKS[results["clock"]]}. Throughput ratios are LM / base model over {results["repeats"]} '
        f'interleaved pairs of single steps: '
        f'median, interquartile range and min-max; "fastest": ratio of the two models\' fastest steps (noise only '
        f'adds time). "CPU stolen": share of the machine\'s CPU time the hypervisor '
        f'took while that row ran (the VM shares its host).',
        '',
        '| pair (input) | mode | throughput LM / base, median | IQR | min-max | fastest | LM img/s | base img/s '
        '| CPU stolen |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for key, per_mode in results['timing'].items():
        for mode, r in per_mode.items():
            lines.append(f'| {PAIRS[key].describe()} | {mode} | {r["ratio_median"]:.3f} | '
                         f'{r["ratio_q1"]:.3f}-{r["ratio_q3"]:.3f} | {r["ratio_min"]:.2f}-{r["ratio_max"]:.2f} | '
                         f'{r["ratio_of_fastest"]:.3f} | '
                         f'{r["lm_img_per_s"]:.1f} | {r["base_img_per_s"]:.1f} | {r["steal_percent"]:.0f}% |')
    lines += ['', '| pair | mode | peak training memory LM / base | LM MiB | base MiB |', '|---|---|---|---|---|']
    for key, per_mode in results['memory'].items():
        for mode, r in per_mode.items():
            lines.append(f'| {PAIRS[key].describe()} | {mode} | {r["ratio"]:.4f} | '
                         f'{r["lm_peak_mib"]:.1f} | {r["base_peak_mib"]:.1f} |')
    return '\n'.join(lines) + '\n'


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=list(PAIRS))
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    p.add_argument('--repeats', type=int, default=30, help='interleaved pairs of single steps per mode')
    p.add_argument('--clock', choices=('cpu', 'wall'), default='cpu',
                   help='cpu: CPU time of the one computing thread (time.thread_time, torch set to 1 thread): '
                        'free of time stolen by a hypervisor or other processes; wall: elapsed time, all threads')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: 1 for --clock cpu, else torch\'s)')
    p.add_argument('--device', default='cpu', help="cpu, or cuda[:N]: bfloat16 autocast, channels-last, wall clock")
    p.add_argument('--out', default=None, help='writes OUT.json and OUT.md (default: benchmarks/results/overhead_<clock>)')
    args = p.parse_args(argv)
    rt = Runtime(args.device)
    if rt.cuda:
        if not torch.cuda.is_available():
            p.error(f'--device {args.device}: no CUDA device is available here')
        args.clock = 'wall'  # the GPU's time is the elapsed time up to the synchronize
    elif args.device != 'cpu':
        p.error(f'--device {args.device}: pass cpu or cuda[:N]')
    threads = args.threads or (1 if args.clock == 'cpu' else None)
    if threads:
        torch.set_num_threads(threads)
    clock = time.thread_time if args.clock == 'cpu' else time.perf_counter
    args.out = args.out or str(RESULTS / (f'overhead_{args.clock}' if not rt.cuda else 'overhead_cuda'))
    results = dict(command=' '.join(['python benchmarks/overhead.py', *(argv if argv is not None else sys.argv[1:])]),
                   machine=machine_info(), device=args.device, clock=args.clock, repeats=args.repeats, timing={},
                   memory={})
    for key in args.pairs:
        pair = PAIRS[key]
        for mode in args.modes:
            results['timing'].setdefault(key, {})[mode] = r = time_pair(pair, mode, args.repeats, clock, rt)
            print(f'{key:15s} {mode:14s} LM/ResNet {r["ratio_median"]:.3f} IQR [{r["ratio_q1"]:.3f}, {r["ratio_q3"]:.3f}]'
                  f' fastest {r["ratio_of_fastest"]:.3f}'
                  f'  ({r["lm_img_per_s"]:.1f} vs {r["base_img_per_s"]:.1f} img/s)', flush=True)
        for mode in [m for m in ('train', 'ckpt-train') if m in args.modes]:
            results['memory'].setdefault(key, {})[mode] = r = memory_pair(pair, mode, rt)
            print(f'{key:15s} {mode:14s} peak memory LM/ResNet {r["ratio"]:.4f} '
                  f'({r["lm_peak_mib"]:.1f} vs {r["base_peak_mib"]:.1f} MiB)', flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(results, indent=2) + '\n')
    out.with_suffix('.md').write_text(markdown(results))
    print(f'wrote {out.with_suffix(".json")} and {out.with_suffix(".md")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
