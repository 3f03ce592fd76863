#!/bin/sh
# Install Debian's dataset-fashion-mnist (Fashion-MNIST as IDX files) where apt exists.
# Without it, jpanning still runs on CIFAR/MNIST through tfds or on synthetic data.
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; Fashion-MNIST will be downloaded by tfds if reachable"; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "note: not root and no sudo; install dataset-fashion-mnist by hand"; exit 0; fi
fi
echo "installing Debian package dataset-fashion-mnist (Fashion-MNIST IDX files)"
$SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
  || echo "note: could not install dataset-fashion-mnist; tests that need it are skipped"
