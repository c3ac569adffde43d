"""GPU cost model that runs without a GPU: an ESTIMATE of one step's time on a named card.

It traces one forward, or one training step (forward + backward + AdamW step), of any timm model on
fake CUDA tensors (``FakeTensorMode``: shapes, dtypes and strides, no data), with CUDA autocast set
by hand, and lists every aten op that launches a kernel with its FLOPs (``torch.utils.flop_counter``'s
registered formulas for matmuls and convolutions; FFTs ``2.5 N log2 n``), the bytes it reads and
writes, and its dtype. Autocast's casts (``_to_copy`` to another dtype) are counted apart. The
estimated time of a kernel is ``max(flops / peak_flops, bytes / memory_bandwidth, launch_overhead)``
on the card's datasheet numbers (:data:`GPUS`), and a step's the sum over its kernels.

What it is not: a measurement. It ignores caches (L2 hits count as memory traffic), kernel
efficiency below peak, multi-kernel ops (one launch per aten op; foreach ops one per chunk of
tensors) and overlap of launches with work (eager launches ~5 us each on the host; a launch-bound
model pays them, a compute-bound one hides them). Grouped/depthwise convolutions and FFTs use the
CUDA-core peak, dense products the tensor-core peak of their dtype (fp32 as TF32 with ``--tf32
true``, main.py's default). It is for *ratios* (HorNet / ConvNeXt, before / after a change) and for
finding where the bytes go. ``benchmarks/device_check.py`` prints it next to the measured time of
each model on the card it runs on; the ratio measured / estimated is the calibration (see
benchmarks/GPU.md).

How the backward is traced: PyTorch's autograd engine refuses a backward over fake CUDA tensors on a
machine without a GPU (it asks for a CUDA context). So the forward is traced on fake CUDA tensors
under CUDA autocast into an aten graph (``make_fx``: the casts autocast inserts become explicit
``_to_copy`` nodes), and that graph is then replayed on fake CPU tensors with the same dtypes and
strides, where autograd runs: the backward ops are those autograd derives from the CUDA forward.
The model is traced as it runs in eager mode on CUDA (its custom ops included: the GF filter's
``hornet::global_filter`` pair is expanded into the FFT and product kernels it runs).

Examples::

    python benchmarks/gpu_roofline.py                       # HorNet-T/S/B 7x7 + GF, ConvNeXt-T/S/B
    python benchmarks/gpu_roofline.py --models hornet_tiny_gf convnext_tiny --mode train --top 20
    python benchmarks/gpu_roofline.py --gpu a100 --amp_dtype float32 --tf32 false
    python benchmarks/gpu_roofline.py --mode forward --warm   # inference after the first forward
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import sys
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

if not __package__:  # run as a file: see _repo_root.py
    import _repo_root  # noqa: F401

import models  # noqa: F401  (registers hornet_*)


@dataclasses.dataclass(frozen=True)
class GPU:
    """Datasheet numbers of one card (dense, no sparsity), FLOP/s and bytes/s."""
    name: str
    tensor_flops: dict[str, float]  # tensor-core peak by compute dtype: bf16, fp16, tf32
    simt_flops: dict[str, float]  # CUDA-core peak: fp32, bf16/fp16 (packed)
    mem_bw: float
    launch_s: float  # eager launch overhead per kernel (host side)


# SXM parts. H100 / H200: 989 TFLOP/s bf16/fp16 dense, 495 TF32, 67 fp32 (CUDA cores, 134 packed
# bf16); A100: 312 bf16/fp16, 156 TF32, 19.5 fp32 (39 packed bf16). ~5 us per eager launch.
GPUS: dict[str, GPU] = {
    'h100': GPU('NVIDIA H100 SXM', dict(bf16=989e12, fp16=989e12, tf32=494.7e12),
                dict(fp32=66.9e12, bf16=133.8e12, fp16=133.8e12), 3.35e12, 5e-6),
    'h200': GPU('NVIDIA H200 SXM', dict(bf16=989e12, fp16=989e12, tf32=494.7e12),
                dict(fp32=66.9e12, bf16=133.8e12, fp16=133.8e12), 4.8e12, 5e-6),
    'a100': GPU('NVIDIA A100 SXM 80GB', dict(bf16=312e12, fp16=312e12, tf32=156e12),
                dict(fp32=19.5e12, bf16=39e12, fp16=39e12), 2.039e12, 5e-6),
}

SIZES = ('tiny', 'small', 'base')
DEFAULT_MODELS = [f'hornet_{s}_{k}' for s in SIZES for k in ('7x7', 'gf')] + [f'convnext_{s}' for s in SIZES]
DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': None}
_SHORT = {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32', torch.float64: 'fp64',
          torch.complex64: 'c64', torch.int64: 'i64', torch.int32: 'i32', torch.bool: 'bool', torch.uint8: 'u8'}

# ops that launch no kernel: allocations, metadata, host-side bookkeeping
_NO_KERNEL = {'empty', 'empty_strided', 'empty_like', 'new_empty', 'new_empty_strided', '_unsafe_view', 'detach',
              'lift_fresh', 'lift_fresh_copy', 'sym_size', 'sym_stride', 'sym_numel', 'sym_storage_offset', 'device',
              '_record_function_enter_new', '_record_function_exit', 'set_', 'resize_', '_reshape_alias'}
# real-to-complex FFTs and back: ~2.5 N log2(n) FLOPs for N real points in transforms of n points
_FFT_R2C = {'_fft_r2c', 'fft_rfft2', 'fft_rfftn', 'fft_rfft'}
_FFT_C2R = {'_fft_c2r', 'fft_irfft2', 'fft_irfftn', 'fft_irfft'}
_FOREACH_TENSORS_PER_LAUNCH = 48  # multi_tensor_apply's tensors per launch (36-110 by list count)


@dataclasses.dataclass
class Kernel:
    """One launch (or, for foreach ops, ``launches`` of them) of an aten op."""
    op: str
    phase: str  # forward / backward / optimizer
    shape: tuple[int, ...]
    dtype: str
    flops: float
    read: int
    written: int
    cast: bool
    launches: int
    peak: str  # which peak its FLOPs run at: tensor:<dtype>, simt:<dtype> or '' (no FLOPs counted)
    weight_side: bool = False  # all its inputs derive from weights alone (casts, folds, slices of weights)


def kernel_time(k: Kernel, gpu: GPU) -> float:
    """Seconds: ``max(flops / peak, bytes / bandwidth, launches * launch overhead)``."""
    compute = 0.0
    if k.flops and k.peak:
        unit, dtype = k.peak.split(':')
        compute = k.flops / (gpu.tensor_flops if unit == 'tensor' else gpu.simt_flops)[dtype]
    return max(compute, (k.read + k.written) / gpu.mem_bw, k.launches * gpu.launch_s)


def _effective_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor view covers (broadcast dims, stride 0, count once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _dtype_key(dtype: torch.dtype, tf32: bool) -> str:
    if dtype in (torch.bfloat16, torch.float16):
        return _SHORT[dtype]
    return 'tf32' if tf32 else 'fp32'


def _groups(name: str, args: Sequence) -> int:
    idx = {'convolution': 8, 'convolution_backward': 9}.get(name)
    return int(args[idx]) if idx is not None and len(args) > idx else 1


class KernelRecorder(TorchDispatchMode):
    """Records a :class:`Kernel` for every kernel-launching aten op dispatched under it (on fake
    tensors). Custom (non-aten) ops with a Python body are expanded into the ops of that body."""

    def __init__(self, tf32: bool = True):
        super().__init__()
        self.kernels: list[Kernel] = []
        self.phase = 'forward'
        self.tf32 = tf32
        self._weights: dict[int, weakref.ref] = {}  # by id: tensor == is elementwise

    def mark_weights(self, tensors: Iterable[torch.Tensor]) -> None:
        """Tensors (the weights) whose derivatives count as weight-side work."""
        for t in tensors:
            self._weights[id(t)] = weakref.ref(t)

    def _is_weight(self, t: torch.Tensor) -> bool:
        r = self._weights.get(id(t))
        return r is not None and r() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns = func.namespace
        if ns not in ('aten', 'prims', 'prim', 'profiler'):
            body = _custom_op_body(func)
            if body is not None:
                with self:  # record the kernels the custom op runs
                    body(*args, **kwargs)
        out = func(*args, **kwargs)
        ins = _tensors((args, kwargs))
        weight_side = bool(ins) and all(self._is_weight(t) for t in ins)
        if weight_side:
            self.mark_weights(_tensors(out))
        if ns in ('aten', 'prims'):
            self._record(func, args, kwargs, out, weight_side)
        return out

    def _record(self, func, args, kwargs, out, weight_side: bool) -> None:
        name = func._schema.name.split('::')[-1]
        if func.is_view or name in _NO_KERNEL:
            return
        ins, outs = _tensors((args, kwargs)), _tensors(out)
        written_args = [a for a, arg in zip(args, func._schema.arguments, strict=False)
                        if arg.alias_info is not None and arg.alias_info.is_write]
        written_t = _tensors(written_args)
        read = sum(_effective_bytes(t) for t in ins)
        written = sum(_effective_bytes(t) for t in (written_t or outs))
        if name in ('zeros', 'zeros_like', 'ones', 'ones_like', 'full', 'full_like', 'fill_', 'zero_', 'scalar_tensor',
                    'randn', 'rand', 'randint', 'bernoulli_', 'uniform_', 'normal_'):
            read = 0  # fills read nothing
        first = (outs or written_t or ins or [None])[0]
        shape = tuple(first.shape) if first is not None else ()
        dtype = first.dtype if first is not None else torch.float32
        cast = name == '_to_copy' and ins and outs and ins[0].dtype != outs[0].dtype
        flops, peak = 0.0, ''
        packet = func.overloadpacket
        if name == 'convolution_backward' and _groups(name, args) > 1:
            # flop_counter's backward rule ignores groups for the weight gradient (a depthwise conv
            # would count C times its work): each gradient asked for costs one forward's FLOPs
            grad_out, x, w = args[:3]
            fwd = flop_registry[torch.ops.aten.convolution](x, w, None, *args[4:10], out_val=grad_out)
            flops = float(fwd * sum(bool(m) for m in args[10][:2]))
        if packet in flop_registry:
            if name != 'convolution_backward' or _groups(name, args) == 1:
                flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            in_dtype = ins[0].dtype if ins else dtype
            if _groups(name, args) > 1:  # depthwise / grouped: CUDA cores
                peak = f'simt:{_SHORT.get(in_dtype, "fp32") if in_dtype != torch.float32 else "fp32"}'
            else:
                peak = f'tensor:{_dtype_key(in_dtype, self.tf32)}'
        elif (name in _FFT_R2C or name in _FFT_C2R) and ins and outs:
            real = ins[0] if name in _FFT_R2C else outs[0]
            dims = kwargs.get('dim', args[2] if name.startswith('fft_') and len(args) > 2 else
                              args[1] if name.startswith('_fft') else (-2, -1))
            dims = [dims] if isinstance(dims, int) else dims
            n = math.prod(real.shape[d] for d in dims)
            flops = 2.5 * real.numel() * math.log2(max(n, 2))
            peak = 'simt:fp32'
        launches = 1
        if name.startswith('_foreach_') or name.startswith('_fused_'):
            lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
            launches = max(1, math.ceil(len(lists[0]) / _FOREACH_TENSORS_PER_LAUNCH)) if lists else 1
        self.kernels.append(Kernel(str(packet), self.phase, shape, _SHORT.get(dtype, str(dtype)), flops, read,
                                   written, bool(cast), launches, peak, weight_side and self.phase == 'forward'))


def _custom_op_body(func) -> Callable | None:
    """The Python function behind a ``torch.library.custom_op`` (None for other ops)."""
    from torch._library.custom_ops import OPDEFS
    opdef = OPDEFS.get(f'{func.namespace}::{func._schema.name.split("::")[-1]}')
    return getattr(opdef, '_init_fn', None)


@contextmanager
def eager_cuda_paths():
    """Run the model's code as on a CUDA device in eager mode. The models check
    ``is_in_torch_dispatch_mode()`` to leave their custom ops out of FX traces and FLOP counters; here
    the trace must see what CUDA eager runs (the recorder expands the custom ops itself)."""
    patched = [m for name, m in list(sys.modules.items())
               if (name == 'models' or name.startswith('models.') or name.startswith('hornet'))
               and m is not None and hasattr(m, 'is_in_torch_dispatch_mode')]
    saved = [m.is_in_torch_dispatch_mode for m in patched]
    try:
        for m in patched:
            m.is_in_torch_dispatch_mode = lambda: False
        yield
    finally:
        for m, f in zip(patched, saved, strict=True):
            m.is_in_torch_dispatch_mode = f


@contextmanager
def cuda_autocast(dtype: torch.dtype | None):
    """CUDA autocast switched on by hand: ``torch.autocast('cuda')`` disables itself where CUDA is
    not available, but the dispatcher applies CUDA autocast to (fake) CUDA tensors all the same."""
    if dtype is None:
        yield
        return
    prev = torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda')
    torch.set_autocast_enabled('cuda', True)
    torch.set_autocast_dtype('cuda', dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled('cuda', prev[0])
        torch.set_autocast_dtype('cuda', prev[1])


@dataclasses.dataclass
class Trace:
    model: str
    mode: str
    kernels: list[Kernel]
    params: int


def trace_step(name: str, mode: str = 'train', batch: int = 128, size: int = 224,
               amp_dtype: torch.dtype | None = torch.bfloat16, channels_last: bool = True, tf32: bool = True,
               model_kwargs: dict | None = None, patches: Iterable[Callable[[], Any]] = (), warm: bool = False,
               precast: bool = False) -> Trace:
    """Kernels of one ``mode`` step (``forward``: eval-mode forward, no grad; ``train``: forward,
    backward of a cross-entropy loss, AdamW step) of ``timm.create_model(name, **model_kwargs)`` on a
    CUDA device. ``patches``: context-manager factories entered around the model's build and trace
    (what-if experiments). ``warm``: a ``forward`` step is traced after a first, untraced forward, so
    what a model keeps across forwards (HorNet's weight cache, ``models.ops.weight_cache``) is not
    counted; a ``train`` step is the same warm or cold (nothing is cached with grad enabled).
    ``precast``: the weights of every ``nn.Conv2d`` / ``nn.Linear`` are stored in ``amp_dtype``
    (norm parameters stay float32), so autocast has none of them to cast."""
    with ExitStack() as stack:
        for p in patches:
            stack.enter_context(p())
        torch.manual_seed(0)
        model = timm.create_model(name, **(model_kwargs or {}))
        model.train(mode == 'train')
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if precast and amp_dtype is not None:
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    m.to(amp_dtype)
        n_params = sum(p.numel() for p in model.parameters())
        fake = FakeTensorMode()
        named = dict(model.named_parameters())
        named.update(model.named_buffers())
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with fake:
            # leaves, as the weights of a model on the GPU: autocast caches the casts of leaf weights
            state = {k: fake.from_tensor(v).to('cuda').detach().requires_grad_(v.requires_grad)
                     for k, v in named.items()}
            x = torch.randn(batch, 3, size, size, device='cuda').contiguous(memory_format=fmt)
            y = torch.randint(0, 1000, (batch,), device='cuda')

        def forward(state, x, y):
            with cuda_autocast(amp_dtype):
                out = torch.func.functional_call(model, state, (x,))
                if mode == 'forward':
                    return out
                return F.cross_entropy(out, y, label_smoothing=0.1)

        with fake, eager_cuda_paths(), torch.set_grad_enabled(mode == 'train'):
            if warm and mode == 'forward':
                forward(state, x, y)  # untraced: fills the caches the traced forward reuses
            graph = make_fx(forward)(state, x, y)
        recorder = KernelRecorder(tf32=tf32)
        if mode == 'forward':
            # no autograd needed: replay on fake CUDA tensors, the devices the graph names
            recorder.mark_weights(state.values())
            with fake, torch.no_grad(), recorder:
                graph(state, x, y)
            return Trace(name, mode, recorder.kernels, n_params)
        _cpu_graph(graph)
        with fake:
            cpu_state = {k: _like_on_cpu(v, requires_grad=k in dict(model.named_parameters()))
                         for k, v in state.items()}
            cx, cy = _like_on_cpu(x), _like_on_cpu(y)
            leaves = [v for v in cpu_state.values() if v.requires_grad]
            recorder.mark_weights(cpu_state.values())
            with recorder:
                loss = graph(cpu_state, cx, cy)
                recorder.phase = 'backward'
                grads = torch.autograd.grad(loss, leaves)
            # AdamW (foreach, as torch picks on CUDA) on fake CUDA tensors; capturable keeps its step
            # counters on the device (no host read of fake data). The first step creates the state.
            params = [torch.nn.Parameter(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device='cuda'))
                      for p in leaves]
            for p, g in zip(params, grads, strict=True):
                p.grad = torch.empty_strided(g.shape, g.stride(), dtype=g.dtype, device='cuda')
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, foreach=True, capturable=True)
            opt.step()
            recorder.phase = 'optimizer'
            with recorder:
                opt.step()
                for p in params:
                    p.grad = None
    return Trace(name, mode, recorder.kernels, n_params)


def _like_on_cpu(t: torch.Tensor, requires_grad: bool = False) -> torch.Tensor:
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device='cpu')
    return out.requires_grad_(requires_grad)


def _cpu_graph(graph: torch.fx.GraphModule) -> None:
    """Point the graph's factory calls (``device='cuda'``) at the CPU, for the autograd replay."""
    for node in graph.graph.nodes:
        if isinstance(node.kwargs.get('device'), torch.device) and node.kwargs['device'].type == 'cuda':
            node.kwargs = {**node.kwargs, 'device': torch.device('cpu')}
    graph.recompile()


# ----------------------------------------------------------------------------- report

def totals(trace: Trace, gpu: GPU) -> dict[str, float]:
    ks = trace.kernels
    return dict(kernels=sum(k.launches for k in ks), gib_read=sum(k.read for k in ks) / 2 ** 30,
                gib_written=sum(k.written for k in ks) / 2 ** 30, casts=sum(k.cast for k in ks),
                gflop=sum(k.flops for k in ks) / 1e9, ms=1e3 * sum(kernel_time(k, gpu) for k in ks),
                ms_fwd_bwd=1e3 * sum(kernel_time(k, gpu) for k in ks if k.phase != 'optimizer'),
                weight_kernels=sum(k.launches for k in ks if k.weight_side),
                ms_weight=1e3 * sum(kernel_time(k, gpu) for k in ks if k.weight_side),
                ms_launch=1e3 * sum(k.launches * gpu.launch_s for k in ks if kernel_time(k, gpu) <= k.launches
                                    * gpu.launch_s))


def top_writers(trace: Trace, n: int) -> list[tuple[str, str, tuple, str, int, int, float]]:
    """``(phase, op, shape, dtype, count, bytes written, bytes written / step)`` grouped by op, shape and dtype."""
    groups: dict[tuple, list[Kernel]] = defaultdict(list)
    for k in trace.kernels:
        groups[(k.phase, k.op, k.shape, k.dtype)].append(k)
    rows = [(*key, len(ks), ks[0].written, sum(k.written for k in ks)) for key, ks in groups.items()]
    return sorted(rows, key=lambda r: -r[-1])[:n]


def by_op(trace: Trace, gpu: GPU) -> Counter:
    c: Counter = Counter()
    for k in trace.kernels:
        c[k.op] += kernel_time(k, gpu)
    return c


def _num(x: float) -> str:
    return f'{x:.0f}' if x >= 100 else f'{x:.3g}'


def _convnext_of(name: str) -> str | None:
    for size in ('tiny', 'small', 'base', 'large'):
        if name.startswith(f'hornet_{size}'):
            return f'convnext_{size}'
    return None


def _literal_kwargs(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition('=')
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


@contextmanager
def _bf16_layer_norm():
    """What if every LayerNorm ran in the autocast dtype (as timm's fast_norm does for its own
    classes): input, weight and bias cast to it, the statistics inside the kernel in fp32 as
    cuDNN/apex do, output in the autocast dtype. Patches ``F.layer_norm``, which every model here uses."""
    plain = F.layer_norm

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        if not (x.device.type == 'cuda' and torch.is_autocast_enabled('cuda')):
            return plain(x, normalized_shape, weight, bias, eps)
        dt = torch.get_autocast_dtype('cuda')
        torch.set_autocast_enabled('cuda', False)
        try:
            return plain(x.to(dt), normalized_shape, weight.to(dt) if weight is not None else None,
                         bias.to(dt) if bias is not None else None, eps)
        finally:
            torch.set_autocast_enabled('cuda', True)
    F.layer_norm = layer_norm
    try:
        yield
    finally:
        F.layer_norm = plain


# what-if experiments (--patch): each a context-manager factory applied around build and trace
PATCHES: dict[str, Callable[[], Any]] = {'bf16_norm': _bf16_layer_norm}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=DEFAULT_MODELS)
    p.add_argument('--mode', nargs='+', default=['forward', 'train'], choices=['forward', 'train'])
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--input_size', type=int, default=224)
    p.add_argument('--amp_dtype', default='bfloat16', choices=sorted(DTYPES))
    p.add_argument('--channels_last', default='true', choices=['true', 'false'])
    p.add_argument('--tf32', default='true', choices=['true', 'false'], help='fp32 products in TF32 (main.py default)')
    p.add_argument('--gpu', default='h100', choices=sorted(GPUS))
    p.add_argument('--top', type=int, default=8, help='top writers listed per model and mode (0: none)')
    p.add_argument('--hornet_kwargs', nargs='*', default=[], metavar='K=V',
                   help='timm.create_model kwargs for hornet_* models, e.g. depths=1,1,1,1 base_dim=16')
    p.add_argument('--convnext_kwargs', nargs='*', default=[], metavar='K=V',
                   help='timm.create_model kwargs for convnext_* models, e.g. depths=1,1,1,1 dims=16,32,64,128')
    p.add_argument('--patch', nargs='*', default=[], choices=sorted(PATCHES),
                   help='what-if patches applied inside this process (see PATCHES)')
    p.add_argument('--warm', action='store_true',
                   help='forward: trace a second forward after a first, untraced one (what a model caches '
                        "across forwards, HorNet's inference weight cache, is not counted); train: no change")
    p.add_argument('--precast', action='store_true',
                   help='store every Conv2d/Linear weight in the autocast dtype (no weight casts by autocast; '
                        'norms stay float32): what a model without a weight cache gets from bf16 weights')
    args = p.parse_args(argv)
    gpu = GPUS[args.gpu]
    amp = DTYPES[args.amp_dtype]
    hk, ck = _literal_kwargs(args.hornet_kwargs), _literal_kwargs(args.convnext_kwargs)
    valid = set(timm.list_models())
    bad = [m for m in args.models if m not in valid]
    if bad:
        p.error(f'unknown model(s) {", ".join(bad)}; any timm model name works, e.g. hornet_tiny_7x7, convnext_tiny')
    print(f'# GPU cost model, an ESTIMATE (not a measurement): {gpu.name}, {gpu.tensor_flops["bf16"] / 1e12:.0f} '
          f'TFLOP/s bf16, {gpu.mem_bw / 1e12:.2f} TB/s, {gpu.launch_s * 1e6:.0f} us per launch; '
          f'torch {torch.__version__}, timm {timm.__version__}')
    print(f'# batch {args.batch_size}, {args.input_size}px, autocast {args.amp_dtype}, channels_last '
          f'{args.channels_last}, tf32 {args.tf32}' + (f', patches {" ".join(args.patch)}' if args.patch else '')
          + (', warm forward (traced after a first forward)' if args.warm else '')
          + (', Conv2d/Linear weights pre-cast' if args.precast else ''))
    results: dict[tuple[str, str], dict] = {}
    traces: dict[tuple[str, str], Trace] = {}
    for mode in args.mode:
        for name in args.models:
            kw = hk if name.startswith('hornet') else ck if name.startswith('convnext') else {}
            t = trace_step(name, mode, args.batch_size, args.input_size, amp, args.channels_last == 'true',
                           args.tf32 == 'true', kw, [PATCHES[x] for x in args.patch], args.warm, args.precast)
            traces[(name, mode)] = t
            results[(name, mode)] = totals(t, gpu)
    print()
    print('| model | mode | params M | kernels | GiB read | GiB written | casts | GFLOP | est. ms | '
          'est. ms fwd+bwd | launch-bound ms | weight-side kernels / ms | x convnext |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for (name, mode), r in results.items():
        cnx = results.get((_convnext_of(name), mode))
        ratio = f'{r["ms"] / cnx["ms"]:.2f}' if cnx else '-'
        print(f'| {name} | {mode} | {traces[(name, mode)].params / 1e6:.1f} | {r["kernels"]} | {r["gib_read"]:.1f} | '
              f'{r["gib_written"]:.1f} | {r["casts"]} | {_num(r["gflop"])} | {r["ms"]:.2f} | {r["ms_fwd_bwd"]:.2f} | '
              f'{r["ms_launch"]:.2f} | '
              f'{r["weight_kernels"]} / {r["ms_weight"]:.2f} | {ratio} |')
    ratios = [(name, mode, results[(name, mode)]['ms'] / results[(c, mode)]['ms'])
              for (name, mode) in results if (c := _convnext_of(name)) and (c, mode) in results]
    if ratios:
        print()
        print('# HorNet / ConvNeXt estimated time: ' + ', '.join(f'{n} {m} {x:.2f}x' for n, m, x in ratios))
    if args.top:
        for (name, mode), t in traces.items():
            print(f'\n## top writers: {name} {mode} (op, shape, dtype, count, MiB each, MiB total)')
            for phase, op, shape, dtype, count, each, total in top_writers(t, args.top):
                print(f'- {phase} {op} {list(shape)} {dtype} x{count}: {each / 2 ** 20:.1f} MiB, '
                      f'{total / 2 ** 20:.0f} MiB')
            ops = by_op(t, gpu).most_common(args.top)
            print('  est. ms by op: ' + ', '.join(f'{op} {1e3 * s:.2f}' for op, s in ops))
    return 0


if __name__ == '__main__':
    sys.exit(main())
