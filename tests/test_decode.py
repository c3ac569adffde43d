"""What is decoded is the image: 16-bit and float images are scaled to 8 bits (not clipped) by the
training/evaluation loader and by predict.py; predict.py turns photos upright by their EXIF
orientation, training keeps the original's loader (no EXIF)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import datasets
import predict

SIZE = 16


def _gradient() -> np.ndarray:
    return np.linspace(0, 1, SIZE * SIZE, dtype=np.float64).reshape(SIZE, SIZE)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey gradient (PIL's convert clips it: 99.6% white) keeps its grey levels."""
    a = (_gradient() * 65535).astype(np.uint16)
    path = str(tmp_path / 'g16.png')
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == 'I;16'
    for img in (datasets.pil_loader(path), predict.read_image(path)):
        out = np.asarray(img)
        assert img.mode == 'RGB' and out.shape == (SIZE, SIZE, 3)
        assert np.abs(out[..., 0].astype(int) - np.round(a / 257)).max() <= 1
        assert (out == 255).mean() < 0.01 and abs(out.mean() - 127.5) < 1


def test_float_tiff_is_scaled_not_black(tmp_path):
    """A float TIFF in [0, 1] (PIL's convert gives black) spans 0..255; one outside [0, 1] is
    scaled from its min..max."""
    path = str(tmp_path / 'f.tif')
    Image.fromarray(_gradient().astype(np.float32)).save(path)
    out = np.asarray(datasets.pil_loader(path))[..., 0].astype(int)
    assert np.abs(out - np.round(_gradient() * 255)).max() <= 1
    Image.fromarray((_gradient() * 4000 - 1000).astype(np.float32)).save(path)
    out = np.asarray(predict.read_image(path))[..., 0].astype(int)
    assert (out.min(), out.max()) == (0, 255) and np.abs(out - np.round(_gradient() * 255)).max() <= 1


@pytest.mark.parametrize('mode', ['P', 'LA', 'CMYK', 'L', 'RGBA', '1'])
def test_8_bit_modes_decode_as_pil_converts_them(tmp_path, mode):
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).convert(mode)
    path = str(tmp_path / ('x.tif' if mode == 'CMYK' else 'x.png'))
    src.save(path)
    want = np.asarray(Image.open(path).convert('RGB'))
    assert np.array_equal(np.asarray(datasets.pil_loader(path)), want)
    assert np.array_equal(np.asarray(predict.read_image(path)), want)


def test_predict_applies_exif_orientation_training_does_not(tmp_path):
    """A phone photo stored sideways with orientation 6 (rotate 90 clockwise to view): predict.py
    sees it upright; the training loader keeps the stored pixels, as the original's."""
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white as stored
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    path = str(tmp_path / 'phone.jpg')
    img.save(path, exif=exif, quality=95)
    upright = np.asarray(predict.read_image(path))
    assert upright.shape == (20, 10, 3) and upright[:10].mean() > 200 and upright[10:].mean() < 50
    assert np.asarray(datasets.pil_loader(path)).shape == (10, 20, 3)


@settings(max_examples=25)
@given(mode=st.sampled_from(['I;16', 'I', 'F']), low=st.floats(-2e5, 2e5), span=st.floats(0, 4e5),
       seed=st.integers(0, 2 ** 16))
def test_high_depth_images_keep_their_order_of_grey_levels(mode, low, span, seed):
    """Any 16-bit, 32-bit integer or float image decodes to 8-bit RGB whose grey levels rise with
    the source's (no clipping that flattens a range into one value, no NaN)."""
    rng = np.random.default_rng(seed)
    a = low + span * rng.random((SIZE, SIZE))
    if mode == 'I;16':
        a = np.clip(a, 0, 65535).astype(np.uint16)
    elif mode == 'I':
        a = a.astype(np.int32)
    else:
        a = a.astype(np.float32)
    img = Image.fromarray(a) if mode != 'I' else Image.fromarray(a, mode='I')
    out = np.asarray(datasets.to_rgb(img))
    assert out.dtype == np.uint8 and out.shape == (SIZE, SIZE, 3)
    grey = out[..., 0].ravel().astype(int)
    order = np.argsort(a.ravel(), kind='stable')
    assert (np.diff(grey[order]) >= 0).all()  # monotone: brighter source, brighter (or equal) output
    # no flattening: the output spans the source's range at the documented scale (a 16-bit container
    # by 1/257; 32-bit integers within 0..65535 the same, beyond from min(0, min)..max; floats from
    # [0, 1], or their min..max outside it)
    lo, hi = float(a.min()), float(a.max())
    if mode == 'I;16' or (mode == 'I' and lo >= 0 and 255 < hi <= 65535):
        scale = 255 / 65535
    elif mode == 'I':
        scale = 255 / (max(hi, 65535 if 255 < hi <= 65535 else 255) - min(lo, 0))
    else:
        scale = 255.0 if 0 <= lo and hi <= 1 else 255 / max(hi - lo, 1e-12)
    assert grey.max() - grey.min() >= int((hi - lo) * scale) - 1


def test_timm_folder_data_decodes_like_the_loader(tmp_path):
    """`--data_set folder` (timm's reader, a folder or a tar of one) decodes a 16-bit PNG with the same
    scaling as the IMNET loader, not with timm's clipping convert('RGB') (99.6% white)."""
    import tarfile

    from main import parse_args
    root = tmp_path / 'data'
    for split in ('train', 'val'):
        (root / split / 'grey').mkdir(parents=True)
        Image.fromarray((_gradient() * 65535).astype(np.uint16)).save(root / split / 'grey' / 'g16.png')
    with tarfile.open(tmp_path / 'train.tar', 'w') as tar:
        tar.add(root / 'train', arcname='.')
    want = np.round(_gradient() * 255)
    for data_path in (str(root), None):
        args = parse_args(['--data_set', 'folder', '--data_path', data_path or str(tmp_path), '--nb_classes', '1',
                           '--input_size', str(SIZE), '--device', 'cpu'])
        if data_path is None:  # the tar of the same folder
            args.data_path = str(tmp_path / 'train.tar')
        ds, n = datasets.build_timm_dataset(True, args, None)
        assert n == 1 and len(ds) == 1
        out = np.asarray(ds[0][0])
        assert out.shape == (SIZE, SIZE, 3) and np.abs(out[..., 0].astype(int) - want).max() <= 1


# ----------------------------------------------------------------------------- streamed sources

def _encode(img: Image.Image) -> tuple[str, bytes]:
    """(extension, file bytes): a float image as TIFF, the others as PNG."""
    import io
    ext = 'tiff' if img.mode == 'F' else 'png'
    buf = io.BytesIO()
    img.save(buf, format=ext.upper())
    return ext, buf.getvalue()


def _stream_decodes(root, images: list[Image.Image]) -> dict[str, list[np.ndarray]]:
    """The same image files read by the loader (``pil_loader``: IMNET, image_folder) and streamed
    by ``wds/`` (one shard) and ``hfids/`` (a local parquet data set), each in file order, without a
    transform: what the transform would receive."""
    import json
    import os

    import webdataset as wds

    from main import parse_args
    os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # read when Hugging Face's package is imported
    files = [_encode(img) for img in images]
    paths = []
    for i, (ext, data) in enumerate(files):
        paths.append(root / f'{i}.{ext}')
        paths[-1].write_bytes(data)
    (root / 'wds').mkdir()
    with wds.TarWriter(str(root / 'wds' / 'set-val-0000.tar')) as w:
        for i, (ext, data) in enumerate(files):
            w.write({'__key__': f's{i:04d}', ext: data, 'cls': 0})
    info = {'name': 'set', 'splits': {'validation': dict(name='validation', num_samples=len(files),
                                                          filenames=['set-val-0000.tar'], shard_lengths=[len(files)])}}
    (root / 'wds' / '_info.json').write_text(json.dumps(info))
    with datasets.hugging_face_datasets() as hf:
        features = hf.Features({'image': hf.Image(), 'label': hf.ClassLabel(names=['c0'])})
        table = hf.Dataset.from_dict({'image': [{'bytes': data, 'path': None} for _, data in files],
                                      'label': [0] * len(files)}, features=features)
        table.to_parquet(str(root / 'hf' / 'data' / 'validation-00000-of-00001.parquet'))
    out = {'loader': [np.asarray(datasets.pil_loader(str(p))) for p in paths]}
    for name, data_path in (('wds/set', root / 'wds'), (f'hfids/{root / "hf"}', root / 'hf_cache')):
        args = parse_args(['--data_set', name, '--data_path', str(data_path), '--nb_classes', '1', '--device', 'cpu',
                           '--input_size', str(SIZE), '--num_workers', '0', '--val_num_samples', str(len(files))])
        ds, _ = datasets.build_timm_dataset(False, args, None)
        out[name.partition('/')[0]] = [np.asarray(img) for img, _ in ds]
    return out


def test_streams_decode_16_bit_png_and_float_tiff_like_the_loader(tmp_path):
    """A 16-bit PNG and a float TIFF streamed from ``wds/`` and ``hfids/`` reach the transform scaled
    to 8 bits exactly as the loader decodes them (timm's readers alone clip them: the PNG almost
    white, the TIFF black)."""
    png = Image.fromarray((_gradient() * 65535).astype(np.uint16))
    tiff = Image.fromarray(_gradient().astype(np.float32))
    out = _stream_decodes(tmp_path, [png, tiff])
    want = np.round(_gradient() * 255)
    for source, (png_rgb, tiff_rgb) in out.items():
        for rgb in (png_rgb, tiff_rgb):
            assert rgb.dtype == np.uint8 and rgb.shape == (SIZE, SIZE, 3), source
            assert np.abs(rgb[..., 0].astype(int) - want).max() <= 1, source
        assert np.array_equal(png_rgb, out['loader'][0]) and np.array_equal(tiff_rgb, out['loader'][1]), source


@st.composite
def _images(draw) -> list[Image.Image]:
    """1-3 images of random sizes: 16-bit (PNG), float (TIFF, any range) or 8-bit RGB (PNG)."""
    images = []
    for _ in range(draw(st.integers(1, 3))):
        mode = draw(st.sampled_from(['I;16', 'F', 'RGB']))
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
        if mode == 'I;16':
            hi = draw(st.sampled_from([255, 4095, 65535]))
            images.append(Image.fromarray(rng.integers(0, hi + 1, (h, w)).astype(np.uint16)))
        elif mode == 'F':
            low, span = draw(st.floats(-1e4, 1e4)), draw(st.floats(0, 2e4))
            images.append(Image.fromarray((low + span * rng.random((h, w))).astype(np.float32)))
        else:
            images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    return images


@settings(max_examples=10)
@given(images=_images())
def test_every_source_decodes_the_same_pixels(images):
    """Whatever the image (bit depth, value range, size), ``wds/`` and ``hfids/`` hand the transform
    the same 8-bit RGB pixels as the loader of ``IMNET``/``image_folder`` (and of ``folder``/``hfds/``,
    which call the same function)."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        out = _stream_decodes(Path(tmp), images)
    assert len(out['loader']) == len(images)
    for source in ('wds', 'hfids'):
        assert len(out[source]) == len(images), source
        for got, want in zip(out[source], out['loader'], strict=True):
            assert got.dtype == np.uint8 and np.array_equal(got, want), source
