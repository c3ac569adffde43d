"""Unit tests of the training pieces: schedules, EMA, mixup, gradient
accumulation, bf16 autocast, fine-tuning with head maps and GF filter resizing, preemption
signals deferred to step boundaries."""
import copy
import io
import math
import os
import signal

import pytest
import timm
import torch
from timm.utils import ModelEmaV3

import main as train_main
import models
import utils
from engine import evaluate, train_one_epoch
from helpers import ROOT, SMALL
from optim_factory import Schedules, create_optimizer


def _tiny(name='hornet_tiny_gf', **kw):
    torch.manual_seed(0)
    return timm.create_model(name, **SMALL, num_classes=3, **kw)


def _args(**kw):
    args = train_main.parse_args(['--device', 'cpu'])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _batches(n, bs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n)]


def test_schedule_warmup_cosine_and_weight_decay():
    """lr rises linearly over the warmup, follows a cosine to min_lr, scaled per group;
    weight decay follows its own cosine and stays 0 on no-decay groups."""
    model = _tiny()
    args = _args(lr=1e-3, min_lr=1e-5, epochs=10, warmup_epochs=2, weight_decay=0.05,
                 weight_decay_end=0.5, layer_decay=0.5)
    opt = create_optimizer(args, model)
    s = Schedules(opt, args, steps_per_epoch=5)
    assert (s.total_steps, s.warmup_steps) == (50, 10)
    s.step(5)
    top = [g for g in opt.param_groups if g['layer_id'] == 13][0]
    stem = [g for g in opt.param_groups if g['layer_id'] == 0][0]
    assert top['lr'] == pytest.approx(0.5e-3) and stem['lr'] == pytest.approx(0.5e-3 * 0.5 ** 13)
    s.step(10)
    assert top['lr'] == pytest.approx(1e-3)
    s.step(30)  # half way through the cosine part
    assert top['lr'] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    wd = 0.5 + 0.5 * (0.05 - 0.5) * (1 + math.cos(math.pi * 30 / 50))
    assert all(g['weight_decay'] == (pytest.approx(wd) if g['use_wd'] else 0.0) for g in opt.param_groups)
    s.step(50)
    assert top['lr'] == pytest.approx(1e-5)
    args.warmup_steps = 3
    assert Schedules(opt, args, steps_per_epoch=5).warmup_steps == 3


def test_ema_update_math():
    """After one optimizer step, EMA = d * previous + (1 - d) * new weights."""
    model = _tiny()
    ema = ModelEmaV3(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    args = _args(lr=1e-2, warmup_epochs=0, epochs=1)
    opt = create_optimizer(args, model)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), _batches(1, 4), opt, torch.device('cpu'), 0,
                    utils.LossScaler('cpu'), model_ema=ema, schedules=Schedules(opt, args, 1))
    moved = 0
    for k, v in model.state_dict().items():
        expect = 0.9 * before[k] + 0.1 * v
        torch.testing.assert_close(ema.module.state_dict()[k], expect, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(v, before[k]))
    assert moved > 10


def test_mixup_on_and_off():
    """Mixup on: soft targets summing to 1 with SoftTargetCrossEntropy; off: label smoothing
    or plain cross-entropy."""
    args = _args(mixup=0.8, cutmix=1.0, smoothing=0.1)
    mixup_fn, crit = train_main.build_training_parts(args, 3)
    assert type(crit).__name__ == 'SoftTargetCrossEntropy'
    x, y = _batches(1, 8)[0]
    torch.manual_seed(1)
    mx, my = mixup_fn(x.clone(), y.clone())
    assert my.shape == (8, 3) and torch.allclose(my.sum(1), torch.ones(8))
    assert my.max() < 1.0 and not torch.equal(mx, x)  # mixed images and labels
    mixup_fn, crit = train_main.build_training_parts(_args(mixup=0, cutmix=0, smoothing=0.1), 3)
    assert mixup_fn is None and type(crit).__name__ == 'LabelSmoothingCrossEntropy'
    mixup_fn, crit = train_main.build_training_parts(_args(mixup=0, cutmix=0, smoothing=0), 3)
    assert mixup_fn is None and isinstance(crit, torch.nn.CrossEntropyLoss)
    # a training epoch with mixup gives a finite, soft-target loss
    model = _tiny()
    args = _args(mixup=0.8, cutmix=1.0, smoothing=0.1, warmup_epochs=0, epochs=1)
    mixup_fn, crit = train_main.build_training_parts(args, 3)
    opt = create_optimizer(args, model)
    stats = train_one_epoch(model, crit, _batches(2, 8), opt, torch.device('cpu'), 0, utils.LossScaler('cpu'),
                            mixup_fn=mixup_fn, schedules=Schedules(opt, args, 2))
    assert math.isfinite(stats['loss']) and 0.5 < stats['loss'] < 3.0 and 'class_acc' not in stats


def test_update_freq_equals_larger_batch():
    """Two micro-batches of 4 with --update_freq 2 give the same weights as batches of 8 (with
    --clip_grad_mode step; the default per-micro-batch fp32 clipping is tested below)."""
    big = _batches(3, 8)
    small = [(x[i:i + 4], y[i:i + 4]) for x, y in big for i in (0, 4)]
    results = []
    for batches, freq in ((big, 1), (small, 2)):
        model = _tiny('hornet_tiny_7x7')
        args = _args(lr=1e-3, warmup_epochs=0, epochs=1, clip_grad=1.0)
        opt = create_optimizer(args, model)
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches, opt, torch.device('cpu'), 0,
                        utils.LossScaler('cpu'), max_norm=args.clip_grad,
                        schedules=Schedules(opt, args, 3), update_freq=freq, clip_mode='step')
        results.append(model.state_dict())
    diff = max((results[0][k] - results[1][k]).abs().max().item() for k in results[0])
    init = _tiny('hornet_tiny_7x7').state_dict()
    moved = max((results[0][k] - init[k]).abs().max().item() for k in init)
    assert diff < 1e-5 and moved > 2e-3  # Adam moves ~lr per step; fp32 summation order differs


def test_bf16_autocast_step_on_cpu():
    """--use_amp true --amp_dtype bf16: autocast runs the model in bfloat16 on CPU, no grad
    scaler, fp32 master weights move and the loss is finite."""
    args = _args(use_amp=True, amp_dtype='bf16', warmup_epochs=0, epochs=1, lr=1e-3)
    dtype = train_main.amp_dtype_of(args)
    assert dtype == torch.bfloat16
    model = _tiny('hornet_tiny_7x7')
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    init = copy.deepcopy(model.state_dict())
    opt = create_optimizer(args, model)
    scaler = utils.LossScaler('cpu', enabled=dtype == torch.float16)
    stats = train_one_epoch(model, torch.nn.CrossEntropyLoss(), _batches(2, 4), opt, torch.device('cpu'), 0,
                            scaler, schedules=Schedules(opt, args, 2), amp_dtype=dtype)
    assert seen == [torch.bfloat16, torch.bfloat16] and scaler.state_dict() == {}
    assert math.isfinite(stats['loss']) and model.head.weight.dtype == torch.float32
    assert (model.head.weight - init['head.weight']).abs().max() > 1e-4


def test_finetune_head_map_and_gf_resize(tmp_path):
    """--finetune: a 5-class head maps to 3 classes row by row with --head_map; GF filters
    resize to an img384 model; a mismatched head is dropped without a map."""
    src = _tiny()
    src.reset_classifier(5)
    torch.save({'model': src.state_dict()}, tmp_path / 'src.pth')
    (tmp_path / 'map.txt').write_text('4\n0\n2  # comment\n')
    args = _args(finetune=str(tmp_path / 'src.pth'), head_map=str(tmp_path / 'map.txt'),
                 model='hornet_base_gf_img384', depths=[1, 1, 1, 1], base_dim=16, nb_classes=3)
    model = train_main.build_model(args)
    train_main.load_finetune(args, model)
    torch.testing.assert_close(model.head.weight, src.head.weight[[4, 0, 2]])
    cw = model.stages[2][0].gnconv.dwconv.complex_weight
    assert cw.shape[1:3] == (24, 13)
    src_cw = src.stages[2][0].gnconv.dwconv.complex_weight
    torch.testing.assert_close(cw, models.resize_complex_weight(src_cw, (24, 13)))
    args.head_map = ''
    fresh = train_main.build_model(args)
    head_before = fresh.head.weight.clone()
    train_main.load_finetune(args, fresh)
    assert torch.equal(fresh.head.weight, head_before)
    torch.testing.assert_close(fresh.norm.weight, src.norm.weight)


# ----------------------------------------------------------------------------- gradient clipping

def _clip_batches(rank=0, n=4, bs=4):
    return _batches(n, bs, seed=100 + rank)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def _hand_loop(batches_per_rank, update_freq, max_norm, mode):
    """The reference semantics, written out: per micro-batch, the gradient of loss / update_freq
    (averaged over ranks, as DDP does) is added to the accumulator; 'micro' clips the accumulator
    after every micro-batch (only when max_norm > 0.1), 'step' clips once before the step."""
    model = _tiny('hornet_tiny_7x7')
    opt = _sgd(model)
    params = list(model.parameters())
    ce = torch.nn.CrossEntropyLoss()
    n_ranks = len(batches_per_rank)
    for i in range(len(batches_per_rank[0])):
        loss = sum(ce(model(batches[i][0]), batches[i][1]) / update_freq for batches in batches_per_rank) / n_ranks
        loss.backward()
        if mode == 'micro' and max_norm > 0.1:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if (i + 1) % update_freq == 0:
            if mode == 'step':
                torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()
            opt.zero_grad()
    return model.state_dict()


def _engine_run(batches, mode, max_norm, model=None):
    model = model if model is not None else _tiny('hornet_tiny_7x7')
    opt = _sgd(model)
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), batches, opt, torch.device('cpu'), 0,
                    utils.LossScaler('cpu'), max_norm=max_norm, update_freq=2, clip_mode=mode)
    return model


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fp32_clipping_per_micro_batch_and_per_step():
    """fp32, --update_freq 2 --clip_grad 1: the default ('micro') equals a hand-written loop that
    clips the accumulated gradient after every micro-batch; --clip_grad_mode step equals one that
    clips once per optimizer step; --clip_grad 0.1 does not clip in the default mode."""
    batches = _clip_batches()
    # the gradient of the first micro-batch is well above the clip norm, so clipping acts
    model = _tiny('hornet_tiny_7x7')
    (torch.nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]) / 2).backward()
    assert torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item() > 2.0

    micro = _engine_run(batches, 'micro', 1.0).state_dict()
    step = _engine_run(batches, 'step', 1.0).state_dict()
    assert _max_diff(micro, _hand_loop([batches], 2, 1.0, 'micro')) < 1e-6
    assert _max_diff(step, _hand_loop([batches], 2, 1.0, 'step')) < 1e-6
    assert _max_diff(micro, step) > 1e-3  # the two semantics really differ here
    unclipped = _hand_loop([batches], 2, 0.1, 'micro')
    assert _max_diff(_engine_run(batches, 'micro', 0.1).state_dict(), unclipped) < 1e-6
    assert _max_diff(unclipped, micro) > 1e-3
    # main.py passes --clip_grad_mode through (default: micro)
    assert train_main.parse_args([]).clip_grad_mode == 'micro'
    assert train_main.parse_args(['--clip_grad_mode', 'step']).clip_grad_mode == 'step'


def _ddp_clip_worker(rank, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        for mode in ('micro', 'step'):
            model = torch.nn.parallel.DistributedDataParallel(_tiny('hornet_tiny_7x7'))
            _engine_run(_clip_batches(rank), mode, 1.0, model=model)
            torch.save(model.module.state_dict(), f'{out_dir}/{mode}_{rank}.pth')
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fp32_clipping_two_processes(tmp_path):
    """2 gloo processes (DDP), fp32 --update_freq 2 --clip_grad 1: the default clips the
    all-reduced accumulated gradient after every micro-batch (the hand-written loop over both
    ranks' data), --clip_grad_mode step once per step; both ranks end identical."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_clip_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    ranks = [_clip_batches(0), _clip_batches(1)]
    for mode in ('micro', 'step'):
        r0 = torch.load(tmp_path / f'{mode}_0.pth', weights_only=True)
        r1 = torch.load(tmp_path / f'{mode}_1.pth', weights_only=True)
        assert _max_diff(r0, r1) == 0.0
        assert _max_diff(r0, _hand_loop(ranks, 2, 1.0, mode)) < 1e-6, mode
    micro = torch.load(tmp_path / 'micro_0.pth', weights_only=True)
    step = torch.load(tmp_path / 'step_0.pth', weights_only=True)
    assert _max_diff(micro, step) > 1e-3
    # the per-rank (unsynchronised) clipping would give other weights
    assert _max_diff(micro, _hand_loop([ranks[0]], 2, 1.0, 'micro')) > 1e-3


# ----------------------------------------------------------------------------- 22K -> 1K head

MAP_FILE = os.path.join(ROOT, 'data', 'in1k_to_in22k_map.txt')


def test_finetune_21841_head_uses_shipped_map(tmp_path):
    """A 21841-class checkpoint fine-tuned into 1000 classes: head rows picked by the shipped
    data/in1k_to_in22k_map.txt (the original release's mapping: 1000 lines, first 209, 213, 245,
    last 10231, 10277, 10433); --head_map FILE overrides it, --head_map drop starts fresh."""
    with open(MAP_FILE) as f:
        rows = [int(line) for line in f]
    assert len(rows) == 1000
    assert rows[:3] == [209, 213, 245] and rows[-3:] == [10231, 10277, 10433]
    assert train_main.IN1K_TO_IN22K_MAP == MAP_FILE

    torch.manual_seed(0)
    src = timm.create_model('hornet_tiny_gf', **SMALL, num_classes=21841)
    with torch.no_grad():
        src.head.bias.copy_(torch.arange(21841, dtype=torch.float32))
    torch.save({'model': src.state_dict()}, tmp_path / 'in22k.pth')
    ckpt = torch.load(tmp_path / 'in22k.pth', weights_only=True)
    assert ckpt['model']['head.weight'].shape == (21841, 128)

    args = _args(finetune=str(tmp_path / 'in22k.pth'), model='hornet_tiny_gf', depths=[1, 1, 1, 1],
                 base_dim=16, nb_classes=1000)
    model = train_main.build_model(args)
    train_main.load_finetune(args, model)
    assert model.head.weight.shape == (1000, 128)
    for i in (0, 1, 2, 500, 997, 998, 999):
        assert torch.equal(model.head.weight[i], src.head.weight[rows[i]])
        assert model.head.bias[i].item() == rows[i]
    assert model.head.bias.tolist() == [float(r) for r in rows]
    torch.testing.assert_close(model.norm.weight, src.norm.weight)

    (tmp_path / 'mine.txt').write_text(''.join(f'{20000 + i}\n' for i in range(1000)))
    args.head_map = str(tmp_path / 'mine.txt')
    train_main.load_finetune(args, model)
    assert model.head.bias.tolist() == [float(20000 + i) for i in range(1000)]

    args.head_map = 'drop'
    fresh = train_main.build_model(args)
    before = fresh.head.weight.clone()
    train_main.load_finetune(args, fresh)
    assert torch.equal(fresh.head.weight, before) and fresh.head.bias.abs().max().item() == 0.0


def test_grad_ckpt_flag_same_gradients():
    """--grad_ckpt true turns on block checkpointing; the gradients equal the plain model's."""
    grads = {}
    for flag in ('false', 'true'):
        args = train_main.parse_args(['--model', 'hornet_tiny_gf', '--depths', '1', '1', '1', '1', '--base_dim', '16',
                                      '--nb_classes', '10', '--drop_path', '0', '--grad_ckpt', flag])
        torch.manual_seed(0)
        model = train_main.build_model(args)
        assert model.grad_checkpointing is (flag == 'true')
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        model(x).square().mean().backward()
        grads[flag] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads['true'].abs().max() > 0
    torch.testing.assert_close(grads['true'], grads['false'], rtol=1e-5, atol=1e-7)


@pytest.fixture
def usr2_exits():
    """SIGUSR2 handled as submitit's preemption handler: records the call, raises SystemExit."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise SystemExit(144)

    old = signal.signal(signal.SIGUSR2, handler)
    try:
        yield calls
    finally:
        signal.signal(signal.SIGUSR2, old)
        utils._pending_signals.clear()
        utils._received.clear()


def test_deferred_preemption_signal_waits_for_the_step(usr2_exits):
    """A preemption signal that arrives inside a training step runs its handler when the step ends
    (after its optimizer update, before the next batch); the same for an evaluation step and for
    nested held blocks (the outermost end) and when an error leaves the block (the signal wins);
    outside a step it runs at once (again at the next step's end if its exception was swallowed),
    and so does a second signal while one waits; the returned function puts the handler back."""
    installed = signal.getsignal(signal.SIGUSR2)
    restore = utils.defer_signal(signal.SIGUSR2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    optimizer.register_step_post_hook(lambda opt, a, kw: steps.append(len(steps)))
    calls = []

    def criterion(output, target):
        calls.append(len(calls))
        if len(calls) == 2:  # inside step 1, before its backward and update
            signal.raise_signal(signal.SIGUSR2)
        return torch.nn.functional.cross_entropy(output, target)

    with pytest.raises(SystemExit) as e:
        train_one_epoch(model, criterion, _batches(5, 2), optimizer, torch.device('cpu'), 0,
                        utils.LossScaler('cpu', enabled=False))
    assert e.value.code == 144 and usr2_exits == [signal.SIGUSR2]
    assert len(calls) == 2 and len(steps) == 2  # step 1 finished; step 2 never started

    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(signal.raise_signal(signal.SIGUSR2)))
    with pytest.raises(SystemExit):
        evaluate(_batches(3, 2), model, torch.device('cpu'))
    assert len(forwards) == 1 and usr2_exits == [signal.SIGUSR2] * 2

    with pytest.raises(SystemExit):  # outside a held block: at once ...
        signal.raise_signal(signal.SIGUSR2)
    assert usr2_exits == [signal.SIGUSR2] * 3
    with pytest.raises(SystemExit):  # ... and, its exception caught (swallowed, as an at-fork hook
        with utils.signals_held():  # does), again when the next held block ends
            pass
    assert usr2_exits == [signal.SIGUSR2] * 4
    with pytest.raises(SystemExit):
        with utils.signals_held():
            with utils.signals_held():
                signal.raise_signal(signal.SIGUSR2)
            assert usr2_exits == [signal.SIGUSR2] * 4  # the inner end is not the step's end
    assert usr2_exits == [signal.SIGUSR2] * 5
    with utils.signals_held():
        signal.raise_signal(signal.SIGUSR2)
        with pytest.raises(SystemExit):  # the second one: at once
            signal.raise_signal(signal.SIGUSR2)
    assert usr2_exits == [signal.SIGUSR2] * 6  # and once: the block's end has nothing left to run
    restore()
    restore = utils.defer_signal(signal.SIGUSR2)
    with pytest.raises(SystemExit) as e:  # an error leaving the block: the waiting signal wins
        with utils.signals_held():
            signal.raise_signal(signal.SIGUSR2)
            raise RuntimeError('DataLoader worker killed by the same signal')
    assert isinstance(e.value.__context__, RuntimeError) and usr2_exits == [signal.SIGUSR2] * 7
    with utils.signals_held():
        signal.raise_signal(signal.SIGUSR2)
        restore()  # drops the waiting one
    assert usr2_exits == [signal.SIGUSR2] * 7
    assert signal.getsignal(signal.SIGUSR2) is installed and not utils._pending_signals


def test_deferred_signal_keeps_a_checkpoint_write_whole(usr2_exits, tmp_path):
    """The failure deferral prevents: a handler raising inside torch.save's writes breaks the
    file (torch reports a RuntimeError, which a save reports as a write failure); held back, the
    save completes and loads back equal, and the handler runs when the held block ends."""
    class SignalledWrite(io.BytesIO):
        def __init__(self):
            super().__init__()
            self.writes = 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                signal.raise_signal(signal.SIGUSR2)
            return super().write(b)

    state = {'w': torch.arange(1000.0), 'epoch': 3}
    with pytest.raises(RuntimeError):  # not deferred: the exception surfaces from torch's writer
        torch.save(state, SignalledWrite())
    assert usr2_exits == [signal.SIGUSR2]

    assert utils.defer_signal(signal.SIGUSR2)
    f = SignalledWrite()
    with pytest.raises(SystemExit):
        with utils.signals_held():
            torch.save(state, f)
            assert f.writes > 3 and usr2_exits == [signal.SIGUSR2]
    assert usr2_exits == [signal.SIGUSR2] * 2
    loaded = torch.load(io.BytesIO(f.getvalue()), weights_only=True)
    assert torch.equal(loaded['w'], state['w']) and loaded['epoch'] == 3


def test_device_check_refuses_missing_cuda_and_turns_on_cudnn_search(monkeypatch):
    """main.py --device cuda without a GPU stops with a message that says what to pass; with one, it
    turns on cuDNN's per-shape kernel search (speed only, as the original training script); --device cpu
    leaves cuDNN alone."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    msg = '--device cuda but no CUDA device is available; pass --device cpu'
    with pytest.raises(train_main.TrainingError, match=msg):
        train_main._check_device(_args(device='cuda'))
    assert train_main._check_device(_args(device='cpu')) == torch.device('cpu')
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert train_main._check_device(_args(device='cuda')) == torch.device('cuda')
    assert torch.backends.cudnn.benchmark is True


@pytest.mark.parametrize('device,flag,expected', [
    ('cpu', None, 'gloo'), ('cuda', None, 'nccl'), ('cuda', 'gloo', 'gloo'), ('cpu', 'gloo', 'gloo')])
def test_dist_backend_flag_reaches_init_process_group(monkeypatch, device, flag, expected):
    """`--dist_backend` (default nccl on CUDA, gloo on CPU; gloo allowed on CUDA so two processes can
    share one GPU) is the backend torchrun's processes join with; nccl without CUDA is refused with
    what to pass. CUDA is simulated (is_available / set_device patched)."""
    import torch.distributed as dist
    seen = {}
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: device == 'cuda')
    monkeypatch.setattr(torch.cuda, 'set_device', lambda i: seen.setdefault('gpu', i))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(dist, 'barrier', lambda: None)
    argv = ['--device', device] + (['--dist_backend', flag] if flag else [])
    args = train_main.parse_args(argv)
    utils.init_distributed_mode(args)
    assert seen['backend'] == expected == args.dist_backend
    assert (seen['rank'], seen['world_size'], args.distributed) == (1, 2, True)
    assert args.device == ('cuda:0' if device == 'cuda' else 'cpu')


def test_dist_backend_nccl_without_cuda_is_refused(monkeypatch):
    """`--dist_backend nccl --device cpu` under torchrun stops before joining, saying to pass gloo."""
    import torch.distributed as dist
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(dist, 'init_process_group', lambda *a, **kw: pytest.fail('joined'))
    args = train_main.parse_args(['--device', 'cpu', '--dist_backend', 'nccl'])
    with pytest.raises(utils.TrainingError, match='--dist_backend nccl needs CUDA .*pass --dist_backend gloo'):
        utils.init_distributed_mode(args)


@pytest.mark.parametrize('flag,tf32', [([], True), (['--tf32', 'false'], False), (['--tf32', 'true'], True)])
def test_tf32_on_cuda_by_default_and_off_by_flag(monkeypatch, flag, tf32):
    """--device cuda turns TF32 on for fp32 matmuls and cuDNN convs (the original's 1x1 convs ran in
    cuDNN's TF32); `--tf32 false` keeps full fp32; --device cpu leaves both switches alone (CUDA
    simulated with torch.cuda.is_available patched)."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    # torch's switches are module properties (monkeypatch cannot undo them): restore by hand
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        train_main._check_device(train_main.parse_args(['--device', 'cpu', *flag]))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (not tf32, not tf32)
        assert train_main._check_device(train_main.parse_args(['--device', 'cuda', *flag])) == torch.device('cuda')
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
        assert torch.get_float32_matmul_precision() == ('high' if tf32 else 'highest')
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# one epoch of hornet_tiny_gf (SMALL, 3 classes), 6 batches of 4, seed 0, lr 1e-3: the numbers the
# per-step host reads gave before they were deferred to the progress lines
_PINNED_EPOCH = {(None, 1): (1.083066334327062, 11.586979548136393, 0.3333333333333333),
                 (1.0, 2): (1.0724900662899017, 5.287629127502441, 0.2916666666666667)}


def _epoch(clip, freq, print_freq, crit=None, reads=None):
    """Stats of one epoch; ``reads`` collects the sizes of the tensors read to the host (``tolist``) in it."""
    model = _tiny()
    args = _args(lr=1e-3, warmup_epochs=0, epochs=1)
    opt = create_optimizer(args, model)
    with pytest.MonkeyPatch.context() as mp:
        if reads is not None:
            tolist = torch.Tensor.tolist
            mp.setattr(torch.Tensor, 'tolist', lambda t: reads.append(t.numel()) or tolist(t))
        return train_one_epoch(model, crit or torch.nn.CrossEntropyLoss(), _batches(6, 4), opt,
                               torch.device('cpu'), 0, utils.LossScaler('cpu'), max_norm=clip,
                               schedules=Schedules(opt, args, 6 // freq), update_freq=freq, print_freq=print_freq)


@pytest.mark.parametrize('clip,freq', sorted(_PINNED_EPOCH, key=str))
def test_train_numbers_read_at_progress_lines_are_those_of_per_step_reads(one_thread, clip, freq):
    """The host reads loss, accuracy and gradient norm once per progress line (one transfer), not per
    step: an epoch's logged averages are the same whatever --print_freq (1: a read each step), and the
    numbers per-step reads gave (pinned); with --print_freq 3 over 6 batches there are 3 reads."""
    reads = []
    every = _epoch(clip, freq, print_freq=1, reads=reads)
    assert len(reads) == 6
    reads.clear()
    deferred = _epoch(clip, freq, print_freq=3, reads=reads)
    assert len(reads) == 3  # batches 0, 3 and 5 (the last)
    assert sum(reads) == 6 * 2 + 6 // freq  # loss and accuracy per batch, a gradient norm per optimizer step
    assert deferred == every
    loss, grad_norm, class_acc = _PINNED_EPOCH[(clip, freq)]
    assert (every['loss'], every['grad_norm'], every['class_acc']) == pytest.approx(
        (loss, grad_norm, class_acc), rel=1e-6)


def test_non_finite_loss_found_at_the_progress_line_names_its_step():
    """A NaN loss at batch 2 of 6, read with the others at the epoch's last progress line, stops
    training with the step it happened at."""
    calls = {'n': 0}

    class Crit(torch.nn.Module):
        def forward(self, out, target):
            calls['n'] += 1
            loss = torch.nn.functional.cross_entropy(out, target)
            return loss * float('nan') if calls['n'] == 3 else loss
    with pytest.raises(utils.NonFiniteLossError, match=r'loss is nan at epoch 0, step 2 \(batch\) / 1 \(optimizer'):
        _epoch(None, 2, print_freq=100, crit=Crit())
    assert calls['n'] == 6  # found at the last batch's read
