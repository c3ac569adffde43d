"""The files of a training run in ``--output_dir``: checkpoints, ``log.txt`` and the run lock.

One home for everything that reads or writes them (modelled on timm's ``CheckpointSaver``, one
object that owns a run's checkpoint folder):

* writing is atomic: a temp file in the same folder, then ``os.replace``; a killed save leaves at
  most a temp file with our prefix, removed by the next run that takes the folder's lock;
* loading is weights-only (``torch.load(weights_only=True)``): a file is never unpickled, and a
  file that is empty, text, truncated or holds Python objects gives one line saying so;
* the newest *complete* checkpoint is what a rerun resumes from;
* a lock held by the live process keeps a second run out of the folder (``fcntl.flock``: the
  kernel releases it when the process dies, so a killed run never blocks the next one);
* ``log.txt`` holds one strict-JSON line per epoch and is trimmed back on resume.

Reading a weights file (weights-only loading, the entry that holds the weights, prefixes, non-finite
weights) is ``models.state_dict``; adapting a checkpoint to a model (mmpretrain keys, GF filter
resizing, the head) is ``models.hornet.checkpoint_filter_fn``.
"""
import fcntl
import glob
import json
import logging
import math
import os
import re
import secrets
import socket
from argparse import Namespace
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from models.state_dict import CheckpointFileError, check_finite, load_checkpoint
from utils import TrainingError

logger = logging.getLogger('hornet')

TMP_PREFIX = '.tmp-hornet-'  # our temp files; only these are ever cleaned up
LOCK_NAME = '.hornet-run.lock'
LOG_NAME = 'log.txt'
BEST_NAMES = ('checkpoint-best.pth', 'checkpoint-best-ema.pth')
# the mid-epoch checkpoint (a stop, --save_every_minutes): one file, replaced by each newer one and
# removed once an epoch checkpoint is newer; its 'epoch' is the last finished epoch (so an older
# reader resumes at the start of the epoch it stopped in) and its 'step' entry says where in the epoch
STEP_NAME = 'checkpoint-step.pth'
STEP_KEY = 'step'
WEIGHTS_NAME = 'model.safetensors'  # main.py --save_safetensors: the run's best weights, no training state
_EPOCH_RE = re.compile(r'^checkpoint-(\d+)\.pth$')


class CheckpointError(TrainingError, CheckpointFileError):
    """A checkpoint cannot be read or written; the message is one line that names the file. Reading
    errors of :mod:`models.state_dict` come out of this module as this type, so that a training run
    treats them as any other :class:`TrainingError`."""


class OutputDirError(TrainingError):
    """``--output_dir`` cannot be used: not writable, in use by a live run, or holding another
    run's results."""


# ----------------------------------------------------------------------------- writing

def _open_temp(folder: str, kind: str) -> tuple[int, str]:
    """A new file ``folder/.tmp-hornet-<kind>-<random>`` opened for writing. Created with mode
    0666 so the umask decides the permissions (``mkstemp`` would force 0600)."""
    while True:
        path = os.path.join(folder, f'{TMP_PREFIX}{kind}-{secrets.token_hex(6)}')
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _write_atomic(path: str, kind: str, write: Callable[[Any], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _open_temp(folder, kind)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C / SIGTERM mid-save: never leave the temp file behind
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _is_write_failure(e: BaseException) -> bool:
    # torch.save reports a failed write (full disk, file size limit) as a RuntimeError from its
    # zip writer ("enforce fail at inline_container.cc ... file write failed")
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and (
        'inline_container' in str(e) or 'write failed' in str(e)))


def _write_failure_reason(e: BaseException) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e)
    if 'file write failed' in text or 'unexpected pos' in text:
        return 'the file system refused the write (disk full or file size limit?)'
    return text.strip().splitlines()[-1]


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` through a temp file in the same folder and a rename: a
    crash or a failed write never leaves a partial file under ``path``, and an older file of the
    same name stays intact.

    Raises:
        CheckpointError: the write failed (full disk, unwritable folder ...).
    """
    try:
        _write_atomic(path, 'ckpt', lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:
        if not _is_write_failure(e):
            raise
        raise CheckpointError(f'cannot save checkpoint {path}: {_write_failure_reason(e)}') from e


def save_safetensors(state: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Weights as a ``.safetensors`` file (no pickle: any tool can read it safely), atomically like
    :func:`atomic_save`; ``metadata`` (strings) goes into its header.

    Raises:
        CheckpointError: the write failed.
    """
    import safetensors.torch
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    data = safetensors.torch.save(tensors, metadata={'format': 'pt', **(metadata or {})})
    try:
        _write_atomic(path, 'weights', lambda f: f.write(data))
    except OSError as e:
        raise CheckpointError(f'cannot save {path}: {_write_failure_reason(e)}') from e


def clean_temp_files(folder: str) -> list[str]:
    """Remove temp files of killed saves (our prefix only; never call it while another live run
    may write into ``folder``: hold its :class:`RunLock`). Returns the removed names."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + '*')):
        if os.path.isfile(path):
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


# ----------------------------------------------------------------------------- loading

def load_file(path: str, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU
    (:func:`models.state_dict.load_checkpoint`); ``mmap`` maps the tensors instead of reading them
    (cheap: used to look at a file's epoch).

    Raises:
        CheckpointError: ``cannot load checkpoint PATH: <reason>`` for a missing, empty, text,
            truncated or non-weights (e.g. malicious) file, or one that does not hold a dict.
    """
    try:
        return load_checkpoint(path, mmap=mmap)
    except CheckpointFileError as e:
        raise CheckpointError(str(e)) from None


# ----------------------------------------------------------------------------- finding

def list_epoch_checkpoints(output_dir: str) -> list[str]:
    """``checkpoint-N.pth`` files in ``output_dir``, newest epoch first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(output_dir), 'checkpoint-*.pth')):
        m = _EPOCH_RE.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found, reverse=True)]


def _complete_epoch(path: str) -> int | None:
    """The epoch of a complete training checkpoint (model, optimizer, epoch), else None."""
    try:
        ckpt = load_file(path, mmap=True)
    except CheckpointError as e:
        logger.warning(f'skipping {e}')
        return None
    if isinstance(ckpt.get('model'), dict) and 'epoch' in ckpt and isinstance(ckpt['epoch'], int):
        return ckpt['epoch']
    return None


def _step_position(path: str) -> tuple[int, int, int] | None:
    """(epoch it stopped in, batches done, saved epoch) of a complete step checkpoint, else None."""
    try:
        ckpt = load_file(path, mmap=True)
    except CheckpointError as e:
        logger.warning(f'skipping {e}')
        return None
    step = ckpt.get(STEP_KEY)
    if not (isinstance(ckpt.get('model'), dict) and isinstance(ckpt.get('epoch'), int) and isinstance(step, dict)):
        return None
    try:
        return int(step['epoch']), int(step['batch']), ckpt['epoch']
    except (KeyError, TypeError, ValueError):
        return None


def find_latest(output_dir: str) -> tuple[str, int] | None:
    """The newest complete training checkpoint in ``output_dir`` as ``(path, epoch)``, or None.

    Epoch files are tried newest first; a best file holds the same full training state and wins
    when it is newer (a run killed between saving it and its epoch file, or a run saving every
    few epochs), and so does the step checkpoint (:data:`STEP_NAME`) when it is newer by (epoch,
    step); its epoch is the last finished one. Files that do not load (truncated, foreign) are
    skipped with a warning.
    """
    if not output_dir or not os.path.isdir(output_dir):
        return None
    latest = None
    for path in list_epoch_checkpoints(output_dir):
        epoch = _complete_epoch(path)
        if epoch is not None:
            latest = (path, epoch)
            break
    for name in BEST_NAMES:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            epoch = _complete_epoch(path)
            if epoch is not None and (latest is None or epoch > latest[1]):
                latest = (path, epoch)
    # a step checkpoint in epoch e is newer than the epoch files of epochs before e
    step_path = os.path.join(output_dir, STEP_NAME)
    if os.path.isfile(step_path):
        position = _step_position(step_path)
        if position is not None and (latest is None or position[0] > latest[1]):
            latest = (step_path, position[2])
    return latest


def find_latest_checkpoint(output_dir: str) -> str | None:
    """Path of :func:`find_latest`, or None."""
    found = find_latest(output_dir)
    return found[0] if found else None


def prune_checkpoints(output_dir: str, keep: int) -> list[str]:
    """Keep the ``keep`` newest ``checkpoint-N.pth`` files (``keep <= 0``: all); best files are
    never pruned. Returns the removed paths."""
    if keep <= 0:
        return []
    removed = list_epoch_checkpoints(output_dir)[keep:]
    for path in removed:
        os.remove(path)
    return removed


# ----------------------------------------------------------------------------- log.txt

def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf: a reader sees null, never a bare NaN
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


def append_log(output_dir: str, stats: dict[str, Any]) -> None:
    """One strict-JSON line per epoch in ``output_dir/log.txt`` (non-finite numbers become null)."""
    line = json.dumps(_finite_or_none(stats), allow_nan=False)
    path = os.path.join(output_dir, LOG_NAME)
    try:
        with open(path, 'a', encoding='utf-8') as f:
            f.write(line + '\n')
    except OSError as e:
        raise OutputDirError(f'cannot write {path}: {e.strerror or e}; the checkpoints are intact, free space '
                             'or fix the folder and rerun the same command to resume') from None


def check_writable(folder: str, flag: str) -> None:
    """Create ``folder`` if needed and write a probe file into it (removed again).

    Raises:
        OutputDirError: it cannot be created or written.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = _open_temp(folder, 'probe')
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputDirError(f'cannot write to {flag} {folder}: {e.strerror or e}; choose a writable folder') from None


def _is_log_row(line: str) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get('epoch'), int)


def foreign_log(output_dir: str) -> str | None:
    """Why ``output_dir/log.txt`` is not a log this project wrote (None: it is ours, or there is none).

    Ours holds one JSON object with an integer ``epoch`` per line and is never empty (a trim to no
    line removes it); the last line may be cut short by a kill. Anything else (a user's notes, a
    console log that ``| tee OUTDIR/log.txt`` is writing, an empty file) is someone else's file:
    it is never appended to, trimmed or removed.
    """
    path = os.path.join(output_dir, LOG_NAME)
    if not os.path.lexists(path):
        return None
    if not os.path.isfile(path) or os.path.islink(path):
        return 'it is not a regular file'
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.read().split('\n')
    # the text after the last newline is '' or a line a kill cut short: not judged
    body = [ln for ln in lines[:-1] if ln.strip()]
    if not body:
        return 'it is empty' if not ''.join(lines).strip() else 'it holds no JSON line of an epoch'
    bad = next((i for i, ln in enumerate(body) if not _is_log_row(ln)), None)
    if bad is not None:
        return f'line {bad + 1} is not a JSON line of an epoch'
    return None


def read_log(output_dir: str) -> list[dict[str, Any]]:
    """The complete JSON lines of ``log.txt`` that carry an integer ``epoch`` (others are skipped)."""
    path = os.path.join(output_dir, LOG_NAME)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get('epoch'), int):
                rows.append(row)
    return rows


def trim_log(output_dir: str, start_epoch: int) -> int:
    """Keep only the ``log.txt`` lines of epochs before ``start_epoch`` (later ones are about to
    be trained again after a resume; a line cut short by a kill is dropped). Atomic. Returns the
    number of lines removed."""
    path = os.path.join(output_dir, LOG_NAME)
    if not os.path.isfile(path):
        return 0
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.readlines()
    # re-encoded strictly: a bare NaN written by an older version becomes null
    kept = [json.dumps(_finite_or_none(r), allow_nan=False) + '\n'
            for r in read_log(output_dir) if r['epoch'] < start_epoch]
    if not kept:  # ours is never empty: an empty log.txt is someone else's (see foreign_log)
        os.remove(path)
    elif len(kept) != len(lines):
        _write_atomic(path, 'log', lambda f: f.write(''.join(kept).encode('utf-8')))
    return len(lines) - len(kept)


# ----------------------------------------------------------------------------- run lock

class RunLock:
    """An exclusive lock on ``output_dir`` held by this process (``fcntl.flock`` on an open file
    that names the holder). The kernel drops it when the process dies, so the lock file a killed
    run leaves behind does not block; :meth:`release` removes the file."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            OutputDirError: the folder cannot be written, or a live run holds the lock.
        """
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise OutputDirError(f'cannot write to --output_dir {self.output_dir}: {e.strerror or e}; '
                                     'choose a writable folder') from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    owner = os.read(fd, 200).decode('utf-8', 'replace').strip() or 'unknown process'
                finally:
                    os.close(fd)
                raise OutputDirError(
                    f'--output_dir {self.output_dir} is in use by another run ({owner}); wait for it to '
                    'finish, or choose another --output_dir') from None
            try:  # the holder may have removed the file between our open and flock: retry
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}\n'.encode())
            except OSError as e:
                os.close(fd)
                raise OutputDirError(f'cannot write to --output_dir {self.output_dir}: '
                                     f'{e.strerror or e}; choose a writable folder') from None
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still holding it, so no one else's file is removed
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# ----------------------------------------------------------------------------- the run's folder

LABEL_NAMES = 'label_names'  # the class list a model was trained with (also the hub config's key)


def label_names(ckpt: dict[str, Any]) -> list[str] | None:
    """The class names (in label order) a checkpoint was trained with, or None if it does not say
    (released weights, older checkpoints)."""
    for k in (LABEL_NAMES, 'class_names'):
        names = ckpt.get(k)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            return list(names)
    return None


def saved_args(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The training flags a checkpoint saved (``args``: main.py's dict, or the argparse namespace of
    older checkpoints); empty if it saved none (released weights)."""
    found = ckpt.get('args')
    if isinstance(found, Namespace):
        found = vars(found)
    return dict(found) if isinstance(found, dict) else {}


def imagenet_mean_and_std(train_args: dict[str, Any]) -> bool:
    """Whether a model was trained (and evaluated) with ImageNet's mean and std, by the training flags
    its checkpoint saved (:func:`saved_args`): ``main.py --imagenet_default_mean_and_std``, default
    true; false: Inception's (0.5)."""
    return bool(train_args.get('imagenet_default_mean_and_std', True))


@dataclass
class ResumeState:
    """Where a resumed run continues: the first epoch to train and the best accuracies so far."""
    path: str = ''
    start_epoch: int = 0
    max_accuracy: float = 0.0
    max_accuracy_ema: float = 0.0
    training_state: bool = False  # optimizer, scaler and epoch were restored
    has_ema: bool = False  # the file held EMA weights
    checkpoint: dict[str, Any] | None = None  # the loaded file

    @property
    def best(self) -> dict[str, float]:
        return dict(max_accuracy=self.max_accuracy, max_accuracy_ema=self.max_accuracy_ema)


def _effective_batch(a: dict[str, Any]) -> tuple[int, int, int] | None:
    try:
        return int(a['batch_size']), int(a.get('update_freq', 1)), int(a.get('world_size', 1))
    except (KeyError, TypeError, ValueError):
        return None


def _flag_error(dir_: str, files: list[str], auto_resume: bool) -> OutputDirError:
    shown = ', '.join(files[:5]) + (f' and {len(files) - 5} more' if len(files) > 5 else '')
    how = ('rerun with --auto_resume true to continue that run, ' if not auto_resume else '')
    return OutputDirError(
        f'--output_dir {dir_} already holds results of another run ({shown}) that this run would '
        f'overwrite; {how}choose another --output_dir, or pass --overwrite true to replace them')


class CheckpointManager:
    """The checkpoint folder of one training run (rank 0 only writes).

    Call :meth:`open` (lock, temp clean-up, which checkpoint to resume) before training and
    :meth:`close` at the end; :meth:`save` writes ``checkpoint-<name>.pth`` atomically.
    """

    def __init__(self, output_dir: str, keep: int = 3):
        self.output_dir = output_dir
        self.keep = keep
        self.lock = RunLock(output_dir)
        self.last_saved: str | None = None  # the newest file this run wrote
        self._created = False

    # -- start of a run
    def open(self, resume: str = '', auto_resume: bool = True, overwrite: bool = False,
             keep_files: Sequence[str] = ()) -> str:
        """Lock the folder and decide what to resume from; returns that path ('' for a fresh start).

        The newest complete checkpoint in the folder wins (also over an explicit ``resume``), so a
        rerun of any command continues where the last one stopped. Starting over a folder that
        holds another run's checkpoints or log (``auto_resume`` false, or nothing loadable) is
        refused unless ``overwrite``, which starts over (also where a checkpoint could be resumed)
        and removes those files first, but never ``resume`` nor a file in ``keep_files`` (the
        files the command line reads, e.g. ``--finetune``). A ``log.txt`` this project did not
        write is refused whatever the flags: it is never appended to, trimmed or removed.
        """
        self._created = not os.path.isdir(self.output_dir)
        try:
            os.makedirs(self.output_dir, exist_ok=True)
        except OSError as e:
            raise OutputDirError(f'cannot create --output_dir {self.output_dir}: {e.strerror or e}; '
                                 'choose a writable folder') from None
        self.lock.acquire()
        try:
            removed = clean_temp_files(self.output_dir)
            if removed:
                logger.info(f'removed temp files of an interrupted save: {", ".join(removed)}')
            foreign = foreign_log(self.output_dir)
            if foreign:
                raise OutputDirError(
                    f'{os.path.join(self.output_dir, LOG_NAME)} is not a log of this project ({foreign}); '
                    'training writes its log.txt there and never changes a file it did not create: move '
                    'that file, or choose another --output_dir')
            return self._choose_resume(resume, auto_resume, overwrite, keep_files)
        except BaseException:
            self.lock.release()
            raise

    def _choose_resume(self, resume: str, auto_resume: bool, overwrite: bool, keep_files: Sequence[str]) -> str:
        latest = find_latest(self.output_dir) if auto_resume and not overwrite else None
        if latest is not None:
            path, epoch = latest
            where = f'inside epoch {epoch + 1}' if os.path.basename(path) == STEP_NAME else f'epoch {epoch}'
            if resume and os.path.abspath(resume) != os.path.abspath(path):
                logger.info(f'resuming from {path} ({where}), the newest checkpoint in --output_dir, '
                            f'instead of --resume {resume}')
            else:
                logger.info(f'resuming from {path} ({where}), the newest checkpoint in --output_dir')
            return path
        # a fresh start (or --resume from elsewhere): the folder must not hold another run's results
        results = [os.path.basename(p) for p in list_epoch_checkpoints(self.output_dir)]
        results += [n for n in (*BEST_NAMES, STEP_NAME, WEIGHTS_NAME)
                    if os.path.exists(os.path.join(self.output_dir, n))]
        if read_log(self.output_dir):  # epochs of a run with no checkpoint to resume: its results too
            results.append(LOG_NAME)
        if results and not overwrite:
            raise _flag_error(self.output_dir, results, auto_resume)
        named = {os.path.realpath(p) for p in (resume, *keep_files) if p}
        kept = [n for n in results if os.path.realpath(os.path.join(self.output_dir, n)) in named]
        removed = [n for n in results if n not in kept]
        for name in removed:
            os.remove(os.path.join(self.output_dir, name))
        if removed:
            logger.warning(f'--overwrite: removed {", ".join(removed)} from {self.output_dir}')
        if kept:
            logger.warning(f'--overwrite: kept {", ".join(kept)}, which the command line reads; a save under '
                           'the same name replaces it')
        return resume

    def close(self) -> None:
        """Release the lock; a folder this run created and left empty (it stopped at start-up) is
        removed again."""
        self.lock.release()
        if self._created:
            try:
                os.rmdir(self.output_dir)
            except OSError:
                pass  # not empty: the run's results

    # -- during a run
    def save(self, name: str, state: dict[str, Any]) -> str:
        """Write ``checkpoint-<name>.pth`` atomically; prune epoch files after a numbered save.

        Raises:
            CheckpointError: the write failed; the message names the intact previous checkpoint.
        """
        path = os.path.join(self.output_dir, f'checkpoint-{name}.pth')
        try:
            atomic_save(state, path)
        except CheckpointError as e:
            intact = self.last_saved or find_latest_checkpoint(self.output_dir)
            note = (f'the previous checkpoint {intact} is intact' if intact else 'no earlier checkpoint exists')
            raise CheckpointError(f'{e}; {note}; free space or fix the folder, then rerun the same command '
                                  'to resume') from None
        self.last_saved = path
        if _EPOCH_RE.match(os.path.basename(path)):
            prune_checkpoints(self.output_dir, self.keep)
        if path != os.path.join(self.output_dir, STEP_NAME):  # an epoch-end file: newer than the step one
            self.remove_step_checkpoint()
        return path

    def save_step(self, state: dict[str, Any]) -> str:
        """Write the step checkpoint (:data:`STEP_NAME`, replacing the older one) atomically."""
        return self.save(STEP_NAME[len('checkpoint-'):-len('.pth')], state)

    def remove_step_checkpoint(self) -> None:
        """Drop the step checkpoint once a newer epoch checkpoint exists (we wrote both)."""
        try:
            os.remove(os.path.join(self.output_dir, STEP_NAME))
        except FileNotFoundError:
            pass


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, path: str) -> None:
    """``optimizer.load_state_dict`` that refuses, in one line, a state of other parameter groups
    (torch raises a ValueError, or loads the state of one layer into another of the same count)."""
    hint = ('its parameter groups belong to another model or grouping; resume with the flags of that run, or '
            f'pass --finetune {path} to start a new run from its weights')
    groups = state.get('param_groups') if isinstance(state, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f'cannot resume the optimizer from {path}: its optimizer state is not a state dict')
    theirs, mine = [len(g.get('params', ())) for g in groups], [len(g['params']) for g in optimizer.param_groups]
    if theirs != mine:
        raise CheckpointError(f'cannot resume the optimizer from {path}: it has {len(theirs)} parameter groups '
                              f'of sizes {theirs}, this run {len(mine)} of sizes {mine}; {hint}')
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f'cannot resume the optimizer from {path}: {type(e).__name__}: {e}; {hint}') from None


def resume(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
           loss_scaler: Any = None, model_ema: Any = None, load_training_state: bool = True,
           prepare_state: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
           current_args: dict[str, Any] | None = None, start_epoch: int = 0) -> ResumeState:
    """Load checkpoint ``path`` into ``model`` (strictly), its EMA, and with
    ``load_training_state`` the optimizer and loss scaler.

    ``prepare_state`` turns the file into the model's state dict (unwrapping, key checks).
    Returns the epoch to continue at (``start_epoch`` for a file without training state) and the
    best accuracies so far; nothing is written into the caller's arguments. With
    ``current_args`` a change of the effective batch (batch x accumulation x processes) is warned
    about. A training checkpoint with non-finite weights is refused.

    Raises:
        CheckpointError: the file does not load or holds NaN/inf weights.
    """
    ckpt = load_file(path)
    state = prepare_state(ckpt) if prepare_state is not None else ckpt['model']
    try:
        check_finite(state, path)
    except CheckpointFileError as e:
        raise CheckpointError(str(e)) from None
    model.load_state_dict(state)
    out = ResumeState(path=path, start_epoch=start_epoch, checkpoint=ckpt)
    out.has_ema = isinstance(ckpt.get('model_ema'), dict)
    if model_ema is not None:
        if out.has_ema:
            model_ema.module.load_state_dict(ckpt['model_ema'])
        else:  # released checkpoints hold no EMA: start it at the weights
            model_ema.set(model)
            logger.info(f'{path} holds no EMA weights: the EMA starts at the loaded weights')
    if not load_training_state or optimizer is None or 'optimizer' not in ckpt or 'epoch' not in ckpt:
        return out
    then_args = ckpt.get('args') if isinstance(ckpt.get('args'), dict) else None
    if current_args is not None and then_args is not None:
        _check_same_optimizer(path, then_args, current_args)
    # the command line wins over the file for every optimizer setting (lr scales of --layer_decay,
    # betas, eps, momentum ...); the file gives the optimizer's state (moments, step counts)
    settings = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
    _load_optimizer_state(optimizer, ckpt['optimizer'], path)
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    if loss_scaler is not None and ckpt.get('scaler'):
        loss_scaler.load_state_dict(ckpt['scaler'])
    out.training_state = True
    out.start_epoch = int(ckpt['epoch']) + 1
    out.max_accuracy = float(ckpt.get('max_accuracy', 0.0))
    out.max_accuracy_ema = float(ckpt.get('max_accuracy_ema', ckpt.get('max_ema_accuracy', 0.0)))
    if current_args is not None and then_args is not None:
        _report_changes(path, then_args, current_args, out.start_epoch)
    return out


# settings a rerun may change; they apply from the resumed step on (the schedule is recomputed from
# the command line at every step), and the change is logged
_RESUMABLE_CHANGES = ('lr', 'min_lr', 'warmup_epochs', 'warmup_steps', 'weight_decay', 'weight_decay_end',
                      'layer_decay', 'opt_eps', 'opt_betas', 'momentum', 'clip_grad', 'epochs')


def _check_same_optimizer(path: str, then: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse a resume with another ``--opt``: the saved state (e.g. AdamW's moments) does not fit it."""
    opt_then, opt_now = str(then.get('opt', now.get('opt'))).lower(), str(now.get('opt')).lower()
    if opt_then != opt_now:
        raise CheckpointError(
            f'--opt {opt_now} cannot resume {path}, which was trained with --opt {opt_then}: its optimizer state '
            f'does not carry over; rerun with --opt {opt_then}, or start a new run from its weights with '
            f'--finetune {path} in another --output_dir')


def _report_changes(path: str, then: dict[str, Any], now: dict[str, Any], start_epoch: int) -> None:
    """Log each setting the command line changes against the checkpoint's, and refuse ``--epochs`` below
    the epochs the checkpoint already finished."""
    epochs = now.get('epochs')
    if isinstance(epochs, int) and start_epoch > epochs:
        raise CheckpointError(
            f'{path} has finished {start_epoch} epochs, more than --epochs {epochs}: pass --epochs '
            f'{then.get("epochs", start_epoch)} (or more) to continue it, or evaluate it with --eval true')
    changed = [f'--{k} {now[k]} (was {then[k]})' for k in _RESUMABLE_CHANGES
               if k in then and k in now and then[k] != now[k]]
    if changed:
        logger.warning(f'resuming {path} with changed settings, applied from epoch {start_epoch} on: '
                       + ', '.join(changed))
    was, is_ = _effective_batch(then), _effective_batch(now)
    if was and is_ and math.prod(was) != math.prod(is_):
        logger.warning(
            f'the effective batch changed: {path} was trained with {math.prod(was)} '
            f'({was[0]} per process x {was[1]} accumulation x {was[2]} processes), this run uses '
            f'{math.prod(is_)} ({is_[0]} x {is_[1]} x {is_[2]}); the lr schedule is per optimizer step, '
            'so results will differ from an uninterrupted run (adjust --batch_size/--update_freq to '
            'keep the product)')
    elif was and is_ and was != is_:
        logger.info(f'same effective batch {math.prod(is_)} as {path}, split as {is_[0]} x {is_[1]} x {is_[2]} '
                    f'(was {was[0]} x {was[1]} x {was[2]})')

