"""Conformance with mmpretrain's HorNet (installed by tools/install_openmmlab.sh, as in CI; the tests
fail, not skip, without it): the same logits for the same weights, and mmpretrain's own classifier
weights load into ours through timm. benchmarks/mmpretrain_hornet.py builds the mmpretrain twin."""
import pytest
import timm
import torch
from mmengine.registry import DefaultScope

import models  # noqa: F401  (registers hornet_*)
from benchmarks.mmpretrain_hornet import MMPretrainHorNet, mmpretrain_arch, mmpretrain_from, to_mmpretrain_state_dict
from helpers import SMALL
from models import from_mmpretrain


def _small_kwargs(name: str) -> dict:
    """Test-size variant kwargs; GF filters that fit the 4x4 / 2x2 maps of stages 2-3 at 64 px."""
    return dict(SMALL, gf_sizes=(None, None, (4, 3), (2, 2))) if name.endswith('gf') else dict(SMALL)


def _randomize_(model: torch.nn.Module) -> None:
    """Weights of order one everywhere, layer scales included (at their 1e-6 init the blocks would be
    the identity and a wrong block would go unnoticed)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or 'gamma' in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1 / p[0].numel()) ** 0.5)


@pytest.mark.parametrize('scope', [None, 'mmseg'])
@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_mmpretrain_twin_has_our_logits_and_gradients(name, scope):
    """mmpretrain's ImageClassifier with our weights (every key maps, strict) gives our logits within
    1e-5 and the same input gradient, at 64 px (where the GF filters fit the feature maps) and at 96 px
    (where both implementations resize them). Built under no default scope and under mmseg's, which a segmentation run
    leaves current (there 'HorNet' is our OpenMMLab backbone): the twin is mmpretrain's either way."""
    ours = timm.create_model(name, **_small_kwargs(name))
    _randomize_(ours)
    import models.mm_hornet  # noqa: F401  (registers our 'HorNet' in the root registry, as downstream runs do)
    with DefaultScope.overwrite_default_scope(scope):
        twin = mmpretrain_from(ours)
    assert type(twin.classifier.backbone).__module__ == 'mmpretrain.models.backbones.hornet'
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in ours.parameters())
    ours.eval()
    twin.eval()
    for size in (64, 96):
        x = torch.randn(2, 3, size, size, requires_grad=True)
        a = ours(x)
        gx_a, = torch.autograd.grad(a.square().sum(), x)
        b = twin(x)
        gx_b, = torch.autograd.grad(b.square().sum(), x)
        assert a.abs().max() > 0.5  # not a degenerate output
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())
        torch.testing.assert_close(gx_a, gx_b, rtol=1e-4, atol=1e-4 * gx_a.abs().max().item())


def test_mmpretrain_arch_of_the_released_variants():
    """The arch dict built from our variants equals mmpretrain's own presets ('tiny', 'tiny-gf', ...)."""
    from mmpretrain.models.backbones import HorNet as MMHorNet
    for ours, theirs in (('hornet_tiny_7x7', 'tiny'), ('hornet_tiny_gf', 'tiny-gf'), ('hornet_small_gf', 'small-gf'),
                         ('hornet_base_7x7', 'base'), ('hornet_large_gf', 'large-gf')):
        with torch.device('meta'):
            model = timm.create_model(ours)
        assert mmpretrain_arch(model) == MMHorNet.arch_zoo[theirs], ours


@pytest.mark.parametrize('name', ['hornet_tiny_7x7', 'hornet_tiny_gf'])
def test_mmpretrain_checkpoint_loads_into_ours(tmp_path, name):
    """A checkpoint saved from mmpretrain's own classifier ({'meta', 'state_dict'} with ``backbone.`` /
    ``head.fc.`` keys, per-stage ``norm3``, ``projs``, ``gamma*.weight``) loads into ours with timm's
    ``pretrained_cfg_overlay`` (strict), and both give the same logits."""
    skeleton = timm.create_model(name, **_small_kwargs(name))
    theirs = MMPretrainHorNet(mmpretrain_arch(skeleton), num_classes=1000)
    _randomize_(theirs)
    state = theirs.classifier.state_dict()
    assert 'backbone.stages.3.0.gnconv.projs.3.weight' in state and 'head.fc.weight' in state
    assert sorted(from_mmpretrain(state)) == sorted(skeleton.state_dict())  # every key maps, none left
    assert to_mmpretrain_state_dict(from_mmpretrain(state)).keys() == state.keys()
    path = tmp_path / 'mmpretrain_hornet.pth'
    torch.save({'meta': {'epoch': 300}, 'state_dict': state}, path)
    ours = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             **_small_kwargs(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), theirs.eval()(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_pretrained_urls_are_the_installed_metafile_weights():
    """The six ImageNet-1K URLs of our pretrained configs are exactly the weights the installed
    mmpretrain's HorNet metafile lists, variant for variant (and it lists no HorNet-L file), and
    each config's origin_url is the release file the metafile says it was converted from."""
    import os

    import mmpretrain
    import yaml
    path = os.path.join(os.path.dirname(mmpretrain.__file__), '.mim', 'configs', 'hornet', 'metafile.yml')
    with open(path) as f:
        listed = {m['Name']: (m['Weights'], m['Converted From']['Weights']) for m in yaml.safe_load(f)['Models']}
    ours = {}
    for tag in timm.list_pretrained('hornet_*'):
        cfg = timm.models.get_pretrained_cfg(tag)
        if cfg.url:
            size, mixer = tag.split('.')[0].split('_')[1:3]
            ours[f'hornet-{size}{"-gf" if mixer == "gf" else ""}_3rdparty_in1k'] = (cfg.url, cfg.origin_url)
    assert len(ours) == 6 and ours == listed
