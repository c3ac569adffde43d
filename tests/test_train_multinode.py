"""Multi-node launch, as TRAINING.md documents it, on one machine: two torchrun agents act as
two nodes of one process each (gloo), meet through a c10d rendezvous or a static master
address, train one epoch and end with bitwise identical weights."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import MAIN, ROOT, free_port, make_image_folder, subprocess_env, tiny_argv


@pytest.mark.slow
@pytest.mark.parametrize('rendezvous', ['c10d', 'static'])
def test_two_nodes_train_to_identical_weights(rendezvous, tmp_path):
    data = make_image_folder(str(tmp_path / 'data'), train_per_class=8, val_per_class=4)
    port = free_port()
    agents = []
    for node in (0, 1):
        if rendezvous == 'c10d':  # the node ranks are handed out by the rendezvous
            launch = ['--rdzv_backend=c10d', f'--rdzv_endpoint=127.0.0.1:{port}', '--rdzv_id=hornet-test']
        else:  # TRAINING.md's form: --node_rank and the master's address on every node
            launch = [f'--node_rank={node}', '--master_addr=127.0.0.1', f'--master_port={port}']
        out = str(tmp_path / f'node{node}')  # each node its own output folder
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1', *launch,
               MAIN, *tiny_argv(data, out, epochs=1, batch_size=4, lr=3e-3)]
        agents.append(subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in agents:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in agents:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in agents] == [0, 0], '\n=====\n'.join(o[-3000:] for o in outputs)
    # global rank 0 (node 0 in the static form, either node with c10d) logs and saves
    leader = [i for i, o in enumerate(outputs) if 'steps per epoch' in o]
    assert len(leader) == 1 and (rendezvous == 'c10d' or leader == [0]), leader
    log = outputs[leader[0]]
    assert 'batch 8 (4 x 1 accumulation x 2 processes), 3 steps per epoch' in log  # 24 images / 8
    # every parameter of rank 1 (the other node) equals rank 0's, broadcast and compared bitwise
    assert 'parameters on 2 ranks: max |difference| from rank 0 = 0\n' in log
    ckpt = torch.load(str(tmp_path / f'node{leader[0]}' / 'checkpoint-0.pth'), map_location='cpu',
                      weights_only=True)
    assert ckpt['epoch'] == 0 and all(torch.isfinite(v).all() for v in ckpt['model'].values())
    assert not os.path.exists(tmp_path / f'node{1 - leader[0]}' / 'checkpoint-0.pth')
