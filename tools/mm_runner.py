"""Command-line plumbing shared by the OpenMMLab train/test scripts of ``object_detection/`` and
``semantic_segmentation/``: the common flags, config loading with overrides, and checkpoint loading.

Checkpoint policy: no file is unpickled. The backbone's ImageNet checkpoint is read with
``torch.load(weights_only=True)`` (``models.read_weights``, in the backbone's ``init_weights``); mmengine checkpoints
(``--resume``, ``--load-from``, the checkpoint of ``test.py``) with ``weights_only=True`` plus exactly
the types mmengine stores in them (:data:`MMENGINE_SAFE_GLOBALS`), through :class:`Runner`. Only
``--unsafe-load`` unpickles them fully.
"""
import argparse
import inspect
import json
import os
import os.path as osp
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from mmengine import dist as mm_dist
from mmengine.config import Config, DictAction
from mmengine.fileio import get_local_path
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner as _MMRunner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

import utils
from models.state_dict import SAFE_GLOBALS, CheckpointFileError, load_checkpoint
from utils import TrainingError

UNSAFE_LOAD_HELP = ('unpickle checkpoints fully (--resume, --load-from, the test checkpoint): a crafted .pth '
                    'file then runs arbitrary code on this machine; use it only for files you trust. '
                    'Without it they are loaded weights-only (tensors, plain containers and the mmengine '
                    'training state)')


# A checkpoint that cannot be read safely, or does not fit the model (one-line message): the error
# type of models.state_dict, which the scripts turn into `error: ...` and exit status 2
CheckpointLoadError = CheckpointFileError
UNSAFE_HINT = 'pass --unsafe-load only if you trust the file'


class DataError(TrainingError):
    """Data that mmengine would read wrongly or fail on with a traceback: a missing or damaged
    annotation file, categories the config does not name, label values outside the classes."""


# what each launcher reads from the environment (mmengine raises KeyError without them)
LAUNCHER_VARS = {'pytorch': ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'),
                 'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')}
LAUNCHER_HOW = {'pytorch': 'start it with dist_train.sh / dist_test.sh (torchrun)',
                'slurm': 'start it with srun inside a SLURM job'}


def _history_buffer_attr(obj: Any, name: str) -> Any:
    """Stands in for ``getattr`` when unpickling: mmengine pickles the statistics methods of a
    :class:`HistoryBuffer` as ``getattr(HistoryBuffer, 'mean')``; nothing else resolves."""
    if obj is HistoryBuffer and not name.startswith('_') and inspect.isfunction(vars(HistoryBuffer).get(name)):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


_NUMPY_DTYPES = sorted({type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG'}, key=str)  # numeric only
# What an mmengine 0.10 checkpoint holds besides tensors and plain containers, found by saving one with
# the Runner and listing what torch's weights-only unpickler rejects: the message hub's HistoryBuffers
# (numpy arrays, their statistics methods via getattr) and numpy scalars in the runtime info (e.g. eta).
MMENGINE_SAFE_GLOBALS: list[Callable | tuple] = [
    HistoryBuffer, np.ndarray, np.dtype, *_NUMPY_DTYPES,
    np._core.multiarray._reconstruct, np._core.multiarray.scalar,
    # the same functions as named by checkpoints written with numpy 1.x
    (np._core.multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
    (np._core.multiarray.scalar, 'numpy.core.multiarray.scalar'),
    (_history_buffer_attr, 'builtins.getattr'),
]
# Our classification checkpoints store the argparse namespace of main.py next to the weights.
CLASSIFICATION_SAFE_GLOBALS: list[Callable | tuple] = list(SAFE_GLOBALS)


def add_runner_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--work-dir``, ``--cfg-options`` (alias ``--options``), ``--launcher`` and
    ``--local_rank``/``--local-rank`` (passed by ``torch.distributed.launch``)."""
    parser.add_argument('--work-dir', '--work_dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', '--options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.drop_path_rate=0.3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (the dist_*.sh scripts use pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--unsafe-load', '--unsafe_load', action='store_true', help=UNSAFE_LOAD_HELP)
    return parser


def parse_runner_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_runner_config(args: argparse.Namespace) -> Config:
    """``args.config`` with the launcher, ``--cfg-options`` and the work dir applied.

    Raises:
        DataError: no config file, a launcher without its environment, a work dir that is a file.
    """
    if not osp.isfile(args.config):
        raise DataError(f'config file not found: {args.config}')
    missing = [k for k in LAUNCHER_VARS.get(args.launcher, ()) if k not in os.environ]
    if missing:
        raise DataError(f'--launcher {args.launcher} needs the variables its launcher sets ({", ".join(missing)} '
                        f'are not set); {LAUNCHER_HOW[args.launcher]}, or leave --launcher out for one process')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    parent = osp.abspath(cfg.work_dir)
    while not osp.exists(parent):  # the folders mmengine would create
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise DataError(f'--work-dir {cfg.work_dir}: {parent} is a file, not a folder; pick another --work-dir')
    return cfg


def load_checkpoint_file(filename: str, map_location: Any = 'cpu',
                         safe_globals: Sequence[Callable | tuple] = MMENGINE_SAFE_GLOBALS,
                         unsafe: bool = False) -> Any:
    """Read a local file or URL with ``weights_only=True`` and ``safe_globals`` allowed
    (``weights_only=False`` only when ``unsafe``), through :func:`models.state_dict.load_checkpoint`;
    URLs of other mmengine file backends are fetched to a local file first.

    Raises:
        CheckpointLoadError: missing, empty, text, truncated, or holding other Python objects.
    """
    if '://' in filename and not filename.startswith(('http://', 'https://')):
        try:
            with get_local_path(filename) as path:
                return load_checkpoint(path, safe_globals=safe_globals, unsafe=unsafe, not_unpickled=UNSAFE_HINT,
                                       map_location=map_location)
        except CheckpointLoadError:
            raise
        except Exception as e:  # noqa: BLE001  (a failed fetch of a user-given URL becomes one line)
            raise CheckpointLoadError(f'cannot load checkpoint {filename}: {type(e).__name__}: {e}') from None
    return load_checkpoint(filename, safe_globals=safe_globals, unsafe=unsafe, not_unpickled=UNSAFE_HINT,
                           map_location=map_location)


def load_classification_checkpoint(filename: str) -> Any:
    """The backbone's ImageNet checkpoint: weights only, always (``--unsafe-load`` does not apply)."""
    return load_checkpoint_file(filename, 'cpu', CLASSIFICATION_SAFE_GLOBALS)


def _mismatch_summary(e: RuntimeError, keep: int = 8) -> str:
    """mmengine's strict-load error on one line, each key list cut to ``keep`` names."""
    parts = []
    for line in str(e).splitlines():
        head, sep, keys = line.strip().partition(': ')
        if not line.strip():
            continue
        names = [k.strip() for k in keys.split(',')] if sep and head.startswith(('missing', 'unexpected')) else []
        if len(names) > keep:
            line = f'{head}: {", ".join(names[:keep])}, ... ({len(names)} in all)'
        parts.append(line.strip())
    return '; '.join(parts)


class Runner(_MMRunner):
    """mmengine's Runner with our checkpoint policy in :meth:`load_checkpoint`, which ``resume``,
    ``load_from`` and testing all go through.

    Attributes:
        unsafe_load: unpickle checkpoints fully (``--unsafe-load``).
        strict_load: a checkpoint must fit the model exactly (``test.py``): missing, unexpected
            or differently shaped weights raise :class:`CheckpointLoadError`.
    """
    unsafe_load: bool = False
    strict_load: bool = False
    _resuming: bool = False

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        self._resuming = True
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    @staticmethod
    def build_dataloader(dataloader: Any, *args: Any, **kwargs: Any) -> Any:
        """mmengine's, with a missing or damaged annotation file as a :class:`DataError`."""
        try:
            return _MMRunner.build_dataloader(dataloader, *args, **kwargs)
        except FileNotFoundError as e:
            raise DataError(f'cannot build the data set: {e.filename or e}: no such file; check data_root '
                            'and ann_file in the config') from None
        except json.JSONDecodeError as e:
            raise DataError(f'cannot build the data set: its annotation file {_ann_file(dataloader)} is not '
                            f'valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): truncated or damaged; '
                            'write or download it again') from None
        except (ValueError, IndexError, KeyError, AssertionError):
            # e.g. every image filtered out because no category matched: say that, if so
            _check_configured_categories(dataloader)
            raise

    def load_checkpoint(self, filename: str, map_location: Any = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006  (mmengine's signature)
        checkpoint = load_checkpoint_file(filename, map_location, MMENGINE_SAFE_GLOBALS, self.unsafe_load)
        if self._resuming:
            _check_training_checkpoint(checkpoint, filename)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        strict = strict or self.strict_load
        if not strict and not self._resuming:
            _check_any_key_fits(model, checkpoint, filename, revise_keys)
        try:
            checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        except RuntimeError as e:
            if not strict:
                raise
            raise CheckpointLoadError(f'checkpoint {filename} does not fit the model: {_mismatch_summary(e)}; '
                                      'is it a checkpoint of this config?') from None
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint


class SaveOnStopHook(Hook):
    """A stop (SIGTERM from ``kill`` or SLURM, Ctrl-C) during training finishes the current iteration,
    saves a resumable checkpoint in mmengine's own format (model, optimizer, schedulers, iteration)
    as ``iter_<N>.pth`` with the ``last_checkpoint`` pointer that ``--resume`` (auto) reads, and exits
    with 143 (SIGTERM) or 130 (Ctrl-C). mmengine itself installs no handler: a stop lost everything
    since the last interval checkpoint. A second signal acts at once. Every rank takes the stop at
    the same iteration (one all-reduce of a flag per iteration when distributed)."""
    priority = 'VERY_LOW'  # after the optimizer step and the other hooks of the iteration
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.stop: int | None = None
        self._previous: dict[int, Any] = {}

    def before_train(self, runner) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_IGN, None):
                continue  # a background job keeps its ignored Ctrl-C
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop is not None:  # the second one: at once, as without this hook
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.stop = signum

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        stop = self.stop or 0
        if mm_dist.get_world_size() > 1:
            flag = torch.tensor([stop])
            mm_dist.all_reduce(flag, op='max')  # on the group's device, and back
            stop = int(flag.item())
        if not stop:
            return
        name = f'iter_{runner.iter + 1}.pth'
        # the iteration that just ended counts as done, as in mmengine's CheckpointHook
        runner.save_checkpoint(runner.work_dir, name, meta=dict(epoch=runner.epoch, iter=runner.iter + 1),
                               save_optimizer=True, save_param_scheduler=True)
        if mm_dist.is_main_process():
            with open(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(runner.work_dir, name))
        what = 'terminated (SIGTERM)' if stop == signal.SIGTERM else 'interrupted'
        runner.logger.info(f'{what}: saved {name} at iteration {runner.iter + 1}; rerun the same command with '
                           '--resume to continue from it')
        raise SystemExit(128 + stop)

    def after_train(self, runner) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _ann_file(dataloader: Any) -> str:
    """The annotation file a dataloader config names (joined to its data_root), for messages."""
    ds = dataloader.get('dataset', {}) if isinstance(dataloader, dict) else {}
    ann, root = ds.get('ann_file', ''), ds.get('data_root', '')
    return osp.join(root, ann) if root and ann and not osp.isabs(ann) else ann or '(ann_file)'


BACKBONE_HINT = ('a classification checkpoint initialises only the backbone: pass it as '
                 '--cfg-options model.backbone.init_cfg.checkpoint=FILE')


def _check_training_checkpoint(checkpoint: Any, filename: str) -> None:
    """``--resume`` needs what mmengine's training loop wrote (meta with the iteration, the message hub)."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    missing = [k for k, ok in (('meta', isinstance(meta, dict) and 'iter' in meta),
                               ('message_hub', isinstance(checkpoint, dict) and 'message_hub' in checkpoint),
                               ('state_dict', isinstance(checkpoint, dict) and 'state_dict' in checkpoint)) if not ok]
    if missing:
        raise CheckpointLoadError(f'--resume {filename} is not a checkpoint of a training run of this script (it '
                                  f'has no {", ".join(missing)}); {BACKBONE_HINT}, detector/segmentor weights '
                                  'as --load-from FILE')


def _check_any_key_fits(model: torch.nn.Module, checkpoint: Any, filename: str, revise_keys: list) -> None:
    """``--load-from`` a file none of whose weights fits the model would train from scratch, silently."""
    import re
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    if not isinstance(state, dict):
        state = {}
    names = []
    for k in state:
        for pattern, repl in revise_keys:
            k = re.sub(pattern, repl, str(k))
        names.append(k)
    own = model.state_dict()
    fits = sum(1 for k, v in zip(names, state.values(), strict=True)
               if k in own and torch.is_tensor(v) and tuple(v.shape) == tuple(own[k].shape))
    if not fits:
        shown = ', '.join(names[:3]) or 'none'
        raise CheckpointLoadError(f'--load-from {filename}: none of its {len(names)} weights fits the model (its '
                                  f'keys: {shown}{", ..." if len(names) > 3 else ""}; the model\'s: '
                                  f'{", ".join(list(own)[:2])}, ...); {BACKBONE_HINT}')


def _leaf_datasets(ds: Any) -> list:
    """The data sets inside wrappers (ConcatDataset, RepeatDataset, ClassBalancedDataset)."""
    inner = getattr(ds, 'datasets', None) or ([ds.dataset] if hasattr(ds, 'dataset') else None)
    return [leaf for d in inner for leaf in _leaf_datasets(d)] if inner else [ds]


def check_file_categories(ann_file: str, classes: Sequence[str]) -> None:
    """Raise :class:`DataError` naming the categories of the COCO file ``ann_file`` that have
    annotations but are not among ``classes`` (mmdet drops those annotations silently)."""
    with open(ann_file, encoding='utf-8') as f:
        coco = json.load(f)
    names = {c.get('id'): c.get('name') for c in coco.get('categories', []) if isinstance(c, dict)}
    used = {a.get('category_id') for a in coco.get('annotations', []) if isinstance(a, dict)}
    unknown = [names.get(c, f'id {c}') for c in sorted(used, key=str) if names.get(c) not in set(classes)]
    if not unknown:
        return
    absent = [c for c in classes if c not in set(names.values())]
    raise DataError(f'{ann_file}: the annotations of the categories {", ".join(map(repr, unknown))} would be '
                    f'dropped: they are not among the config\'s {len(classes)} classes'
                    + (f' ({", ".join(map(repr, absent[:8]))}{", ..." if len(absent) > 8 else ""} are not in the '
                       'file)' if absent else '')
                    + '; set the data set\'s metainfo=dict(classes=(...)) to the file\'s category names')


def check_categories(ds: Any) -> None:
    """A built COCO-style data set: when any annotation was dropped for its category (known from
    mmdet's category-to-images map, without reading the file again), :func:`check_file_categories`."""
    cat2label, cat_img_map = getattr(ds, 'cat2label', None), getattr(ds, 'cat_img_map', None)
    if cat2label is None or cat_img_map is None:
        return
    if any(imgs and c not in cat2label for c, imgs in cat_img_map.items()):
        check_file_categories(ds.ann_file, list(ds.metainfo.get('classes', ())))


def _check_configured_categories(dataloader: Any) -> None:
    """:func:`check_file_categories` for a dataloader config whose data set could not be built."""
    ds_cfg = dataloader.get('dataset') if isinstance(dataloader, dict) else None
    ann = _ann_file(dataloader)
    if not isinstance(ds_cfg, dict) or not ann.endswith('.json') or not osp.isfile(ann):
        return
    classes = (ds_cfg.get('metainfo') or {}).get('classes')
    if not classes:
        from mmengine.registry import DATASETS, DefaultScope
        cls = kind = ds_cfg.get('type')
        if isinstance(kind, str):  # a name of the runner's scope (mmdet, mmseg)
            scope = DefaultScope.get_current_instance()
            cls = DATASETS.get(kind if '.' in kind or scope is None else f'{scope.scope_name}.{kind}')
        classes = getattr(cls, 'METAINFO', {}).get('classes')
    if classes:
        try:
            check_file_categories(ann, list(classes))
        except (OSError, ValueError, AttributeError):
            return  # not a COCO file: the original error stands


class SegLabelCheck:
    """Pipeline step after ``LoadAnnotations``: a segmentation label outside ``[0, num_classes)`` and
    not the ignore index is a :class:`DataError` (training would raise IndexError, testing count it
    as a wrong prediction)."""

    def __init__(self, num_classes: int, ignore_index: int):
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __call__(self, results: dict) -> dict:
        seg = results.get('gt_seg_map')
        if seg is not None:
            seg = np.asarray(seg)
            bad = ((seg < 0) | (seg >= self.num_classes)) & (seg != self.ignore_index)
            if bad.any():
                values = np.unique(seg[bad])
                raise DataError(f'{results.get("seg_map_path", "a label map")}: label values '
                                f'{", ".join(str(int(v)) for v in values[:8])} lie outside the '
                                f'{self.num_classes} classes (0..{self.num_classes - 1}, after '
                                f'reduce_zero_label={bool(results.get("reduce_zero_label"))}) and are not the '
                                f'ignore index {self.ignore_index}; fix the labels, or the classes and '
                                'reduce_zero_label of the data set')
        return results


def _ignore_index(cfg: Config) -> int:
    model = cfg.get('model', {})
    model = model.get('module', model)  # a test-time augmentation wrapper
    head = model.get('decode_head', {})
    head = head[0] if isinstance(head, (list, tuple)) and head else head
    return int(head.get('ignore_index', 255)) if isinstance(head, dict) else 255


def _step_lists(step: Any) -> list[list]:
    """The lists of steps a pipeline step holds: a ``Compose``'s own and those of the wrappers that
    nest pipelines (``TestTimeAug``'s subroutines, ``RandomChoice``, ``RandomApply``, ``KeyMapper``,
    ``MultiScaleFlipAug``)."""
    found = []
    for attr in ('transforms', 'subroutines'):
        inner = getattr(step, attr, None)
        if isinstance(inner, list):
            found.append(inner)
        elif inner is not None and not isinstance(inner, (dict, str)):
            found.extend(_step_lists(inner))  # a Compose inside a wrapper
    return found


def _insert_after_load_annotations(steps: list, check: SegLabelCheck, seen: set[int]) -> None:
    if id(steps) in seen:  # wrappers may share a list
        return
    seen.add(id(steps))
    for i in reversed(range(len(steps))):
        if type(steps[i]).__name__ == 'LoadAnnotations':
            if not (i + 1 < len(steps) and isinstance(steps[i + 1], SegLabelCheck)):
                steps.insert(i + 1, check)
        else:
            for inner in _step_lists(steps[i]):
                _insert_after_load_annotations(inner, check, seen)


def add_seg_label_check(ds: Any, ignore_index: int) -> None:
    """Insert :class:`SegLabelCheck` after each ``LoadAnnotations`` of a segmentation set's pipeline,
    at any depth: also inside ``TestTimeAug`` (``test.py --aug-test``) and the other wrappers."""
    pipeline = getattr(ds, 'pipeline', None)
    classes = getattr(ds, 'metainfo', {}).get('classes')
    if pipeline is None or not classes or not hasattr(ds, 'reduce_zero_label'):
        return
    check, seen = SegLabelCheck(len(classes), ignore_index), set()
    for steps in _step_lists(pipeline):
        _insert_after_load_annotations(steps, check, seen)


class DataChecks(Hook):
    """Checks of the built data sets that mmengine and mmdet/mmseg do not make (before any step)."""

    def before_run(self, runner: _MMRunner) -> None:
        for name in ('_train_loop', '_val_loop', '_test_loop'):
            loader = getattr(getattr(runner, name, None), 'dataloader', None)
            if loader is None:
                continue
            for ds in _leaf_datasets(loader.dataset):
                check_categories(ds)
                add_seg_label_check(ds, _ignore_index(runner.cfg))


def build_runner(cfg: Config, args: argparse.Namespace, strict_load: bool = False) -> Runner:
    """:class:`Runner` from ``cfg`` with ``--unsafe-load`` applied, :class:`DataChecks` and
    :class:`SaveOnStopHook` registered."""
    runner = Runner.from_cfg(cfg)
    runner.register_hook(DataChecks(), priority='VERY_HIGH')
    runner.register_hook(SaveOnStopHook())
    runner.unsafe_load = bool(getattr(args, 'unsafe_load', False))
    runner.strict_load = strict_load
    if runner.unsafe_load:
        runner.logger.warning('--unsafe-load: checkpoints are unpickled fully and can run code; '
                              'use only files you trust')
    return runner


def exit_on_checkpoint_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a script's ``main``: a user error (:func:`utils.user_error_types`: a checkpoint
    that cannot be loaded, :class:`DataError`; also a file the data names that is not there) prints
    ``error: <one line>`` and exits with status 2 instead of a traceback."""
    checked = utils.exits_on_user_error(exit=True)(fn)

    def wrapped(*a: Any, **k: Any) -> Any:
        try:
            return checked(*a, **k)
        except FileNotFoundError as e:  # an image of the data set, read inside the loop
            print(f'error: {utils.one_line(e)}; check data_root and the data prefixes in the config',
                  file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    wrapped.__doc__, wrapped.__name__, wrapped.__wrapped__ = fn.__doc__, fn.__name__, fn
    return wrapped


def enable_amp(cfg: Config) -> None:
    """``--amp``: mixed-precision training through mmengine's ``AmpOptimWrapper`` (dynamic loss scale)."""
    if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'


def apply_resume(cfg: Config, resume: str | None, load_from: str | None) -> None:
    """``--resume`` (``'auto'``: the newest checkpoint in the work dir; else that checkpoint, with its
    optimizer and iteration) or, when not resuming, ``--load-from`` (weights only)."""
    if resume is not None:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else resume
    else:
        cfg.resume = False
        if load_from:
            cfg.load_from = load_from
