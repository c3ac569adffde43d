"""Weights behind a URL, as a checked file in torch's hub cache.

The rules, shared by ``pretrained=True`` and every loader that accepts a URL:

* the file lands in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, or ``torch.hub.set_dir``),
  under the URL's file name; a file already there is used as is (it was checked when it arrived);
* a file name that ends in ``-<hex>.<ext>`` carries the first hex digits of its sha256 (the torch
  hub and OpenMMLab convention): the download must match them or it is refused;
* downloads go to a temp file in the cache folder and are renamed into place only when complete
  and checked, so an interrupted or refused download never leaves a half file under the real name;
* ``HORNET_WEIGHTS_MIRROR`` (a base URL) replaces the base of the released files' URLs, e.g. a
  local copy of the OpenMMLab folder on a machine without internet access.
"""
import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import torch

__all__ = ['DownloadError', 'MIRROR_ENV', 'RELEASE_BASE', 'cached_download', 'hash_prefix', 'hub_cache_dir',
           'is_url', 'mirrored']

_logger = logging.getLogger(__name__)

MIRROR_ENV = 'HORNET_WEIGHTS_MIRROR'
# the OpenMMLab copies of the released HorNet weights (mmpretrain's metafile names them)
RELEASE_BASE = 'https://download.openmmlab.com/mmclassification/v0/hornet/'
_HASH_RE = re.compile(r'-([0-9a-f]{8,64})\.[A-Za-z0-9]+$')
_TMP_PREFIX = '.tmp-hornet-download-'
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A URL could not be turned into a checked local file; the message is one line."""


def is_url(path: str) -> bool:
    """Whether ``path`` is an ``http://`` or ``https://`` URL (the only schemes fetched)."""
    return str(path).startswith(('https://', 'http://'))


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a file name carries (``name-0e8eedff.pth`` -> ``0e8eedff``), else None."""
    m = _HASH_RE.search(os.path.basename(filename))
    return m.group(1) if m else None


def hub_cache_dir() -> str:
    """torch's hub checkpoint folder (follows ``TORCH_HOME`` and ``torch.hub.set_dir``)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def mirrored(url: str) -> str:
    """``url`` with the released files' base replaced by ``$HORNET_WEIGHTS_MIRROR`` when it is set."""
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    if mirror and url.startswith(RELEASE_BASE):
        return mirror.rstrip('/') + '/' + url[len(RELEASE_BASE):]
    return url


def _fetch(url: str, f, timeout: float) -> str:
    """Stream ``url`` into the open file ``f``; returns the sha256 hex digest of what was written."""
    sha = hashlib.sha256()
    got = 0
    with urllib.request.urlopen(url, timeout=timeout) as r:
        length = r.headers.get('Content-Length')
        while chunk := r.read(_CHUNK):
            f.write(chunk)
            sha.update(chunk)
            got += len(chunk)
    # http.client returns a short body without complaint when the server closes early
    if length is not None and length.isdigit() and got != int(length):
        raise DownloadError(f'download of {url} stopped after {got} of {length} bytes; run again to retry')
    return sha.hexdigest()


def cached_download(url: str, cache_dir: str | None = None, timeout: float = 60.0) -> str:
    """The local path of the file at ``url``, downloading it into the hub cache if needed.

    Args:
        url: ``https://`` (or ``http://``) URL whose path ends in a file name.
        cache_dir: Folder to use instead of torch's hub checkpoint folder.
        timeout: Seconds to wait for the server on connect and on each read.

    Raises:
        DownloadError: the URL names no file, the server cannot be reached or stopped mid-file, or
            the file's sha256 does not match the prefix in its name. Nothing is left in the cache.
    """
    if not is_url(url):
        raise DownloadError(f'{url!r} is not an http(s) URL')
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise DownloadError(f'{url} names no file to cache; download it yourself and pass the local path')
    folder = cache_dir or hub_cache_dir()
    dest = os.path.join(folder, name)
    if os.path.isfile(dest):
        return dest
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
    except OSError as e:
        raise DownloadError(f'cannot write to the hub cache {folder}: {e.strerror or e}; set TORCH_HOME to a '
                            'writable folder') from None
    expected = hash_prefix(name)
    _logger.info(f'Downloading {url} to {dest}')
    try:
        with os.fdopen(fd, 'wb') as f:
            try:
                digest = _fetch(url, f, timeout)
            except urllib.error.HTTPError as e:
                raise DownloadError(f'cannot download {url}: HTTP {e.code} {e.reason}') from None
            except urllib.error.URLError as e:
                raise DownloadError(f'cannot download {url}: {e.reason}') from None
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(f'download of {url} failed ({type(e).__name__}: {e}); run again to retry') from None
        if expected and not digest.startswith(expected):
            raise DownloadError(
                f'{url}: the downloaded file has sha256 {digest[:len(expected)]}..., but its name says '
                f'{expected}; it is damaged or not the released file (check the URL or mirror), nothing was cached')
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; cached weights are readable like torch hub's
        os.replace(tmp, dest)
    except BaseException:  # also Ctrl-C mid-download: never leave the temp file behind
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest
