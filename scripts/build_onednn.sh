#!/bin/sh
# Build jpanning's oneDNN convolution for XLA:CPU (jpanning/_onednn_conv.so) against jaxlib's FFI
# headers and oneDNN. Without it, jpanning runs its convolutions in XLA (jpanning.cpu); nothing
# else changes.
#
# Usage: [ONEDNN=pip|debian] [OUT=FILE] scripts/build_onednn.sh [PYTHON]
#   ONEDNN=pip (default): oneDNN 3.2 from PyPI, the wheels onednn-cpu-gomp and
#     onednn-devel-cpu-gomp (versions pinned below), pip-installed into PYTHON's environment:
#     headers in PREFIX/include, libdnnl.so.3 in PREFIX/lib (PREFIX: sys.prefix, the venv).
#     The library is linked with an rpath to PREFIX/lib, so it loads without LD_LIBRARY_PATH.
#     These are oneDNN's last PyPI builds on GNU OpenMP (the system's libgomp, as Debian's);
#     the newer `onednn`/`onednn-devel` wheels (2024.0 on) are SYCL builds that need Intel's
#     DPC++ and OpenCL runtimes (dpcpp-cpp-rt, intel-opencl-rt) to run at all.
#   ONEDNN=debian: Debian's libdnnl-dev (oneDNN 2.6), installed by apt-get where it can be.
#   OUT: where to write the library (default: jpanning/_onednn_conv.so in this checkout).
# jpanning/csrc/onednn_conv.cc builds against either API (2.x or 3.x).
#
# From a pip install, on any x86-64 Linux with g++ (and so libgomp) and a venv:
#   pip install .            # or however jpanning was installed; then, in this checkout:
#   OUT=$(python -I -c "import jpanning, os; print(os.path.dirname(jpanning.__file__))") \
#     && OUT=$OUT/_onednn_conv.so sh scripts/build_onednn.sh python
# and `python -c "from jpanning import onednn; print(onednn.version())"` says 3.2.0.
PY=${1:-python3}
ONEDNN=${ONEDNN:-pip}
ONEDNN_PIP="onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0"  # oneDNN 3.2.0
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/jpanning/csrc/onednn_conv.cc
OUT=${OUT:-$ROOT/jpanning/_onednn_conv.so}

case $ONEDNN in
  pip)
    PREFIX=$("$PY" -c "import sys; print(sys.prefix)") || exit 1
    SONAME=libdnnl.so.3
    if [ ! -f "$PREFIX/include/oneapi/dnnl/dnnl.hpp" ] || [ ! -f "$PREFIX/lib/$SONAME" ]; then
      echo "installing $ONEDNN_PIP (oneDNN, for the CPU convolutions) into $PREFIX"
      # shellcheck disable=SC2086
      "$PY" -m pip install --quiet $ONEDNN_PIP || echo "note: could not pip-install oneDNN"
    fi
    if [ ! -f "$PREFIX/include/oneapi/dnnl/dnnl.hpp" ] || [ ! -f "$PREFIX/lib/$SONAME" ]; then
      echo "note: no oneDNN in $PREFIX; convolutions on the CPU stay in XLA"; exit 0
    fi
    DNNL_FLAGS="-isystem $PREFIX/include -L$PREFIX/lib -Wl,-rpath,$PREFIX/lib"
    ;;
  debian)
    SONAME=libdnnl.so.2
    if [ ! -f /usr/include/oneapi/dnnl/dnnl.hpp ] && command -v apt-get >/dev/null 2>&1; then
      SUDO=""
      if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
      echo "installing Debian package libdnnl-dev (oneDNN, for the CPU convolutions)"
      $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libdnnl-dev >/dev/null \
        || echo "note: could not install libdnnl-dev"
    fi
    if [ ! -f /usr/include/oneapi/dnnl/dnnl.hpp ]; then
      echo "note: no oneDNN headers; convolutions on the CPU stay in XLA"; exit 0
    fi
    DNNL_FLAGS=""
    ;;
  *) echo "ONEDNN=$ONEDNN: choose pip or debian" >&2; exit 2 ;;
esac
INCLUDE=$("$PY" -c "import jax.ffi; print(jax.ffi.include_dir())") || exit 1
# Up to date: newer than the source and this script, and linked to the chosen oneDNN.
if [ -f "$OUT" ] && [ "$OUT" -nt "$SRC" ] && [ "$OUT" -nt "$0" ] && grep -q "$SONAME" "$OUT"; then
  exit 0
fi
echo "building $OUT (oneDNN convolutions for XLA:CPU; ONEDNN=$ONEDNN)"
# shellcheck disable=SC2086
${CXX:-g++} -O2 -std=c++17 -shared -fPIC -isystem "$INCLUDE" $DNNL_FLAGS "$SRC" -o "$OUT.tmp" \
  -ldnnl && mv "$OUT.tmp" "$OUT"
