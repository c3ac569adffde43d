"""Reading HorNet weights: the one way from a file to a state dict, and the key formats.

* :func:`read_weights` (``path`` -> state dict) is what every command uses: it loads the file
  weights-only (:func:`load_checkpoint`: never unpickled), takes the entry that holds the weights
  (:func:`unwrap_checkpoint`: one rule, the user's key as an override), strips wrapper prefixes
  and refuses non-finite weights (:func:`check_finite`).
* Every failure is a :class:`CheckpointFileError` with a one-line message that names the file
  and says what to do; the scripts print it and exit with status 2. A state dict that does not
  fit a model is a :class:`CheckpointMismatchError` listing the keys (:func:`check_state_dict`).
* mmpretrain's key layout maps to ours and back (:func:`from_mmpretrain`, :func:`to_mmpretrain`),
  and :func:`resize_gf_filters` fits a checkpoint's GF filters to a model's.

Adapting a checkpoint to one particular model (head, mmpretrain keys, GF sizes, stem) is the
model's ``checkpoint_filter_fn`` (``models/hornet.py``), built from these pieces.
"""
import argparse
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .hub import DownloadError, cached_download, is_url
from .ops import resize_complex_weight

__all__ = [
    'CheckpointFileError', 'CheckpointMismatchError', 'WEIGHT_ENTRIES', 'check_finite', 'check_state_dict',
    'describe_load_failure', 'from_mmpretrain', 'load_checkpoint', 'non_finite_count', 'read_weights',
    'resize_gf_filters', 'strip_prefixes', 'to_mmpretrain', 'unwrap_checkpoint', 'weights_in',
]

# The entries of a checkpoint file that hold the weights, in order of preference: ours and the
# original release (``model``), DDP-era files (``module``), mmpretrain/mmengine (``state_dict``).
WEIGHT_ENTRIES = ('model', 'module', 'state_dict')
# Prefixes that wrappers put in front of every key: DDP (``module.``), torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ('module.', '_orig_mod.')
# Safe types besides tensors and containers: our training checkpoints store main.py's argparse namespace.
SAFE_GLOBALS: tuple[Callable | tuple, ...] = (argparse.Namespace,)


class CheckpointFileError(RuntimeError):
    """A weights file that cannot be used: missing, empty, text, truncated, holding Python objects,
    without weights under the requested key, or with NaN/inf weights. The message is one line that
    names the file and says what to do."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: lists missing, unexpected and shape-mismatched keys."""


# ----------------------------------------------------------------------------- the file

def _sniff(path: str) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint, judged from its first bytes (None: may be one)."""
    size = os.path.getsize(path)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04') or head[:1] == b'\x80':  # zip (torch >= 1.6) or legacy pickle
        return None
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        return 'not a PyTorch checkpoint (neither a zip archive nor a pickle)'
    if text.isprintable() or text.replace('\n', '').replace('\r', '').replace('\t', '').isprintable():
        first = text.strip().splitlines()[0][:30] if text.strip() else ''
        return f'it is a text file ({size} bytes, starts with {first!r}), not a PyTorch checkpoint'
    return 'not a PyTorch checkpoint (neither a zip archive nor a pickle)'


def _load_failure_reason(e: BaseException, not_unpickled: str) -> str:
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or 'Weights only load failed' in text:
        m = re.search(r'GLOBAL (\S+)', text) or re.search(r"(?:but got|function) <?(?:class )?'?([\w.]+)", text)
        what = f' (it asks for {m.group(1)})' if m else ''
        return f'it holds Python objects, not only weights{what}; it was not unpickled ({not_unpickled})'
    if isinstance(e, (zipfile.BadZipFile, EOFError)) or 'zip archive' in text or 'central directory' in text:
        return 'the file is truncated or damaged (incomplete zip archive)'
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f'{type(e).__name__}: {lines[-1] if lines else "unreadable"}'


def describe_load_failure(path: str, e: BaseException,
                          not_unpickled: str = 'only tensors and plain containers are loaded') -> str:
    """Why ``torch.load(path, weights_only=True)`` failed with ``e``, as the reason part of a one-line
    error (empty, text, truncated, holding Python objects, ...); ``not_unpickled`` says what to do about
    a file that holds Python objects."""
    return (_sniff(path) if os.path.isfile(path) else None) or _load_failure_reason(e, not_unpickled)


def _is_safetensors(path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') < os.path.getsize(path)


def _load_safetensors(path: str, map_location: Any) -> dict[str, Any]:
    """``{'model': tensors}`` of a safetensors file (no code can run: the format holds tensors only),
    with the class names and mean/std flag (as the training flags ``args`` hold it) main.py's
    ``--save_safetensors`` keeps in its metadata."""
    import json

    import safetensors
    device = map_location if isinstance(map_location, str) else 'cpu'
    with safetensors.safe_open(path, 'pt', device=device) as f:
        ckpt: dict[str, Any] = {'model': {k: f.get_tensor(k) for k in f.keys()}}  # noqa: SIM118
        meta = f.metadata() or {}
    if 'label_names' in meta:
        ckpt['label_names'] = json.loads(meta['label_names'])
    if meta.get('imagenet_default_mean_and_std') in ('true', 'false'):
        ckpt['args'] = {'imagenet_default_mean_and_std': meta['imagenet_default_mean_and_std'] == 'true'}
    return ckpt


def load_checkpoint(path: str, mmap: bool = False, safe_globals: Sequence[Callable | tuple] = SAFE_GLOBALS,
                    unsafe: bool = False, not_unpickled: str = 'only tensors and plain containers are loaded',
                    map_location: Any = 'cpu') -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)``: never unpickled.

    Args:
        path: A local file (a PyTorch checkpoint or a ``.safetensors`` file), or an ``http(s)://``
            URL (downloaded once into torch's hub cache, checked by the sha256 prefix its file name
            carries: :func:`models.hub.cached_download`).
        mmap: Map the tensors instead of reading them (cheap: to look at a file's epoch).
        safe_globals: Types allowed besides tensors and containers (default: argparse.Namespace,
            which older training checkpoints hold).
        unsafe: Unpickle fully (``weights_only=False``): only for the OpenMMLab scripts'
            explicit ``--unsafe-load``.
        not_unpickled: What to do about a file that holds Python objects (end of that message).
        map_location: ``torch.load``'s, the CPU by default.

    Raises:
        CheckpointFileError: ``cannot load checkpoint PATH: <reason>`` for a missing, empty, text,
            truncated or non-weights (e.g. malicious) file, or one that does not hold a dict.
    """
    def fail(reason: str) -> CheckpointFileError:
        return CheckpointFileError(f'cannot load checkpoint {path}: {reason}')
    if is_url(path):  # the rules of pretrained=True: hub cache, sha256 prefix in the name, atomic
        try:
            local = cached_download(path)
        except DownloadError as e:
            raise fail(str(e)) from None
    else:
        local = os.path.expanduser(path)
    if not os.path.exists(local):
        raise fail('no such file')
    if os.path.isdir(local):
        raise fail('it is a directory, not a file')
    try:
        if _is_safetensors(local):
            return _load_safetensors(local, map_location)
        reason = _sniff(local)
    except OSError as e:
        raise fail(e.strerror or str(e)) from None
    except Exception as e:  # noqa: BLE001  (a damaged safetensors file: reported, not raised)
        raise fail(f'the safetensors file is damaged ({str(e).strip().splitlines()[-1]})') from None
    if reason:
        raise fail(reason)
    try:
        with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # e.g. "Detected pickle protocol 4": the error says it all
            ckpt = torch.load(local, map_location=map_location, weights_only=not unsafe, mmap=mmap)
    except Exception as e:  # noqa: BLE001  (any failure of a user-given file is reported, not raised)
        if mmap and 'mmap' in str(e):  # legacy (non-zip) files cannot be mapped: read them
            return load_checkpoint(path, False, safe_globals, unsafe, not_unpickled, map_location)
        raise fail(describe_load_failure(local, e, not_unpickled)) from None
    if not isinstance(ckpt, dict):
        raise fail(f'it holds a {type(ckpt).__name__}, expected a dict of weights')
    return ckpt


# ----------------------------------------------------------------------------- the weights in it

def strip_prefixes(state_dict: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """``state_dict`` with wrapper prefixes (:data:`WRAPPER_PREFIXES`, e.g. ``module._orig_mod.``)
    removed from every key; with ``prefix``, only the keys that start with it, stripped of it first."""
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = {}
    for k, v in state_dict.items():
        while k.startswith(WRAPPER_PREFIXES):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def unwrap_checkpoint(checkpoint: dict, key: str | None = None, what: str = 'checkpoint',
                      prefix: str = '') -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the one rule for which entry holds the weights.

    The first of :data:`WEIGHT_ENTRIES` that holds a dict, else the checkpoint itself (a bare state
    dict). ``key`` overrides the list: ``'|'``-separated names tried in order (``model_ema``,
    ``model|module``), one of which must hold a dict. Then :func:`strip_prefixes` (``prefix``: keep
    only the keys that start with it).

    Raises:
        CheckpointFileError: ``key`` names no dict entry (the message lists the ones there are).
    """
    names = key.split('|') if key else WEIGHT_ENTRIES
    entry = next((n for n in names if isinstance(checkpoint.get(n), dict)), None)
    if entry is None and key:
        found = ', '.join(k for k, v in checkpoint.items() if isinstance(v, dict)) or 'none'
        raise CheckpointFileError(f'{what} has no state dict under {key!r} (dict entries: {found})')
    return strip_prefixes(checkpoint[entry] if entry is not None else checkpoint, prefix)


def non_finite_count(state: dict[str, Any]) -> tuple[int, int]:
    """(non-finite values, all values) over the floating-point tensors of a state dict."""
    bad = total = 0
    for v in state.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            total += v.numel()
            bad += int((~torch.isfinite(v)).sum())
    return bad, total


def check_finite(state: dict[str, Any], path: str) -> None:
    """Refuse weights with NaN or inf values (a diverged run's), raising :class:`CheckpointFileError`."""
    bad, total = non_finite_count(state)
    if bad:
        raise CheckpointFileError(f'checkpoint {path} has non-finite weights ({bad} of {total} values are '
                                  'NaN or inf): the model diverged; use an earlier checkpoint')


def read_weights(path: str, key: str | None = None, prefix: str = '') -> dict[str, torch.Tensor]:
    """The state dict in the checkpoint file ``path``: loaded weights-only (:func:`load_checkpoint`),
    then :func:`weights_in`.

    Raises:
        CheckpointFileError: the file cannot be read, has no weights under ``key`` or holds NaN/inf.
    """
    return weights_in(load_checkpoint(path), path, key, prefix)


def weights_in(checkpoint: dict, path: str, key: str | None = None, prefix: str = '') -> dict[str, torch.Tensor]:
    """The state dict in ``checkpoint``, already loaded from ``path`` (for a caller that also reads its
    other entries): the entry that holds the weights (:func:`unwrap_checkpoint`; ``key`` overrides the
    rule), ``prefix`` and wrapper prefixes stripped (:func:`strip_prefixes`), finite (:func:`check_finite`).

    Any key layout is returned as is (ours, mmpretrain's): ``models.checkpoint_filter_fn`` adapts it
    to a model.

    Raises:
        CheckpointFileError: no weights under ``key``, or NaN/inf weights.
    """
    state = unwrap_checkpoint(checkpoint, key, what=f'checkpoint {path}', prefix=prefix)
    check_finite(state, path)
    return state


# ----------------------------------------------------------------------------- fitting a model

def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def check_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module, what: str = 'checkpoint') -> None:
    """Raise :class:`CheckpointMismatchError` listing every key that does not fit ``model``."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [f'{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
                  for k, v in target.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        lines = [f'{what} does not fit {type(model).__name__}:']
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {_describe(missing)}')
        if unexpected:
            lines.append(f'  unexpected keys ({len(unexpected)}): {_describe(unexpected)}')
        if mismatched:
            lines.append(f'  shape mismatches ({len(mismatched)}): {_describe(mismatched)}')
        raise CheckpointMismatchError('\n'.join(lines))


def resize_gf_filters(state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[str]:
    """Resize, in place, every GF filter (``*complex_weight``) of ``state_dict`` whose shape differs
    from the one in ``target`` (a model's state dict) to that size (:func:`models.resize_complex_weight`);
    returns the resized keys."""
    resized = []
    for k, v in state_dict.items():
        if k.endswith('complex_weight') and k in target and v.shape != target[k].shape:
            state_dict[k] = resize_complex_weight(v, target[k].shape[1:3])
            resized.append(k)
    return resized


# ----------------------------------------------------------------------------- mmpretrain's keys

# (mmpretrain prefix, ours), the first match wins, in either direction: mmpretrain's ImageClassifier
# puts the trunk under ``backbone.``, the final norm as ``backbone.norm3`` and the head as ``head.fc``
_MMPRETRAIN_PREFIXES = (('backbone.norm3.', 'norm.'), ('head.fc.', 'head.'), ('backbone.', ''))
# (mmpretrain, ours) inside a key: gnConv's pointwise maps, layer scales as LayerScale modules
_MMPRETRAIN_PARTS = (('.gnconv.projs.', '.gnconv.pws.'), ('.gamma1.weight', '.gamma1'), ('.gamma2.weight', '.gamma2'))
# mmpretrain keys without a classifier twin: the dense backbone's per-stage output norms, necks
_MMPRETRAIN_DROPPED = ('backbone.norm0.', 'backbone.norm1.', 'backbone.norm2.', 'neck.', 'data_preprocessor.')


def _map_keys(state_dict: dict[str, Any], to_ours: bool) -> dict[str, Any]:
    src, dst = (0, 1) if to_ours else (1, 0)
    out = {}
    for k, v in state_dict.items():
        if to_ours and k.startswith(_MMPRETRAIN_DROPPED):
            continue
        for pair in _MMPRETRAIN_PREFIXES:
            if k.startswith(pair[src]):
                k = pair[dst] + k[len(pair[src]):]
                break
        for pair in _MMPRETRAIN_PARTS:
            k = k.replace(pair[src], pair[dst])
        out[k] = v
    return out


def from_mmpretrain(state_dict: dict[str, Any]) -> dict[str, Any]:
    """An mmpretrain HorNet ``ImageClassifier`` state dict (or a dense model's ``backbone.*`` keys)
    in our (= the released) key layout; the inverse of :func:`to_mmpretrain`. Keys with no twin in
    the classifier (``backbone.norm0..2``, ``neck.``, ``data_preprocessor.``) are dropped."""
    return _map_keys(state_dict, to_ours=True)


def to_mmpretrain(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Our (= the released) keys -> an mmpretrain ``ImageClassifier``'s: ``backbone.`` prefix, the
    final norm as ``norm3``, ``pws`` as ``projs``, layer scales as ``LayerScale`` modules, the head
    as ``head.fc``. The inverse of :func:`from_mmpretrain`."""
    return _map_keys(state_dict, to_ours=False)
