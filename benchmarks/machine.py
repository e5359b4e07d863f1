"""What the benchmark scripts record about the machine they ran on (Linux details where available)."""
import datetime
import os
import platform
from pathlib import Path
from typing import Dict

import timm
import torch

import timm_lm


def machine_info() -> Dict:
    cpu = platform.processor()
    if Path('/proc/cpuinfo').exists():
        cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                    if line.startswith('model name')), cpu)
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, timm=timm.__version__, timm_lm=timm_lm.__version__,
                date=datetime.date.today().isoformat())


def cpu_counters() -> Dict[str, int]:
    """Cumulative CPU time of the whole machine by kind (/proc/stat), to report time stolen by a hypervisor."""
    stat = Path('/proc/stat')
    if not stat.exists():
        return {}
    fields = stat.read_text().splitlines()[0].split()[1:9]
    return dict(zip(('user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'), map(int, fields)))


def steal_percent(before: Dict[str, int], after: Dict[str, int]) -> float:
    """Share of the machine's CPU time taken by the hypervisor (steal) between two readings, in percent."""
    if not before or not after:
        return float('nan')
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values())
    return round(100.0 * delta['steal'] / total, 1) if total else 0.0
