"""models/state_dict.py: reading weight files (one rule for the entry that holds the weights,
prefixes, non-finite refusal, one-line errors), mmpretrain's key layout both ways, GF filter resizing."""
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import models
from helpers import SMALL
from models.state_dict import WEIGHT_ENTRIES, CheckpointFileError, read_weights, strip_prefixes, unwrap_checkpoint


def small(name='hornet_tiny_gf', **kwargs):
    return timm.create_model(name, **{**SMALL, **kwargs})


def test_mmpretrain_key_mapping():
    sd = small().state_dict()
    mapped = models.from_mmpretrain(models.to_mmpretrain(sd))
    assert list(mapped) == list(sd)
    assert 'backbone.stages.3.0.gnconv.projs.3.weight' in models.to_mmpretrain(sd)


def test_mmpretrain_keys_both_ways():
    """Ours -> mmpretrain: backbone. prefix, norm3, projs, gamma*.weight, head.fc; and back. The
    dense backbone's per-stage norms and necks have no classifier twin and are dropped."""
    sd = {'downsample_layers.0.0.weight': 1, 'stages.1.0.gnconv.pws.0.bias': 2, 'stages.1.0.gamma1': 3,
          'norm.weight': 4, 'head.bias': 5}
    theirs = models.to_mmpretrain(sd)
    assert list(theirs) == ['backbone.downsample_layers.0.0.weight', 'backbone.stages.1.0.gnconv.projs.0.bias',
                            'backbone.stages.1.0.gamma1.weight', 'backbone.norm3.weight', 'head.fc.bias']
    assert models.from_mmpretrain(theirs) == sd
    dense = dict(theirs, **{'backbone.norm0.weight': 6, 'neck.fpn.weight': 7, 'data_preprocessor.mean': 8})
    assert models.from_mmpretrain(dense) == sd


def _save(tmp_path, obj, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize('fmt', ['model', 'module', 'state_dict', 'bare', 'ddp', 'compiled', 'ddp_compiled'])
def test_read_weights_finds_the_weights(tmp_path, fmt):
    """One rule for every reader: the model/module/state_dict entry (in that order) or the file
    itself, with the DDP (module.) and torch.compile (_orig_mod.) prefixes removed."""
    sd = {'a.weight': torch.ones(2), 'b.bias': torch.zeros(1)}
    obj = {'model': {'model': sd, 'epoch': 3, 'model_ema': {'x': torch.ones(1)}},
           'module': {'module': sd, 'optimizer': {'state': {}}},
           'state_dict': {'meta': {'epoch': 1}, 'state_dict': sd},
           'bare': sd,
           'ddp': {'model': {'module.' + k: v for k, v in sd.items()}},
           'compiled': {'model': {'_orig_mod.' + k: v for k, v in sd.items()}},
           'ddp_compiled': {'module': {'module._orig_mod.' + k: v for k, v in sd.items()}}}[fmt]
    state = read_weights(_save(tmp_path, obj))
    assert list(state) == list(sd) and all(torch.equal(state[k], sd[k]) for k in sd)


def test_read_weights_key_override_and_prefix(tmp_path):
    """The user's key picks another entry ('|' between alternatives); a key that names no dict is
    an error listing the dict entries; prefix keeps only the keys under it."""
    ema = {'a.weight': torch.full((2,), 2.0)}
    path = _save(tmp_path, {'model': {'a.weight': torch.ones(2)}, 'model_ema': ema, 'epoch': 3})
    assert torch.equal(read_weights(path, key='model_ema')['a.weight'], ema['a.weight'])
    assert torch.equal(read_weights(path, key='nope|model_ema')['a.weight'], ema['a.weight'])
    assert torch.equal(read_weights(path)['a.weight'], torch.ones(2))
    with pytest.raises(CheckpointFileError) as e:
        read_weights(path, key='ema')
    assert str(e.value) == f"checkpoint {path} has no state dict under 'ema' (dict entries: model, model_ema)"
    path = _save(tmp_path, {'model': {'backbone.x': torch.ones(1), 'head.y': torch.ones(1)}}, 'p.pth')
    assert list(read_weights(path, prefix='backbone.')) == ['x']


def test_read_weights_refuses_non_finite_and_unreadable_files(tmp_path):
    """NaN/inf weights and files that are no weights file are one-line CheckpointFileErrors that
    name the file (the same messages as main.py's --resume and export.py's, tests/test_careless_input.py)."""
    sd = {'a.weight': torch.tensor([1.0, float('nan'), float('inf')]), 'n': torch.tensor([3])}
    path = _save(tmp_path, {'model': sd})
    with pytest.raises(CheckpointFileError) as e:
        read_weights(path)
    assert str(e.value) == (f'checkpoint {path} has non-finite weights (2 of 3 values are NaN or inf): the model '
                            'diverged; use an earlier checkpoint')
    text = tmp_path / 'text.pth'
    text.write_text('101\n')
    cases = {str(tmp_path / 'missing.pth'): 'no such file', str(tmp_path): 'it is a directory, not a file',
             str(text): "it is a text file (4 bytes, starts with '101'), not a PyTorch checkpoint",
             _save(tmp_path, [torch.ones(1)], 'list.pth'): 'it holds a list, expected a dict of weights'}
    for bad, reason in cases.items():
        with pytest.raises(CheckpointFileError) as e:
            read_weights(bad)
        assert str(e.value) == f'cannot load checkpoint {bad}: {reason}'


@settings(max_examples=50, deadline=None)
@given(wrappers=st.lists(st.sampled_from(['module.', '_orig_mod.']), max_size=3),
       entry=st.sampled_from([*WEIGHT_ENTRIES, None]),
       names=st.lists(st.from_regex(r'[a-z]{1,4}(\.[a-z0-9]{1,3}){0,2}', fullmatch=True), min_size=1, max_size=5,
                      unique=True))
def test_unwrap_rule_for_generated_checkpoints(wrappers, entry, names):
    """Whatever entry of WEIGHT_ENTRIES holds the weights and whatever wrapper prefixes precede the
    keys, the same state dict comes out; strip_prefixes leaves other keys alone."""
    names = [n for n in names if not n.startswith(('module', '_orig_mod'))] or ['w']
    sd = {n: i for i, n in enumerate(names)}
    wrapped = {''.join(wrappers) + k: v for k, v in sd.items()}
    ckpt = wrapped if entry is None else {entry: wrapped, 'epoch': 1}
    assert unwrap_checkpoint(ckpt) == sd
    assert strip_prefixes(sd) == sd


def test_resize_gf_filters_one_rule(tmp_path):
    """resize_gf_filters resizes exactly the GF filters whose shape differs from the target's (in
    place) and names them; the classifier adapter and the OpenMMLab backbone both use it."""
    src = small().state_dict()
    target = small(gf_sizes=(None, None, (24, 13), (12, 7))).state_dict()
    state = dict(src)
    resized = models.resize_gf_filters(state, target)
    assert resized == ['stages.2.0.gnconv.dwconv.complex_weight', 'stages.3.0.gnconv.dwconv.complex_weight']
    for k in resized:
        assert state[k].shape == target[k].shape
        assert torch.equal(state[k], models.resize_complex_weight(src[k], target[k].shape[1:3]))
    assert all(state[k] is src[k] for k in src if k not in resized)
    assert models.resize_gf_filters(state, target) == []
