"""Two CPU processes (gloo) through ``torch.distributed.launch`` and ``torchrun``: the training
loss falls, both ranks end with identical weights, and distributed evaluation prints Acc@1
over the whole validation set."""
import os
import re

import pytest
import torch

from helpers import MAIN, free_port, make_image_folder, read_log, run_python, tiny_argv


@pytest.mark.slow
@pytest.mark.parametrize('launcher,compile_scope', [('launch', 'false'), ('torchrun', 'false'), ('torchrun', 'blocks')])
def test_two_process_training(launcher, compile_scope, tmp_path):
    """Also with ``--compile blocks``: DDP wraps a model whose blocks were compiled in place."""
    data = make_image_folder(str(tmp_path / 'data'), train_per_class=16, val_per_class=7)
    out = str(tmp_path / 'out')
    port = str(free_port())
    if launcher == 'launch':  # passes --local-rank=N to every process
        cmd = ['-m', 'torch.distributed.launch', '--nproc_per_node=2', f'--master_port={port}']
    else:  # environment variables only
        cmd = ['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}']
    argv = tiny_argv(data, out, epochs=3, batch_size=4, lr=3e-3, compile=compile_scope)
    res = run_python([*cmd, MAIN, *argv], timeout=240 if compile_scope == 'false' else 900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert 'batch 8 (4 x 1 accumulation x 2 processes), 6 steps per epoch' in res.stdout
    log = read_log(out)
    losses = [r['train_loss'] for r in log]
    assert len(losses) == 3 and losses[2] < losses[0] - 0.05, losses
    assert 'parameters on 2 ranks: max |difference| from rank 0 = 0\n' in res.stdout
    accs = re.findall(r'\* Acc@1 ([\d.]+) Acc@5 ([\d.]+) loss [\d.]+ \((\d+) images\)', res.stdout)
    assert len(accs) == 3 and all(n == '21' for _, _, n in accs)  # 21 val images, each once
    assert float(accs[-1][0]) == pytest.approx(log[-1]['test_acc1'])
    assert torch.load(os.path.join(out, 'checkpoint-2.pth'), weights_only=True)['epoch'] == 2
    assert res.stdout.count('torch.compile: the first steps compile each kind') == (compile_scope == 'blocks')
