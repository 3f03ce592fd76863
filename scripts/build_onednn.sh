#!/bin/sh
# Build jpanning's oneDNN convolution for XLA:CPU (jpanning/_onednn_conv.so) against jaxlib's FFI
# headers and Debian's libdnnl-dev, installing that package where apt-get can. Without it,
# jpanning runs its convolutions in XLA (jpanning.cpu); nothing else changes.
# Usage: scripts/build_onednn.sh PYTHON
PY=${1:-python3}
SRC=jpanning/csrc/onednn_conv.cc
OUT=jpanning/_onednn_conv.so
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
INCLUDE=$("$PY" -c "import jax.ffi; print(jax.ffi.include_dir())") || exit 1
if [ -f "$OUT" ] && [ "$OUT" -nt "$SRC" ] && [ "$OUT" -nt "$0" ]; then exit 0; fi
echo "building $OUT (oneDNN convolutions for XLA:CPU)"
${CXX:-g++} -O2 -std=c++17 -shared -fPIC -isystem "$INCLUDE" "$SRC" -o "$OUT.tmp" -ldnnl \
  && mv "$OUT.tmp" "$OUT"
