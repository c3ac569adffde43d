"""Fixtures (the autouse ones apply to every test) and the test session's settings. Helpers the
test modules import are in ``helpers.py``."""
import os
import signal
import threading
from functools import partial
from http.server import ThreadingHTTPServer

import pytest
import torch
from hypothesis import settings

import models  # noqa: F401  (registers hornet_* with timm; the root is on sys.path: pyproject.toml `pythonpath`)
from helpers import LoopbackHandler, make_image_folder, tiny_argv

# Generated-input tests (hypothesis): bounded, no wall-clock deadline (the shared CI machine's speed
# varies), and in CI (CI=true) derandomized: the same examples on every run
settings.register_profile('ci', derandomize=True, deadline=None, print_blob=True)
settings.register_profile('dev', deadline=None, print_blob=True)
settings.load_profile('ci' if os.environ.get('CI') else 'dev')


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core CI machine, spinning OpenMP threads of
    several processes slow the tiny models down several-fold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def default_sigint():
    """Python's own Ctrl-C handler, as in a foreground terminal, whatever way the suite was started:
    a background job of a non-interactive shell (``cmd &``, ``nohup cmd &``, some CI runners) starts
    with SIGINT ignored, which the processes the tests start would inherit. A caught signal is reset
    to its default across ``exec``, so child Pythons install the same handler."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def new_graphs():
    """For compile tests: dynamo as in a fresh process, and a callable counting the graphs compiled
    since. Cached graphs of other tests are forgotten (with symbolic sizes, which other input sizes
    would bring about, torch 2.14's inductor fails; main.py compiles with dynamic=False); inductor
    compiles in this process (no worker pool for a tiny model); a raised recompile limit
    (models.compile_blocks) is put back afterwards. Through torch's own config patching: these
    config modules provide their attributes through ``__getattr__``, and pytest 9's monkeypatch
    deletes such an attribute on undo."""
    with torch._inductor.config.patch(compile_threads=1), \
            torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit):
        torch._dynamo.reset()
        stats = torch._dynamo.utils.counters['stats']
        start = stats['unique_graphs']  # counted since the process started
        yield lambda: stats['unique_graphs'] - start


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> str:
    """A 3-class image folder (:func:`make_image_folder`), shared by a module's tests."""
    return make_image_folder(str(tmp_path_factory.mktemp('data')))


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> str:
    """The folder of a finished 2-epoch run on ``data`` (checkpoint-0/1, best, log.txt, TensorBoard
    events), written under umask 022; copy it before changing anything in it."""
    import main as train_main
    out = str(tmp_path_factory.mktemp('trained') / 'run')
    old = os.umask(0o022)
    try:
        assert train_main.run(tiny_argv(data, out)) == 0
    finally:
        os.umask(old)
    return out


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 (a thread) serving ``tmp_path/served``: yields
    ``(base_url, folder, cut)``; add a file name to the set ``cut`` to break its download midway."""
    folder = tmp_path / 'served'
    folder.mkdir()
    server = ThreadingHTTPServer(('127.0.0.1', 0), partial(LoopbackHandler, directory=str(folder)))
    server.cut = set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}', folder, server.cut
    server.shutdown()
    server.server_close()
