"""The figures in README.md and benchmarks/README.md are the ones in the result files the scripts wrote."""
import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'benchmarks' / 'results'


def test_readme_starts_with_the_two_commands():
    lines = (REPO / 'README.md').read_text().splitlines()
    block = lines[lines.index('```bash') + 1:lines.index('```bash') + 3]
    assert block[0].startswith('bash setup.sh && .venv/bin/python -m train_wrappers.quickstart ')
    assert block[1].startswith('bash setup.sh && .venv/bin/python -m pytest -q ')


def test_quickstart_figures_are_the_recorded_run():
    """README quotes benchmarks/results/quickstart.json (a quickstart run's own file): figure, commit, date."""
    result = json.loads((RESULTS / 'quickstart.json').read_text())
    readme = (REPO / 'README.md').read_text()
    where = result['provenance']
    assert result['top1'] == result['reloaded_top1'] and result['trainer'] == 'compact' and result['seed'] == 42
    assert f'{result["top1"]:.2f}%' in readme
    assert f'commit {where["commit"]}' in readme and where['date'][:10] in readme
    assert where['command'] in readme
    assert '-dirty' not in where['commit']  # measured on committed code


def test_study_table_is_the_studys_results(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / 'benchmarks'))  # for its `import machine`
    spec = importlib.util.spec_from_file_location('fmnist_study', REPO / 'benchmarks' / 'fmnist_study.py')
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = {r['model']: r for r in study.summarize(json.loads((RESULTS / 'fmnist_study.json').read_text())['runs'])}
    text = (REPO / 'benchmarks' / 'README.md').read_text()
    table = re.findall(r'^\| (LM-)?ResNet-(\d+) \| ([\d,]+) \| \**([\d.]+)\** \| ([\d.]+)-([\d.]+) \| (\d+) s \|$', text, re.M)
    assert len(table) == len(rows) == 7
    for lm, depth, params, mean, low, high, seconds in table:
        row = rows[f'lm_resnet{depth}_cifar' if lm else f'resnet{depth}']
        assert (int(params.replace(',', '')), float(mean), float(low), float(high), int(seconds)) == (
            row['params'], round(row['top1_mean'], 2), row['top1_min'], row['top1_max'], round(row['seconds_mean']))
