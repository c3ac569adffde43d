"""The documentation: README.md stays short, every relative link of the main pages points to a file
of the repository, every result file is indexed by benchmarks/README.md, and the benchmark commands
it documents parse with the benchmark's own argument parser."""
import argparse
import os
import re
import shlex

import pytest

from helpers import ROOT

PAGES = ('README.md', 'TRAINING.md', os.path.join('benchmarks', 'README.md'))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding='utf-8') as f:
        return f.read()


def _relative_links(page: str) -> list[str]:
    """Targets of the page's markdown links that are not URLs or in-page anchors, without anchors."""
    targets = (t.split('#', 1)[0] for t in LINK.findall(_read(page)))
    return [t for t in targets if t and not re.match(r'[a-z][a-z0-9+.-]*:', t)]


def test_readme_under_250_lines():
    assert len(_read('README.md').splitlines()) < 250


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_point_to_files(page):
    links = _relative_links(page)
    assert links, page  # each page links somewhere; an empty list would mean the pattern broke
    base = os.path.dirname(os.path.join(ROOT, page))
    missing = [t for t in links if not os.path.exists(os.path.normpath(os.path.join(base, t)))]
    assert not missing, (page, missing)


def test_readme_links_the_other_pages():
    links = set(_relative_links('README.md'))
    assert {'TRAINING.md', 'benchmarks/README.md', 'object_detection/README.md',
            'semantic_segmentation/README.md'} <= links


def test_every_result_file_indexed():
    """Each measurement's home under benchmarks/results/ is linked from benchmarks/README.md."""
    linked = {os.path.normpath(t) for t in _relative_links(os.path.join('benchmarks', 'README.md'))}
    files = {os.path.join('results', f) for f in os.listdir(RESULTS) if f.endswith('.md')}
    assert len(files) >= 15
    assert not files - linked, sorted(files - linked)


class _Parsed(Exception):
    pass


def _parse_throughput(argv: list[str], monkeypatch) -> argparse.Namespace:
    """``benchmarks/throughput.py``'s arguments for ``argv``, parsed by its own parser (nothing runs)."""
    from benchmarks import throughput

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, 'parse_args', parse_then_stop)
        with pytest.raises(_Parsed) as parsed:
            throughput.main(argv)
    return parsed.value.args[0]


def _documented_throughput_argvs() -> list[list[str]]:
    """Every ``python benchmarks/throughput.py`` command of README.md and benchmarks/README.md, and
    every flag list of the results index, as argv; ``[blocks]`` gives both variants, ``<model>`` a model."""
    found = []
    for page in ('README.md', os.path.join('benchmarks', 'README.md')):
        text = _read(page).replace('\\\n', ' ')
        found += re.findall(r'python benchmarks/throughput\.py([^`\n]*)', text)
        found += [flags for flags in re.findall(r'\| `(--[^`]*)`', text)]
    argvs = []
    for cmd in found:
        cmd = cmd.replace('<model>', 'hornet_tiny_gf')
        for variant in ((cmd.replace('[blocks]', ''), cmd.replace('[blocks]', 'blocks'))
                        if '[blocks]' in cmd else (cmd,)):
            argvs.append(shlex.split(variant.replace('[', '').replace(']', '')))
    return argvs


def test_documented_benchmark_commands_parse(monkeypatch):
    argvs = _documented_throughput_argvs()
    assert len(argvs) >= 15
    for argv in argvs:
        _parse_throughput(argv, monkeypatch)  # an unknown flag or value exits 2 instead


def test_documented_gpu_command(monkeypatch):
    """benchmarks/README.md's GPU command asks for the GPU goal's table (the flags test_benchmarks runs
    on CPU): bf16 autocast, channels_last, batch 128, peak memory, HorNet-T/S/B 7x7 and GF."""
    gpu = [argv for argv in _documented_throughput_argvs() if '--device' in argv]
    assert len(gpu) == 1
    args = _parse_throughput(gpu[0], monkeypatch)
    assert (args.device, args.amp_dtype, args.channels_last, args.batch_size, args.memory) == (
        'cuda', 'bfloat16', True, 128, True)
    assert args.models == [f'hornet_{size}_{kind}' for size in ('tiny', 'small', 'base') for kind in ('7x7', 'gf')]
