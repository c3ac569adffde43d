"""Helpers shared by the test modules (``from helpers import ...``; pytest puts tests/ on ``sys.path``):
the repository's paths, a small model's arguments, generated data, tiny training runs, child
processes, file snapshots and readers of what a run writes. Fixtures are in ``conftest.py``."""
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
MAIN = os.path.join(ROOT, 'main.py')
# a small HorNet: timm kwargs, and the same as --model_kwargs of predict.py / export.py
SMALL = dict(depths=(1, 1, 1, 1), base_dim=16)
SMALL_ARGS = ['--model_kwargs', 'depths=1,1,1,1', 'base_dim=16']
# what a launcher (torchrun, SLURM) leaves in the environment: a child must not inherit ours
_LAUNCHER_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'SLURM_PROCID', 'SLURM_JOB_ID')


def snapshot(root: str) -> dict:
    """Every path under ``root`` (hidden ones too) -> (kind, permission bits, size, mtime, sha256 of the
    bytes or a link's target): what "nothing was changed" compares, before and after a command."""
    out = {}
    if not os.path.lexists(root):
        return out
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ('link', None, None, None, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel + '/'] = ('dir', stat.S_IMODE(st.st_mode), None, None, None)
            else:
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ('file', stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


def make_image_folder(root: str, classes: int = 3, train_per_class: int = 16, val_per_class: int = 8,
                      size: int = 16, seed: int = 0) -> str:
    """ImageNet-layout folder of noisy images whose class is the dominant colour channel
    (survives flips, crops and mild colour jitter). Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', train_per_class), ('val', val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
                img[..., c % 3] += np.uint8(150)
                Image.fromarray(img).save(os.path.join(folder, f'{i:03d}.png'))
    return root


def tiny_argv(data: str, out: str, **overrides) -> list[str]:
    """``main.py`` flags for a tiny, fast, deterministic CPU run on :func:`make_image_folder` data.

    ``overrides`` replace or add flags (``flag=value``; a value with spaces is several words);
    ``None`` or ``''`` leaves the flag out (so ``out=''`` gives no ``--output_dir``).
    """
    flags: dict[str, object] = dict(
        model='hornet_tiny_gf', depths='1 1 1 1', base_dim=16, input_size=32, nb_classes=3,
        data_path=data, output_dir=out, device='cpu', batch_size=8, epochs=2, warmup_epochs=0,
        lr=2e-3, num_workers=0, mixup=0, cutmix=0, smoothing=0, aa='none', reprob=0, color_jitter=0,
        print_freq=100, save_ckpt_num=5)
    flags.update(overrides)
    argv = []
    for k, v in flags.items():
        if v is None or v == '':
            continue
        argv.append(f'--{k}')
        argv.extend(str(v).split())
    return argv


def stop_inside_epoch_1(cmd, sig, at_batch, wait_for_step_file=False):
    """Start ``cmd`` (main.py with ``--print_freq 1``), send ``sig`` once epoch 1 has logged batch
    ``at_batch`` (``wait_for_step_file``: and a step checkpoint of epoch 1 was saved); returns the exit
    code and the output."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith('Epoch: [1]') and int(line.split('[')[2].split('/')[0]) >= at_batch:
            if wait_for_step_file and not any('saved' in ln and '(epoch 1,' in ln for ln in seen[-3:]):
                continue  # SIGKILL: only after a step checkpoint of this epoch was written
            os.kill(proc.pid, sig)
            break
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    return proc.returncode, ''.join(seen) + rest


def read_log(folder: str) -> list[dict]:
    """The records of ``folder/log.txt``, one JSON object a line (strict: any other line fails)."""
    with open(os.path.join(folder, 'log.txt')) as f:
        return [json.loads(line) for line in f]


def free_port() -> int:
    """A TCP port that is free on localhost now (for a rendezvous or a master port)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def subprocess_env(pythonpath: str | None = ROOT, **extra: str) -> dict[str, str]:
    """This process's environment for a child Python: one OpenMP thread, no launcher variables,
    weights-only loading not switched off, no downloads; ``PYTHONPATH`` set to ``pythonpath``
    (``None``: removed, so only an installed package or the script's own location finds the code)."""
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_DATASETS_OFFLINE='1')
    for k in (*_LAUNCHER_VARS, 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', 'PYTHONPATH'):
        env.pop(k, None)
    if pythonpath is not None:
        env['PYTHONPATH'] = pythonpath
    env.update(extra)
    return env


def run_python(args: Sequence[str], cwd: str = ROOT, timeout: float = 300, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script and its flags, ``-m module ...`` or ``-c code``) in a child process
    started in ``cwd`` with :func:`subprocess_env` (or ``env``); stdout/stderr captured as text."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``: the relative error of ``a`` against the expected ``b``."""
    return ((a - b).norm() / b.norm()).item()


def plain(x):
    """An mmengine config value as plain Python (ConfigDict -> dict, tuples/lists -> lists)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def tensorboard_events(folder: str) -> list:
    """Every event (tensorboardX ``Event`` protos) of the TFRecord event files in ``folder``, file by
    file in name order. A record is: length (8 bytes, little-endian), its CRC (4), data, data CRC (4)."""
    from tensorboardX.proto import event_pb2
    events = []
    for name in sorted(os.listdir(folder)):
        if not name.startswith('events.out.tfevents'):
            continue
        with open(os.path.join(folder, name), 'rb') as f:
            raw = f.read()
        pos = 0
        while pos < len(raw):
            n = int.from_bytes(raw[pos:pos + 8], 'little')
            events.append(event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def quick_tier(names, quick) -> list:
    """Parameters for ``pytest.mark.parametrize``: the ``quick`` ones run in the quick tier
    (``-m "not slow"``), the others are marked slow (CI runs them all)."""
    missing = set(quick) - set(names)
    assert not missing, f'quick_tier: {missing} not among the parameters'
    return [n if n in quick else pytest.param(n, marks=pytest.mark.slow) for n in names]


class LoopbackHandler(SimpleHTTPRequestHandler):
    """Serves a folder; files named in ``server.cut`` send their full Content-Length but only
    the first half of the body, then the connection closes (an interrupted download)."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip('/')
        if name not in self.server.cut:
            return super().do_GET()
        data = open(os.path.join(self.directory, name), 'rb').read()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


def documented_commands(script: str, doc: str = 'TRAINING.md') -> list[list[str]]:
    """The arguments of every ``python <script> ...`` command in the code blocks of ``doc``
    (bash line joining and ``#`` comments handled)."""
    import re
    import shlex
    with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
        text = f.read()
    found = []
    for block in re.findall(r'^```\n(.*?)^```', text, re.S | re.M):
        for line in block.replace('\\\n', '').splitlines():
            words = shlex.split(line.split('#')[0]) if line.strip() else []
            if script in words:
                found.append(words[words.index(script) + 1:])
    return found
