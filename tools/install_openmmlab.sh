#!/usr/bin/env bash
# Install the OpenMMLab 2.0 stack used by object_detection/ and semantic_segmentation/:
#   mmengine 0.10.7, mmcv 2.1.0 (with compiled ops), mmdet 3.3.0, mmsegmentation 1.2.2;
# and mmpretrain 1.2.0, whose HorNet is a yardstick of benchmarks/throughput.py and of the
# checkpoint conformance tests (tests/test_mmpretrain.py).
#
# mmcv 2.1.0 ships no wheel for current torch, so it is built from the PyPI sdist
# (C++20 for torch >= 2.10 headers, -O3 because setuptools >= 80 replaces CFLAGS) and the
# wheel is cached under ${HORNET_CACHE:-~/.cache/hornet}/mmcv keyed by python/torch/ops
# flavour; later runs install it in seconds. The installed torch is pinned through a pip
# constraints file so nothing here can replace it. Idempotent: re-running only checks.
#
# Usage: bash tools/install_openmmlab.sh
# Env:   HORNET_MMCV_CUDA=0|1  force CPU-only or CUDA ops (default: CUDA iff a GPU and nvcc exist)
#        MAX_JOBS              parallel compile jobs for mmcv (default 2)
#        HORNET_CACHE          cache root (default ~/.cache/hornet)
set -euo pipefail

MMENGINE_VER=0.10.7
MMCV_VER=2.1.0
MMDET_VER=3.3.0
MMSEG_VER=1.2.2
MMPRETRAIN_VER=1.2.0
PY=${PYTHON:-python}

log() { echo "[install_openmmlab] $*"; }
die() { echo "[install_openmmlab] ERROR: $*" >&2; exit 1; }
trap 'echo "[install_openmmlab] ERROR: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# one torch import for version + GPU presence (imports are the slow part of a cached run)
TORCH_INFO=$("$PY" -c "import torch; print(torch.__version__, int(torch.cuda.is_available()))" 2>/dev/null) \
    || die "torch is not installed; run 'pip install -r requirements.txt' first"
TORCH_VER=${TORCH_INFO% *}
HAS_GPU=${TORCH_INFO#* }

# Version of an installed distribution, or empty.
installed() {
    "$PY" - "$1" <<'EOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    print("")
EOF
}

TV_VER=$(installed torchvision)
PY_TAG=$("$PY" -c "import sys; print(f'py{sys.version_info[0]}{sys.version_info[1]}')")
log "python: $("$PY" --version 2>&1), torch: $TORCH_VER, torchvision: ${TV_VER:-none}"

# Pin torch/torchvision to what is installed so no dependency can swap them out.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CONSTRAINTS="$WORK/constraints.txt"
echo "torch==$TORCH_VER" > "$CONSTRAINTS"
[ -n "$TV_VER" ] && echo "torchvision==$TV_VER" >> "$CONSTRAINTS"
PIP=("$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")

# --- build tooling (the mmcv build needs setuptools < 81) --------------------------------
if ! "$PY" - 2>/dev/null <<'EOF'
from importlib import metadata
v = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
import wheel, ninja  # noqa: F401
raise SystemExit(0 if (77, 0) <= v < (81, 0) else 1)
EOF
then
    log "installing build tools: setuptools>=77.0.3,<81 wheel ninja"
    "${PIP[@]}" "setuptools>=77.0.3,<81" wheel ninja
else
    log "build tools present (setuptools $(installed setuptools))"
fi

# --- mmengine + runtime deps (opencv headless: no libGL needed) ----------------------------
RUNTIME_DEPS=(addict "pyyaml" rich termcolor yapf matplotlib packaging pillow scipy
              "shapely" six terminaltables tqdm prettytable pycocotools ftfy regex)
if ! "$PY" -c "import cv2" 2>/dev/null; then
    RUNTIME_DEPS+=(opencv-python-headless)
fi
MISSING_DEPS=$("$PY" - "${RUNTIME_DEPS[@]}" <<'EOF'
import sys
from importlib import metadata
missing = []
for name in sys.argv[1:]:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
print(' '.join(missing))
EOF
)
if [ -n "$MISSING_DEPS" ]; then
    log "installing runtime dependencies: $MISSING_DEPS"
    # shellcheck disable=SC2086  # one package per word
    "${PIP[@]}" -q $MISSING_DEPS
else
    log "runtime dependencies present: ${RUNTIME_DEPS[*]}"
fi

if [ "$(installed mmengine)" != "$MMENGINE_VER" ]; then
    log "installing mmengine==$MMENGINE_VER (--no-deps)"
    "${PIP[@]}" --no-deps "mmengine==$MMENGINE_VER"
else
    log "mmengine $MMENGINE_VER already installed"
fi

# --- mmcv with ops ----------------------------------------------------------------------
case "${HORNET_MMCV_CUDA:-auto}" in
    1) WANT_CUDA=1 ;;
    0) WANT_CUDA=0 ;;
    auto)
        if [ "$HAS_GPU" = 1 ] && command -v nvcc >/dev/null 2>&1; then WANT_CUDA=1; else WANT_CUDA=0; fi ;;
    *) die "HORNET_MMCV_CUDA must be 0 or 1" ;;
esac
FLAVOUR=cpu
[ "$WANT_CUDA" = 1 ] && FLAVOUR=cuda

mmcv_ok() {
    "$PY" - "$MMCV_VER" "$WANT_CUDA" <<'EOF' 2>/dev/null
import sys
import mmcv
from mmcv.ops import nms  # noqa: F401  (fails if the compiled _ext is missing or stale)
import mmcv._ext  # noqa: F401
if mmcv.__version__ != sys.argv[1]:
    raise SystemExit(1)
if sys.argv[2] == "1":
    from mmcv.ops import get_compiling_cuda_version
    raise SystemExit(0 if get_compiling_cuda_version() != "not available" else 1)
EOF
}

CACHE_ROOT=${HORNET_CACHE:-$HOME/.cache/hornet}
CACHE_DIR="$CACHE_ROOT/mmcv/mmcv-$MMCV_VER-$PY_TAG-torch-${TORCH_VER//+/_}-$FLAVOUR"
if mmcv_ok; then
    log "mmcv $MMCV_VER with ops ($FLAVOUR) already installed"
else
    WHEEL=$(ls "$CACHE_DIR"/mmcv-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$WHEEL" ]; then
        log "no cached mmcv wheel in $CACHE_DIR: building mmcv==$MMCV_VER from the sdist ($FLAVOUR ops)"
        log "this takes about 6 minutes on 2 idle cores"
        "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: \
            --no-build-isolation -d "$WORK/sdist" "mmcv==$MMCV_VER"
        tar -xzf "$WORK"/sdist/mmcv-"$MMCV_VER".tar.gz -C "$WORK"
        SRC="$WORK/mmcv-$MMCV_VER"
        grep -q -- "-std=c++17" "$SRC/setup.py" || die "expected -std=c++17 in mmcv setup.py"
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        log "patched setup.py: -std=c++17 -> -std=c++20"
        export CFLAGS="-DNDEBUG -fwrapv -O3 -g0"
        export MAX_JOBS=${MAX_JOBS:-2}
        if [ "$WANT_CUDA" = 1 ]; then
            export FORCE_CUDA=1
            if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
                TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
                export TORCH_CUDA_ARCH_LIST
            fi
            log "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
        else
            unset FORCE_CUDA
        fi
        log "CFLAGS='$CFLAGS' MAX_JOBS=$MAX_JOBS; pip wheel --no-build-isolation"
        mkdir -p "$WORK/wheel"
        "$PY" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation \
            -w "$WORK/wheel" "$SRC"
        mkdir -p "$CACHE_DIR"
        cp "$WORK"/wheel/mmcv-*.whl "$CACHE_DIR"/
        WHEEL=$(ls "$CACHE_DIR"/mmcv-*.whl | head -n1)
        log "cached $WHEEL"
    else
        log "using cached wheel $WHEEL"
    fi
    "${PIP[@]}" --no-deps --force-reinstall "$WHEEL"
    mmcv_ok || die "mmcv installed from $WHEEL but 'import mmcv.ops' fails"
fi

# --- mmdet / mmseg (pure python; --no-deps keeps their mim extras from pulling mmcv/torch) -
if [ "$(installed mmdet)" != "$MMDET_VER" ]; then
    log "installing mmdet==$MMDET_VER (--no-deps)"
    "${PIP[@]}" --no-deps "mmdet==$MMDET_VER"
else
    log "mmdet $MMDET_VER already installed"
fi
if [ "$(installed mmsegmentation)" != "$MMSEG_VER" ]; then
    log "installing mmsegmentation==$MMSEG_VER (--no-deps)"
    "${PIP[@]}" --no-deps "mmsegmentation==$MMSEG_VER"
else
    log "mmsegmentation $MMSEG_VER already installed"
fi

# mmpretrain's own dependencies are pure python (einops, mat4py, modelindex, ...); mmcv/mmengine are
# only in its `mim` extra, so a plain install (torch pinned by the constraints) changes nothing above
if [ "$(installed mmpretrain)" != "$MMPRETRAIN_VER" ]; then
    log "installing mmpretrain==$MMPRETRAIN_VER"
    "${PIP[@]}" -q "mmpretrain==$MMPRETRAIN_VER"
else
    log "mmpretrain $MMPRETRAIN_VER already installed"
fi

# --- verify --------------------------------------------------------------------------------
"$PY" - "$TORCH_VER" <<'EOF'
import sys
import torch
if torch.__version__ != sys.argv[1]:
    raise SystemExit(f"[install_openmmlab] ERROR: torch changed from {sys.argv[1]} to {torch.__version__}")
import mmcv, mmcv.ops, mmdet, mmdet.models, mmengine, mmpretrain, mmpretrain.models, mmseg, mmseg.models
print(f"[install_openmmlab] OK: torch {torch.__version__}, mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, "
      f"mmpretrain {mmpretrain.__version__}")
EOF
