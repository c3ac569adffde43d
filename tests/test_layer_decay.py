"""models/layer_decay.py: HorNet's layer ids and the one parameter-group builder (the classifier's
optimizer, timm's layer decay through group_matcher; tests/test_mm_hornet.py checks the OpenMMLab
constructor against the released recipes' table)."""
import pytest
import timm
import torch

import models
from helpers import SMALL
from models.layer_decay import dense_layer_id, layer_id
from optim_factory import param_groups_layer_decay


def test_layer_decay_grouping_matches_spec():
    with torch.device('meta'):
        model = timm.create_model('hornet_base_gf')
    from timm.optim import param_groups_layer_decay
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.9)
    by_param = {}
    for g in groups:
        for p in g['params']:
            by_param[id(p)] = (g['lr_scale'], g['weight_decay'])
    for name, p in model.named_parameters():
        lid = models.layer_id(name)
        lr_scale, wd = by_param[id(p)]
        assert lr_scale == pytest.approx(0.9 ** (13 - lid)), name
        assert wd == (0.0 if p.ndim <= 1 else 0.05), name
    assert len({g['lr_scale'] for g in groups}) == 14
    assert models.layer_id('downsample_layers.0.0.weight') == 0
    assert models.layer_id('stages.0.1.gamma1') == 1
    assert models.layer_id('downsample_layers.1.1.weight') == 2
    assert models.layer_id('stages.2.0.norm1.weight') == 3
    assert models.layer_id('stages.2.17.pwconv1.weight') == 11
    assert models.layer_id('downsample_layers.3.0.bias') == 12
    assert models.layer_id('head.weight') == 13


def test_layer_decay_groups_follow_spec():
    """Full HorNet-T: 14 groups, lr scale decay**(13-id), ids from models.layer_id, and no
    weight decay exactly on 1-D parameters."""
    with torch.device('meta'):
        model = timm.create_model('hornet_tiny_gf')
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.7)
    assert sorted({g['layer_id'] for g in groups}) == list(range(14))
    for g in groups:
        assert g['lr_scale'] == pytest.approx(0.7 ** (13 - g['layer_id']))
        for name, p in zip(g['names'], g['params'], strict=True):
            assert models.layer_id(name) == g['layer_id']
            assert g['weight_decay'] == (0.0 if p.ndim == 1 else 0.05), name
    by_name = {n: g for g in groups for n in g['names']}
    assert by_name['downsample_layers.0.0.weight']['layer_id'] == 0
    assert by_name['stages.2.17.gnconv.proj_in.weight']['layer_id'] == 11
    assert by_name['stages.2.4.gamma1']['layer_id'] == 5 and by_name['stages.2.4.gamma1']['weight_decay'] == 0
    assert by_name['downsample_layers.3.1.weight']['layer_id'] == 12
    assert by_name['head.weight']['lr_scale'] == 1.0
    n_params = sum(p.numel() for g in groups for p in g['params'])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_weight_decay_rule_and_dense_ids():
    """No weight decay for 1-D parameters, names ending in .bias and names in skip_list; a dense
    model's backbone.* parameters take the trunk's ids, everything else (neck, heads, the
    backbone's output norms) the top id."""
    model = timm.create_model('hornet_tiny_gf', **SMALL)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                      skip_list=('stages.2.0.gnconv.dwconv.complex_weight',))
    by_name = {n: g for g in groups for n in g['names']}
    assert by_name['stages.2.0.gnconv.dwconv.complex_weight']['weight_decay'] == 0.0
    assert by_name['stages.3.0.gnconv.dwconv.complex_weight']['weight_decay'] == 0.05
    assert by_name['stages.0.0.gamma1']['weight_decay'] == 0.0 and by_name['head.bias']['weight_decay'] == 0.0
    assert all(g['group_name'] == f'layer_{g["layer_id"]}_{"decay" if g["use_wd"] else "no_decay"}' for g in groups)
    assert [dense_layer_id(n, 6) for n in ('backbone.stages.3.0.gamma1', 'backbone.norm3.weight',
                                           'neck.lateral_convs.0.conv.weight')] == [12, 7, 7]
    assert dense_layer_id('backbone.stages.2.4.gamma1', 12, 'stage_wise') == layer_id('stages.2.4.gamma1', 12,
                                                                                       'stage_wise') == 3
    frozen = timm.create_model('hornet_tiny_gf', **SMALL)
    frozen.stages[0].requires_grad_(False)
    names = [n for g in param_groups_layer_decay(frozen) for n in g['names']]
    assert names and not any(n.startswith('stages.0.') for n in names)
