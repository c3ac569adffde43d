"""Training utilities: distributed setup, progress logging, loss scaling, loggers (checkpoint files:
``run_dir.py``).

Everything here is plumbing for ``main.py`` and ``engine.py``; nothing here knows about HorNet.
"""
import argparse
import contextlib
import datetime
import functools
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger('hornet')


class TrainingError(RuntimeError):
    """An error the user can fix (bad data, bad flag, bad checkpoint); ``main.py`` prints its
    message and exits with a non-zero code instead of a traceback."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


def str2bool(v: Any) -> bool:
    """``argparse`` type for ``--flag true/false`` (also yes/no, 1/0)."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ('true', 't', 'yes', 'y', '1'):
        return True
    if s in ('false', 'f', 'no', 'n', '0'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {v!r}')


# ----------------------------------------------------------------------------- distributed

def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def reduce_device() -> torch.device:
    """Where tensors must live for collectives: the current GPU under NCCL, else CPU."""
    if is_dist_avail_and_initialized() and dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def init_distributed_mode(args: argparse.Namespace) -> None:
    """Set ``args.rank/world_size/gpu/distributed`` and join the process group if launched as one.

    Sources, in order: torchrun / ``torch.distributed.launch`` (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``; ``--local-rank`` / ``--local_rank`` are also honoured), OpenMPI on ITP
    (``--dist_on_itp``), SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, with
    ``MASTER_ADDR``/``MASTER_PORT`` set by the launcher). With none of them: a single process.
    The backend is ``args.dist_backend`` (``--dist_backend``), by default NCCL on CUDA and gloo
    otherwise; gloo on CUDA lets two processes share one GPU (NCCL refuses that).
    """
    env = os.environ
    if args.dist_on_itp:
        args.rank = int(env['OMPI_COMM_WORLD_RANK'])
        args.world_size = int(env['OMPI_COMM_WORLD_SIZE'])
        args.gpu = int(env['OMPI_COMM_WORLD_LOCAL_RANK'])
        env.setdefault('RANK', str(args.rank))
        env.setdefault('WORLD_SIZE', str(args.world_size))
        env.setdefault('LOCAL_RANK', str(args.gpu))
    elif 'RANK' in env and 'WORLD_SIZE' in env:
        args.rank = int(env['RANK'])
        args.world_size = int(env['WORLD_SIZE'])
        args.gpu = int(env.get('LOCAL_RANK', max(getattr(args, 'local_rank', -1), 0)))
    elif 'SLURM_PROCID' in env and int(env.get('SLURM_NTASKS', '1')) > 1:
        args.rank = int(env['SLURM_PROCID'])
        args.world_size = int(env['SLURM_NTASKS'])
        args.gpu = int(env.get('SLURM_LOCALID', 0))
        env.setdefault('RANK', str(args.rank))
        env.setdefault('WORLD_SIZE', str(args.world_size))
        env.setdefault('LOCAL_RANK', str(args.gpu))
    else:
        args.rank, args.world_size, args.gpu, args.distributed = 0, 1, 0, False
        return

    args.distributed = True
    use_cuda = str(args.device).startswith('cuda') and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.device = f'cuda:{args.gpu}'
    backend = getattr(args, 'dist_backend', None) or ('nccl' if use_cuda else 'gloo')
    if backend == 'nccl' and not use_cuda:
        raise TrainingError(f'--dist_backend nccl needs CUDA (--device {args.device}); pass --dist_backend gloo')
    args.dist_backend = backend
    if args.dist_url == 'env://':
        env.setdefault('MASTER_ADDR', '127.0.0.1')
        env.setdefault('MASTER_PORT', '29500')
    dist.init_process_group(backend=args.dist_backend, init_method=args.dist_url,
                            world_size=args.world_size, rank=args.rank)
    dist.barrier()


@torch.no_grad()
def max_param_divergence(model: torch.nn.Module) -> float:
    """Largest absolute difference between this rank's parameters and rank 0's (0 when all
    ranks agree, as DDP guarantees; anything else means the replicas drifted apart)."""
    if not is_dist_avail_and_initialized():
        return 0.0
    diff = torch.zeros((), dtype=torch.float64, device=reduce_device())
    for p in model.parameters():
        ref = p.detach().clone().to(reduce_device())
        dist.broadcast(ref, src=0)
        diff = torch.maximum(diff, (ref.double() - p.detach().to(reduce_device()).double()).abs().max())
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def setup_logging() -> None:
    """Progress to stdout on rank 0 only; warnings of every rank to stdout, errors to stderr."""
    root = logging.getLogger('hornet')
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.ERROR)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    for h in (out, err):
        h.setFormatter(logging.Formatter('%(message)s'))
        root.addHandler(h)
    root.propagate = False


def keep_freed_cpu_memory() -> bool:
    """Let this process keep the CPU memory it frees, for reuse, instead of handing it back to the OS.

    glibc's malloc serves large blocks (128 KiB to 32 MiB and up) with a fresh ``mmap`` and unmaps
    them when freed, and trims the top of its heap; every large activation of a CPU step is then
    page-faulted in again, zero-filled by the kernel. With ``mmap`` off for the heap's blocks and
    trimming off, freed blocks are reused (faults and step times before and after:
    benchmarks/results/cpu_kernels_2threads.md). The cost: the process keeps its peak heap. Linux
    with glibc only (``mallopt``); returns whether it applied. Fork-started data-loader workers
    inherit the setting.
    """
    if not sys.platform.startswith('linux'):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL('libc.so.6').mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def seed_for(*keys: int) -> int:
    """A well-mixed 32-bit seed from integers such as (seed, rank, epoch)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- deferred signals

_pending_signals: dict[int, Callable[..., Any]] = {}
_received: set[int] = set()  # deferred signals that reached this process since defer_signal
_held = [0]  # depth of signals_held() blocks
_to_boundary = [0]  # depth of stops_at_step_boundary() blocks


def defer_signal(signum: int, announce: bool = False) -> Callable[[], None] | None:
    """Make the Python handler now installed for ``signum`` wait while a :func:`signals_held` block
    runs (a training or evaluation step, a checkpoint write, a TensorBoard update); it runs when the
    outermost block ends. Elsewhere (waiting for data, start-up) it runs at once, as before.

    A handler that raises to stop the run (submitit's preemption handler raises ``SystemExit``,
    Ctrl-C ``KeyboardInterrupt``) must not fire in the middle of such a block: inside ``torch.save``
    the exception becomes a failed write (torch reports it as a ``RuntimeError``), and inside
    TensorBoard's writer queue it leaves the writer's exit hook waiting forever, while the other
    ranks wait for this one. A second signal while one waits runs the handler at once (a way out of
    a step that never ends), as does the signal in a forked child (a DataLoader worker keeps the
    handler's own behaviour). A handler run at once whose exception is swallowed where it landed
    runs again when the next held block ends. ``announce``: say on stderr when it is held back.

    Returns a function that puts the original handler back (dropping a pending call), or None
    (nothing changed) when no Python handler is installed or not on the main thread.
    """
    handler = signal.getsignal(signum)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        return None
    owner = os.getpid()

    def record(sig: int, frame: Any) -> None:
        if os.getpid() != owner:
            handler(sig, frame)
            return
        _received.add(sig)
        if _held[0] or _to_boundary[0]:
            if _pending_signals.pop(sig, None) is not None:
                handler(sig, frame)  # the second one: at once (what it raises leaves the block)
                return
            _pending_signals[sig] = handler
            if announce:  # os.write: the interrupted code may be in the middle of writing to sys.stderr
                os.write(2, f'[hornet] {signal.Signals(sig).name} received: handled when the current step '
                            'or write ends\n'.encode())
            return
        # at once; it stays pending until the handler returns, so a stop request raised where the
        # exception is swallowed (logging's at-fork hook while a DataLoader starts its workers)
        # is raised again when the next held block ends
        _pending_signals[sig] = handler
        handler(sig, frame)
        _pending_signals.pop(sig, None)

    def restore() -> None:
        _pending_signals.pop(signum, None)
        _received.discard(signum)
        signal.signal(signum, handler)

    signal.signal(signum, record)
    return restore


def signal_received(signum: int) -> bool:
    """Whether ``signum``, deferred with :func:`defer_signal`, reached this process (until restored)."""
    return signum in _received


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Signals set up with :func:`defer_signal` that arrive inside the block are handled when the
    outermost block ends, also when an exception leaves it: the stop request then wins over the
    error (which the same signal may have caused, e.g. a DataLoader worker it killed)."""
    _held[0] += 1
    try:
        yield
    finally:
        _held[0] -= 1
        while not _held[0] and not _to_boundary[0] and _pending_signals:
            sig, handler = _pending_signals.popitem()
            handler(sig, None)


@contextlib.contextmanager
def stops_at_step_boundary() -> Iterator[None]:
    """Inside the block (an epoch of training), a deferred signal waits, also between held blocks
    (waiting for data, inside an ``--update_freq`` window), until :func:`handle_pending_signals` runs
    it at an optimizer-step boundary, after a step checkpoint; a second one still stops at once.
    Leaving the block handles what is still pending."""
    _to_boundary[0] += 1
    try:
        yield
    finally:
        _to_boundary[0] -= 1
        if not _to_boundary[0] and not _held[0]:
            handle_pending_signals()


def stop_pending() -> bool:
    """Whether a deferred signal (a stop request) waits to be handled."""
    return bool(_pending_signals)


def handle_pending_signals() -> None:
    """Run the handlers of deferred signals now (they usually raise to stop the run)."""
    while _pending_signals:
        sig, handler = _pending_signals.popitem()
        handler(sig, None)


def rng_states() -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU and CUDA) as weights-only-loadable data."""
    import random
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = dict(
        python=[version, torch.tensor(state, dtype=torch.int64), gauss],
        numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[float(x) for x in np_state[2:]]],
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out['cuda'] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where CUDA is in use)."""
    import random
    version, state, gauss = states['python']
    random.setstate((version, tuple(int(x) for x in state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------- progress

class SmoothedValue:
    """Running statistics of a scalar: windowed median/average plus the global average."""

    def __init__(self, window_size: int = 20, fmt: str = '{median:.4f} ({global_avg:.4f})'):
        self.deque: deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum count and total over ranks (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=reduce_device())
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self) -> float:
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """Named :class:`SmoothedValue` meters and a progress iterator that logs with an ETA."""

    def __init__(self, delimiter: str = '  '):
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs: float) -> None:
        for k, v in kwargs.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            self.meters[k].update(float(v))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def state_dict(self) -> dict[str, Any]:
        """The running statistics (windows, totals, counts), for a step checkpoint."""
        return {k: dict(window=[float(v) for v in m.deque], window_size=m.deque.maxlen, total=float(m.total),
                        count=int(m.count), fmt=m.fmt) for k, m in self.meters.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in state.items():
            meter = SmoothedValue(window_size=m['window_size'], fmt=m['fmt'])
            meter.deque.extend(m['window'])
            meter.total, meter.count = m['total'], m['count']
            self.meters[k] = meter

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def __str__(self) -> str:
        return self.delimiter.join(f'{name}: {meter}' for name, meter in self.meters.items())

    def log_every(self, iterable: Iterable, print_freq: int, header: str = '',
                  total: int | None = None) -> Iterator:
        """Yield from ``iterable``, logging progress, ETA and timings every ``print_freq`` items."""
        total = len(iterable) if total is None else total
        width = len(str(total))
        start = end = time.time()
        iter_time, data_time = SmoothedValue(fmt='{avg:.4f}'), SmoothedValue(fmt='{avg:.4f}')
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                logger.info(self.delimiter.join([
                    f'{header} [{i:>{width}}/{total}]', f'eta: {eta}', str(self),
                    f'time: {iter_time}', f'data: {data_time}']))
            end = time.time()
        took = datetime.timedelta(seconds=int(time.time() - start))
        logger.info(f'{header} total time: {took} ({(time.time() - start) / max(total, 1):.4f} s / it)')


# ----------------------------------------------------------------------------- loss scaling

def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together, in float32 (0-dim, on their device): one foreach kernel
    per device and dtype where torch has them (CUDA), else per tensor."""
    tensors = [t.float() for t in tensors]  # no copy for float32 gradients
    if not tensors:
        return torch.zeros(())
    get_total_norm = getattr(torch.nn.utils, 'get_total_norm', None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


class LossScaler:
    """Backward + optimizer step with optional fp16 gradient scaling and gradient clipping.

    ``torch.amp.GradScaler`` is only enabled for fp16; for fp32 and bf16 it is a pass-through,
    so one code path serves all precisions.
    """

    def __init__(self, device_type: str = 'cuda', enabled: bool = False):
        self._scaler = torch.amp.GradScaler(device_type, enabled=enabled)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 clip_grad: float | None = None, parameters: Iterable | None = None,
                 update_grad: bool = True) -> torch.Tensor | None:
        """Backward ``loss``; when ``update_grad``, clip, step and return the gradient norm (a 0-dim
        tensor on the gradients' device: reading it is left to the caller, so a step needs no host sync)."""
        self._scaler.scale(loss).backward()
        if not update_grad:
            return None
        self._scaler.unscale_(optimizer)
        params = [p for p in parameters if p.grad is not None]
        if clip_grad is not None and clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
        else:
            norm = total_norm([p.grad.detach() for p in params])
        self._scaler.step(optimizer)
        self._scaler.update()
        return norm.detach()

    def state_dict(self) -> dict:
        return self._scaler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._scaler.load_state_dict(state_dict)


# ----------------------------------------------------------------------------- checkpoints

def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """``vars(args)`` reduced to types that ``torch.load(weights_only=True)`` accepts."""
    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return str(v)
    return {k: plain(v) for k, v in vars(args).items()}


# ----------------------------------------------------------------------------- loggers

def tensorboard_writer_class() -> tuple[type, str]:
    """``(SummaryWriter, its log-folder keyword)``: tensorboardX's (the original's), else PyTorch's own
    ``torch.utils.tensorboard`` (needs the ``tensorboard`` package; GPU images often have it but not
    tensorboardX); neither: a :class:`TrainingError` that says what to install."""
    try:
        from tensorboardX import SummaryWriter
        return SummaryWriter, 'logdir'
    except ImportError:
        pass
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter, 'log_dir'
    except ImportError:
        raise TrainingError('TensorBoard logging (into --log_dir or --output_dir) needs tensorboardX or '
                            'tensorboard: pip install tensorboardX') from None


class TensorboardLogger:
    """Scalars to TensorBoard event files via tensorboardX, or ``torch.utils.tensorboard`` without it."""

    def __init__(self, log_dir: str, purge_step: int | None = None):
        writer_cls, dir_key = tensorboard_writer_class()
        # purge_step (the first step of a resumed run): TensorBoard drops the events a killed run
        # wrote from that step on, so re-trained steps are not shown twice.
        # A unique suffix: tensorboardX names files by the second and opens them 'wb', so a rerun
        # within the same second would overwrite the previous run's events
        self.writer = writer_cls(**{dir_key: log_dir}, purge_step=purge_step,
                                 filename_suffix=f'.{os.getpid()}.{secrets.token_hex(3)}')

    def update(self, head: str, step: int, **kwargs: float) -> None:
        """Write each ``kwargs`` value as ``<head>/<name>`` at ``step`` (``None`` values are skipped)."""
        with signals_held():  # an exception inside the writer's queue would hang its exit hook
            for k, v in kwargs.items():
                if v is None:
                    continue
                if isinstance(v, torch.Tensor):
                    v = v.item()
                self.writer.add_scalar(f'{head}/{k}', float(v), step)

    def flush(self) -> None:
        with signals_held():
            self.writer.flush()


class WandbLogger:
    """Weights & Biases run, only created with ``--enable_wandb true``."""

    def __init__(self, args: argparse.Namespace):
        try:
            import wandb
        except ImportError as e:
            raise TrainingError('--enable_wandb true needs the wandb package: pip install wandb') from e
        self._wandb = wandb
        if wandb.run is None:
            wandb.init(project=args.project, name=args.exp_name or None, config=plain_args(args))
        self.ckpt = args.wandb_ckpt

    def log_epoch(self, stats: dict[str, Any]) -> None:
        self._wandb.log({k: v for k, v in stats.items() if isinstance(v, (int, float))})

    def log_checkpoints(self, output_dir: str) -> None:
        if not self.ckpt:
            return
        art = self._wandb.Artifact(f'{self._wandb.run.id}_model', type='model')
        art.add_dir(output_dir)
        self._wandb.log_artifact(art, aliases=['latest'])

    def finish(self) -> None:
        self._wandb.finish()



def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a user can fix the input: :class:`TrainingError` (each script's own
    error types derive from it) and the model library's (a checkpoint file that cannot be read or
    does not fit, a failed download of released weights)."""
    from models import CheckpointFileError, CheckpointMismatchError  # the library knows nothing of this module
    from models.hub import DownloadError
    return TrainingError, CheckpointFileError, CheckpointMismatchError, DownloadError


def one_line(e: BaseException) -> str:
    """A user error's message on one line (a KeyError's without quotes; of an error re-raised from a
    DataLoader worker, the last line)."""
    msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
    if 'Original Traceback' in msg:  # the worker's traceback, ending in 'module.Type: message'
        msg = msg.splitlines()[-1]
        msg = re.sub(rf'^[\w.]*\b{type(e).__name__}: ', '', msg)
    return ' '.join(line.strip() for line in msg.splitlines() if line.strip())


def exits_on_user_error(*, exit: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a command's entry function: every failure of a documented command is
    ``error: <one line>`` on stderr and exit status 2, never a traceback. A user error (see
    :func:`user_error_types`) is printed so and the function returns 2 (raises ``SystemExit(2)``
    with ``exit``, for entries whose return value is not the status)."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def entry(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except user_error_types() as e:
                print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
                if exit:
                    raise SystemExit(2) from None
                return 2
        return entry
    return decorate


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``prog: error: ...``), exit status 2,
    like every other failure of a documented command (``--help`` still prints the usage)."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}; see --help\n')
