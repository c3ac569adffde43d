"""Export a HorNet variant to ONNX, a ``torch.export`` program or a timm hub folder, and verify it.

Every variant exports, GF included. For ONNX the global filter is computed with real DFT matrix
products (``models.set_dft_filter``) instead of ``torch.fft``: plain MatMul nodes that any ONNX
runtime can execute, numerically equal to the FFT path. ``torch.export`` traces ``torch.fft``
directly, so that format keeps the FFT (``--gf_filter`` overrides both choices).

After exporting, the file is loaded again (onnxruntime for ONNX, ``torch.export.load`` for
``torch_export``) and run against the eager model on random inputs; the max absolute and relative
differences are printed and the script exits with status 1 if they exceed the tolerance.

``--format hub`` writes the folder timm's hub loader reads (``config.json``, ``model.safetensors``
and a model card ``README.md``); ``timm.create_model('local-dir:DIR', pretrained=True)`` loads it and
is checked against the eager model the same way. An existing folder's files are replaced only with
``--overwrite``; other files in it are left alone. Upload the folder with one command (``hf`` comes
with ``huggingface_hub``; log in first with ``hf auth login``)::

    hf upload USER/hornet_tiny_gf DIR .

Examples::

    python export.py --model hornet_tiny_gf --checkpoint hornet_tiny_gf.pth \\
        --input_size 224 --format onnx --dynamic_batch --output hornet_tiny_gf.onnx
    python export.py --model hornet_tiny_7x7 --input_size 224 --format torch_export \\
        --output hornet_tiny_7x7.pt2
    python export.py --model hornet_tiny_gf --checkpoint output/checkpoint-best.pth \\
        --format hub --output hub/hornet_tiny_gf
    # a small random-weight model (any timm kwarg of the variant, values as Python literals)
    python export.py --model hornet_tiny_gf --model_kwargs depths=1,1,1,1 base_dim=16 \\
        --input_size 64 --format onnx --output small.onnx
"""
import argparse
import ast
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn

import calc_flops
import models
import run_dir
import utils
from calc_flops import input_size_arg

# ONNX protobuf files cannot exceed 2 GiB; above this size the weights go to a side file.
_ONNX_INLINE_LIMIT = 1800 * 2 ** 20


def parse_model_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings into timm model kwargs.

    Values are Python literals (``depths=1,1,1,1`` -> ``(1, 1, 1, 1)``, ``base_dim=16`` -> ``16``,
    ``gf_sizes="[None,None,(14,8),(7,4)]"``); anything that is not a literal stays a string.
    """
    kwargs = {}
    for item in items or ():
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'--model_kwargs expects key=value, got {item!r}')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _checkpoint_num_classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    for k in ('head.weight', 'head.fc.weight'):
        if k in state_dict:
            return int(state_dict[k].shape[0])
    return None


def create_model(
        name: str,
        checkpoint: str | None = None,
        checkpoint_key: str = 'auto',
        num_classes: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``name`` in eval mode, with weights from ``checkpoint`` if given.

    The class count follows the checkpoint's classifier unless ``num_classes`` is given, in which
    case the two must agree: a deployed model must never carry a freshly initialised head.
    ``checkpoint_key`` is the entry that holds the weights (``auto``: the rule of
    :func:`models.unwrap_checkpoint`).

    Raises:
        models.CheckpointFileError: the file cannot be read, has no weights under the key or holds NaN/inf.
        models.CheckpointMismatchError: the weights do not fit the model.
    """
    valid = timm.list_models('hornet_*')
    if name not in valid:
        raise ValueError(f'unknown model {name!r}; valid names: {", ".join(valid)}')
    kwargs = dict(model_kwargs or {})
    state_dict = None
    if checkpoint:
        state_dict = models.read_weights(checkpoint, key=None if checkpoint_key == 'auto' else checkpoint_key)
        ckpt_classes = _checkpoint_num_classes(state_dict)
        if ckpt_classes is None:
            raise models.CheckpointMismatchError(f'checkpoint {checkpoint!r} has no classifier (head.weight)')
        if num_classes is not None and num_classes != ckpt_classes:
            raise models.CheckpointMismatchError(
                f'--num_classes {num_classes} but checkpoint {checkpoint!r} has {ckpt_classes} classes')
        num_classes = ckpt_classes
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    model = timm.create_model(name, **kwargs)
    if state_dict is not None:
        model.load_state_dict(models.checkpoint_filter_fn(state_dict, model), strict=True)
    return model.eval()


def has_global_filter(model: nn.Module) -> bool:
    return any(isinstance(m, models.GlobalLocalFilter) for m in model.modules())


def export_onnx(
        model: nn.Module, example: torch.Tensor, output: str, dynamic_batch: bool,
        opset: int | None = None,
) -> None:
    """Export with torch's dynamo-based ONNX exporter (needs ``onnxscript``)."""
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            model, (example,), output, input_names=['input'], output_names=['logits'],
            dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, verbose=False,
            external_data=n_bytes > _ONNX_INLINE_LIMIT)


def export_program(model: nn.Module, example: torch.Tensor, output: str, dynamic_batch: bool) -> None:
    """Export with ``torch.export`` and save the program (``.pt2``)."""
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, output)


def load_runner(path: str, fmt: str):
    """A callable ``np.ndarray -> np.ndarray`` running the exported file at ``path``."""
    if fmt == 'onnx':
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    program = torch.export.load(path).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return program(torch.from_numpy(x)).numpy()
    return run


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Max absolute difference, and the same relative to the largest reference magnitude."""
    if reference.shape != output.shape:
        raise ValueError(f'exported output shape {output.shape} != eager {reference.shape}')
    max_abs = float(np.abs(reference - output).max())
    scale = float(np.abs(reference).max())
    return dict(max_abs=max_abs, max_rel=max_abs / scale if scale > 0 else max_abs)


def verify(
        model: nn.Module, path: str, fmt: str, input_size: int, batch_sizes: Sequence[int],
        rtol: float, atol: float, seed: int = 0,
) -> list[dict[str, float]]:
    """Run the exported file and the eager model on random inputs; one result per batch size.

    Each result has ``batch``, ``max_abs``, ``max_rel`` and ``ok`` (``max_abs <= atol + rtol *
    max|eager|``).
    """
    run = load_runner(path, fmt)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for b in batch_sizes:
        x = torch.randn(b, 3, input_size, input_size, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        diff = compare(ref, run(x.numpy()))
        scale = float(np.abs(ref).max())
        results.append(dict(batch=b, **diff, ok=diff['max_abs'] <= atol + rtol * scale))
    return results


HUB_FILES = ('config.json', 'model.safetensors', 'README.md')
_CITATION = """@inproceedings{rao2022hornet,
  title={HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions},
  author={Rao, Yongming and Zhao, Wenliang and Tang, Yansong and Zhou, Jie and Lim, Ser-Nam and Lu, Jiwen},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2022}
}"""


def checkpoint_info(path: str, key: str = 'auto') -> dict[str, Any]:
    """What a training checkpoint logged besides its weights: ``epoch``, the best accuracy of the
    weights exported (``max_accuracy``, or ``max_accuracy_ema`` for ``--checkpoint_key model_ema``)
    class names (``label_names`` or ``class_names``, one string per class) and the mean/std flag it
    was trained and evaluated with (``imagenet_default_mean_and_std``). Absent entries are left out."""
    ckpt = models.state_dict.load_checkpoint(path, mmap=True)
    info: dict[str, Any] = {}
    if isinstance(ckpt.get('epoch'), int):
        info['epoch'] = ckpt['epoch']
    acc = ckpt.get('max_accuracy_ema' if key == 'model_ema' else 'max_accuracy')
    if isinstance(acc, (int, float)) and acc > 0:
        info['top1'] = float(acc)
    for k in ('label_names', 'class_names'):
        names = ckpt.get(k)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            info['label_names'] = list(names)
            break
    train_args = run_dir.saved_args(ckpt)
    if 'imagenet_default_mean_and_std' in train_args:
        info['imagenet_default_mean_and_std'] = run_dir.imagenet_mean_and_std(train_args)
    # the evaluation's size and crop, as predict.py takes them from the checkpoint
    if isinstance(train_args.get('input_size'), int):
        info['input_size'] = train_args['input_size']
    if isinstance(train_args.get('crop_pct'), (int, float)):
        info['crop_pct'] = float(train_args['crop_pct'])
    return info


def model_card(model: nn.Module, input_size: int, info: dict[str, Any], source: str) -> str:
    """The Hugging Face model card (``README.md``) of an exported HorNet."""
    name = model.pretrained_cfg['architecture']
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gflops = calc_flops.count_flops(model, (input_size, input_size))['total'] / 1e9
    if 'top1' in info:
        epoch = f' (epoch {info["epoch"]})' if 'epoch' in info else ''
        accuracy = f'- Top-1 accuracy logged with the checkpoint{epoch}: {info["top1"]:.2f}%'
    else:
        accuracy = '- Accuracy: not logged with the checkpoint'
    return f"""---
license: mit
library_name: timm
tags:
- image-classification
- timm
---
# {name}

A HorNet (gnConv, recursive gated convolutions) image classifier for timm, exported from `{source}`.

- Variant: `{name}`, {model.num_classes} classes
- Parameters: {params:.2f} M; GFLOPs: {gflops:.2f} at {input_size}x{input_size}
{accuracy}
- License: MIT
- Paper: https://arxiv.org/abs/2207.14284

## How to load

```python
import timm
import hornet  # registers the hornet_* variants (pip install the HorNet repository)

model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()
# once uploaded: timm.create_model('hf-hub:USER/REPO', pretrained=True)
cfg = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**cfg)
```

## Citation

```bibtex
{_CITATION}
```
"""


def _write_file_atomic(path: str, write) -> None:
    """``write(tmp_path)``, then rename over ``path``: a failed export never leaves a half file."""
    path = os.path.abspath(path)  # the temp keeps the suffix: exporters and loaders go by it (.onnx, .pt2)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-hornet-export-', suffix=os.path.splitext(path)[1],
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def hub_config(model: nn.Module, input_size: int, model_config: dict[str, Any] | None = None,
               imagenet_default_mean_and_std: bool = True, crop_pct: float | None = None) -> dict[str, Any]:
    """The ``config.json`` of a hub export (timm's ``save_config_for_hf``). Its preprocessing is the
    evaluation's at ``input_size`` with the mean/std the weights were trained with
    (:func:`models.hornet.eval_data_config`, what ``datasets.eval_transform`` does), so timm's
    ``create_transform(**resolve_data_config(...))`` of the loaded model preprocesses as we evaluate."""
    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'config.json')
        save_config_for_hf(model, path, model_config=dict(model_config or {}),
                           data_config=models.hornet.eval_data_config(
                               input_size, crop_pct, imagenet_default_mean_and_std=imagenet_default_mean_and_std))
        with open(path, encoding='utf-8') as f:
            cfg = json.load(f)
    for k in ('url', 'origin_url', 'tag'):  # these describe the released weights, not this export
        cfg['pretrained_cfg'].pop(k, None)
    return cfg


def write_hub_folder(model: nn.Module, folder: str, input_size: int, info: dict[str, Any], source: str,
                     overwrite: bool = False) -> list[str]:
    """Write the files timm's ``local-dir:``/``hf-hub:`` loader reads into ``folder``; returns their paths.

    Raises:
        FileExistsError: one of :data:`HUB_FILES` exists and ``overwrite`` is false.
    """
    paths = [os.path.join(folder, f) for f in HUB_FILES]
    existing = [os.path.basename(p) for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f'{folder} already holds {", ".join(existing)}; pass --overwrite to replace them')
    os.makedirs(folder, exist_ok=True)
    config: dict[str, Any] = {}
    if 'label_names' in info:
        if len(info['label_names']) != model.num_classes:
            raise ValueError(f'the checkpoint names {len(info["label_names"])} classes but its head has '
                             f'{model.num_classes}; fix or drop its label_names')
        config['label_names'] = info['label_names']

    def write_config(tmp: str) -> None:
        cfg = hub_config(model, input_size, config, info.get('imagenet_default_mean_and_std', True),
                         info.get('crop_pct'))
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(cfg, f, indent=2)

    run_dir.save_safetensors(model.state_dict(), paths[1])
    _write_file_atomic(paths[0], write_config)
    card = model_card(model, input_size, info, source)
    _write_file_atomic(paths[2], lambda tmp: open(tmp, 'w', encoding='utf-8').write(card))
    return paths


def output_error(output: str, checkpoint_path: str, fmt: str, overwrite: bool) -> str | None:
    """Why ``--output`` cannot be written, else None; checked before anything is read or written.

    The input checkpoint is never among the files written, with ``--overwrite`` or without; an
    existing output file is replaced only with ``--overwrite`` (a hub folder's own files: see
    :func:`write_hub_folder`)."""
    hub = fmt == 'hub'
    targets = [os.path.join(output, f) for f in HUB_FILES] if hub else [output]
    if hub and os.path.exists(output) and not os.path.isdir(output):
        return f'--format hub writes a folder, but {output} is a file'
    if not hub and os.path.isdir(output):
        return f'--output {output} is a folder; name the file to write, e.g. {os.path.join(output, "model." + fmt)}'
    if checkpoint_path and os.path.realpath(checkpoint_path) in {os.path.realpath(t) for t in targets}:
        return (f'--output {output} would overwrite the input checkpoint {checkpoint_path}; '
                f'pick another {"folder" if hub else "file"}')
    if not hub and os.path.lexists(output) and not overwrite:
        return f'{output} exists; pass --overwrite to replace it'
    return None


def export_hub_folder(model: nn.Module, args: argparse.Namespace, input_size: int) -> int:
    """``--format hub``: write the folder, load it back through timm and compare logits."""
    folder = os.path.abspath(args.output)
    try:
        info = checkpoint_info(args.checkpoint, args.checkpoint_key) if args.checkpoint else {}
        if not args.input_size and 'input_size' in info:  # the size the weights were trained and evaluated at
            input_size = info['input_size']
        source = os.path.basename(args.checkpoint) if args.checkpoint else 'random weights'
        write_hub_folder(model, folder, input_size, info, source, args.overwrite)
    except (FileExistsError, ValueError, models.CheckpointFileError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'error: cannot write {folder}: {e.strerror or e}', file=sys.stderr)
        return 2
    print(f'Wrote {args.model} to {folder}: {", ".join(HUB_FILES)}')
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, 3, input_size, input_size, generator=gen)
    with torch.no_grad():
        ref = model(x).numpy()
        diff = compare(ref, loaded(x).numpy())
    ok = diff['max_abs'] <= args.atol + args.rtol * float(np.abs(ref).max())
    print(f'verify local-dir load: max abs diff {diff["max_abs"]:.3e} ({"ok" if ok else "FAILED"})')
    if not ok:
        print('error: the hub folder loads into a model that differs from the source', file=sys.stderr)
        return 1
    return 0


def positive_int_arg(value: str) -> int:
    """argparse type: an integer >= 1."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return n


def get_args_parser() -> argparse.ArgumentParser:
    parser = utils.OneLineArgumentParser(
        'HorNet export', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='variant name, e.g. hornet_tiny_gf')
    parser.add_argument('--checkpoint', default='', help='weights (.pth); random weights if omitted')
    parser.add_argument('--checkpoint_key', default='auto',
                        help='checkpoint entry to load, e.g. model_ema (default: model/module/state_dict)')
    parser.add_argument('--num_classes', type=int, default=None,
                        help='classifier size without a checkpoint (default: the variant\'s 1000)')
    parser.add_argument('--input_size', type=input_size_arg, default=None,
                        help='square input size, at least 32 (default: the variant\'s pretrained_cfg size; '
                             'hub: the checkpoint\'s training size when it holds one, as predict.py)')
    parser.add_argument('--format', choices=('onnx', 'torch_export', 'hub'), required=True,
                        help='hub: a folder for timm\'s hub loader (config.json, model.safetensors, README.md)')
    parser.add_argument('--dynamic_batch', action='store_true', help='export with a variable batch dimension')
    parser.add_argument('--output', required=True, help='output file (.onnx or .pt2), or folder (hub)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --output file (hub: config.json, model.safetensors and '
                             'README.md in an existing folder); the input checkpoint is never replaced')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: the exporter\'s)')
    parser.add_argument('--gf_filter', choices=('auto', 'dft', 'fft'), default='auto',
                        help='GF filter form: dft (matrix products) or fft; auto = dft for onnx, fft '
                             'for torch_export')
    parser.add_argument('--model_kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='extra timm.create_model kwargs as Python literals, e.g. '
                             'depths=1,1,1,1 base_dim=16')
    parser.add_argument('--rtol', type=float, default=1e-4, help='allowed difference relative to max|eager|')
    parser.add_argument('--atol', type=float, default=1e-5, help='allowed absolute difference on top of rtol')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random verification inputs')
    return parser


def output_file_error(output: str) -> str | None:
    """Why no file can be written at ``--output`` (a file or an unwritable folder above it), else
    None; checked before the model is built (a folder at ``--output`` itself: :func:`output_error`)."""
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):  # the folders export creates
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f'--output {output}: {parent} is a file, not a folder; pick another path'
    if not os.access(parent, os.W_OK | os.X_OK):
        return f'--output {output}: the folder {parent} is not writable; pick another path'
    return None


@utils.exits_on_user_error()
def main(argv: Sequence[str] | None = None) -> int:
    """Export and verify; returns the exit status (0 ok, 1 verification failed, 2 usage error)."""
    args = get_args_parser().parse_args(argv)
    if args.format != 'hub' and not os.path.isdir(args.output) and (message := output_file_error(args.output)):
        print(f'error: {message}', file=sys.stderr)
        return 2
    if args.format == 'torch_export' and not args.output.endswith('.pt2'):
        print(f'error: torch_export output must end in .pt2 (torch.export.load needs it), got {args.output!r}',
              file=sys.stderr)
        return 2
    if message := output_error(args.output, args.checkpoint, args.format, args.overwrite):
        print(f'error: {message}', file=sys.stderr)
        return 2
    try:
        model = create_model(args.model, args.checkpoint or None, args.checkpoint_key, args.num_classes,
                             parse_model_kwargs(args.model_kwargs))
    except (ValueError, FileNotFoundError, models.CheckpointMismatchError, models.CheckpointFileError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    input_size = args.input_size or model.pretrained_cfg['input_size'][-1]
    if args.format == 'hub':
        return export_hub_folder(model, args, input_size)
    gf = has_global_filter(model)
    use_dft = gf and (args.gf_filter == 'dft' or (args.gf_filter == 'auto' and args.format == 'onnx'))
    models.set_dft_filter(model, use_dft)

    # torch.export specialises a dynamic dimension traced at size 1, so trace dynamic exports at 2
    example = torch.randn(2 if args.dynamic_batch else 1, 3, input_size, input_size)
    mixer = ('GF filter as DFT matmuls' if use_dft else 'GF filter as torch.fft') if gf else '7x7 dwconv'
    print(f'Exporting {args.model} ({mixer}) at {input_size}x{input_size} to {args.format}: {args.output}')
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        # through a temp file in the same folder: a failed export leaves an older file of the name intact
        with torch.no_grad():
            if args.format == 'onnx':
                _write_file_atomic(args.output, lambda tmp: export_onnx(model, example, tmp, args.dynamic_batch,
                                                                        args.opset))
            else:
                _write_file_atomic(args.output, lambda tmp: export_program(model, example, tmp,
                                                                           args.dynamic_batch))
    except OSError as e:  # full disk, permissions, a folder removed meanwhile
        print(f'error: cannot write --output {args.output}: {e.strerror or e}', file=sys.stderr)
        return 2

    batches = (1, 3) if args.dynamic_batch else (1,)
    # eager reference: the FFT path, so the check also covers DFT == FFT
    models.set_dft_filter(model, False)
    results = verify(model, args.output, args.format, input_size, batches, args.rtol, args.atol, args.seed)
    for r in results:
        print(f'verify batch {r["batch"]}: max abs diff {r["max_abs"]:.3e}, max rel diff {r["max_rel"]:.3e} '
              f'({"ok" if r["ok"] else "FAILED"}; rtol {args.rtol:g}, atol {args.atol:g})')
    if not all(r['ok'] for r in results):
        print('error: exported model differs from the eager model beyond tolerance', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
