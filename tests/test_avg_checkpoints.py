"""avg_checkpoints.py: which checkpoints are picked, their hand-computed mean, and its refusals."""
import json

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avg_checkpoints
from helpers import documented_commands

ACC = [10.0, 40.0, 30.0, 20.0]  # test_acc1 of epochs 0..3; EMA accuracies are the reverse


def _run(tmp_path, epochs=range(4)):
    """A run folder: checkpoint-<e>.pth with w = [e, 2e], an int step buffer, EMA w = [10e, 0]; log.txt."""
    run = tmp_path / 'run'
    run.mkdir()
    for e in epochs:
        model = {'w': torch.tensor([e, 2.0 * e]), 'b': torch.tensor([[1.0 + e]], dtype=torch.float16),
                 'step': torch.tensor(7)}
        ema = {'w': torch.tensor([10.0 * e, 0.0]), 'b': torch.tensor([[0.0]], dtype=torch.float16),
               'step': torch.tensor(7)}
        torch.save({'model': model, 'model_ema': ema, 'epoch': e, 'optimizer': {}}, run / f'checkpoint-{e}.pth')
    torch.save({'model': {'w': torch.zeros(2)}}, run / 'checkpoint-best.pth')  # never picked
    with open(run / 'log.txt', 'w') as f:
        for e in epochs:
            f.write(json.dumps({'epoch': e, 'test_acc1': ACC[e], 'test_acc1_ema': ACC[3 - e]}) + '\n')
    return run


def _avg(run, out, *extra):
    return avg_checkpoints.main(['--input', str(run), '--output', str(out), *extra])


def test_last_n_mean_to_safetensors(tmp_path, capsys):
    run = _run(tmp_path)
    out = tmp_path / 'avg.safetensors'
    assert _avg(run, out, '-n', '2') == 0
    assert 'Averaged weights of 2 checkpoints (epochs 3, 2)' in capsys.readouterr().out
    sd = safetensors.torch.load_file(str(out))
    assert sd['w'].tolist() == [2.5, 5.0]  # (3 + 2) / 2, (6 + 4) / 2
    assert sd['b'].dtype == torch.float16 and sd['b'].tolist() == [[3.5]]
    assert sd['step'].item() == 7
    with safetensors.safe_open(str(out), 'pt') as f:
        assert f.metadata()['averaged_from'] == 'checkpoint-3.pth,checkpoint-2.pth'


def test_best_n_by_logged_accuracy_to_pth(tmp_path, capsys):
    run = _run(tmp_path)
    out = tmp_path / 'avg.pth'
    assert _avg(run, out, '-n', '3', '--select', 'best') == 0  # epochs 1 (40), 2 (30), 3 (20)
    assert '(epochs 1, 2, 3)' in capsys.readouterr().out
    ckpt = torch.load(out, weights_only=True)
    assert ckpt['model']['w'].tolist() == [2.0, 4.0] and ckpt['averaged_from'][0] == 'checkpoint-1.pth'
    # EMA weights ranked by the EMA accuracy (ACC reversed): epochs 2 (40), 1 (30)
    assert _avg(run, tmp_path / 'ema.pth', '-n', '2', '--select', 'best', '--ema') == 0
    assert 'EMA weights of 2 checkpoints (epochs 2, 1)' in capsys.readouterr().out
    assert torch.load(tmp_path / 'ema.pth', weights_only=True)['model']['w'].tolist() == [15.0, 0.0]


def _one_line_error(capsys, text):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and text in err, err


@pytest.mark.parametrize('change, text', [
    (lambda m: m.pop('b'), "missing keys ['b']"),
    (lambda m: m.update(w=torch.zeros(3)), 'w is torch.float32 (3,), not torch.float32 (2,)'),
    (lambda m: m.update(extra=torch.zeros(1)), "extra keys ['extra']"),
    (lambda m: m.update(w=torch.tensor([float('nan'), 0.0])), 'non-finite weights'),
    (lambda m: m.update(step=torch.tensor(8)), 'integer tensor step differs'),
])
def test_mismatched_checkpoints_refused(tmp_path, capsys, change, text):
    run = _run(tmp_path)
    ckpt = torch.load(run / 'checkpoint-2.pth', weights_only=True)
    change(ckpt['model'])
    torch.save(ckpt, run / 'checkpoint-2.pth')
    out = tmp_path / 'avg.pth'
    assert _avg(run, out, '-n', '3') == 2
    _one_line_error(capsys, text)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ['run']


def test_usage_errors_one_line_exit_2(tmp_path, capsys):
    run = _run(tmp_path, epochs=range(2))
    assert _avg(run, tmp_path / 'a.pth', '-n', '3') == 2
    _one_line_error(capsys, 'has 2 epoch checkpoints (checkpoint-<epoch>.pth), fewer than -n 3; pass -n 2')
    assert _avg(run, tmp_path / 'a.pth', '--ema', '-n', '1') == 0
    capsys.readouterr()
    assert _avg(run, tmp_path / 'a.pth', '-n', '1') == 2
    _one_line_error(capsys, 'exists; pass --overwrite')
    assert _avg(run, tmp_path / 'a.pth', '-n', '1', '--overwrite') == 0
    assert _avg(run, run / 'checkpoint-1.pth', '-n', '1', '--overwrite') == 2
    _one_line_error(capsys, 'is one of the checkpoints being averaged')
    assert _avg(run, tmp_path / 'a.onnx') == 2
    _one_line_error(capsys, 'must end in .safetensors or .pth')
    assert _avg(tmp_path / 'nope', tmp_path / 'a.pth') == 2
    _one_line_error(capsys, 'is not a folder')
    (run / 'log.txt').unlink()
    assert _avg(run, tmp_path / 'b.pth', '--select', 'best', '-n', '1') == 2
    _one_line_error(capsys, 'has no epoch checkpoints with a test_acc1 in log.txt')
    torch.save({'model': {'w': torch.zeros(2)}, 'epoch': 1}, run / 'checkpoint-1.pth')
    assert _avg(run, tmp_path / 'b.pth', '--ema', '-n', '1') == 2
    _one_line_error(capsys, "no 'model_ema' weights (the run had no --model_ema true")
    for bad in (['-n', '0'], ['--select', 'top'], []):
        with pytest.raises(SystemExit) as e:
            avg_checkpoints.main(['--output', 'x.pth', *bad] + (['--input', str(run)] if bad else []))
        assert e.value.code == 2
        _one_line_error(capsys, 'avg_checkpoints.py: error: ')


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for code in a crafted checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_checkpoints_are_never_unpickled(tmp_path, capsys):
    run = _run(tmp_path, epochs=range(2))
    marker = tmp_path / 'PAYLOAD_RAN'
    torch.save({'model': {'w': torch.zeros(2)}, 'epoch': 1, 'x': _Payload(str(marker))}, run / 'checkpoint-1.pth')
    assert _avg(run, tmp_path / 'a.pth', '-n', '2') == 2
    _one_line_error(capsys, 'it was not unpickled')
    assert not marker.exists() and not (tmp_path / 'a.pth').exists()


def test_documented_commands_parse():
    cmds = [avg_checkpoints.get_args_parser().parse_args(c) for c in documented_commands('avg_checkpoints.py')]
    assert [(a.num, a.select, a.ema) for a in cmds] == [(5, 'last', False), (3, 'best', True)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), shape=st.lists(st.integers(1, 3), max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2 ** 16))
def test_average_is_the_float64_mean_cast_back(tmp_path_factory, n, shape, dtype, seed):
    """For any number of files, shape and float dtype: the mean in float64, cast to the file dtype."""
    folder = tmp_path_factory.mktemp('ckpts')
    gen = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(shape, generator=gen) * 100).to(dtype) for _ in range(n)]
    paths = []
    for i, w in enumerate(weights):
        paths.append(str(folder / f'checkpoint-{i}.pth'))
        torch.save({'model': {'w': w}}, paths[-1])
    avg = avg_checkpoints.average_weights(paths)['w']
    assert avg.dtype == dtype and avg.shape == torch.Size(shape)
    assert torch.equal(avg, (sum(w.double() for w in weights) / n).to(dtype))
