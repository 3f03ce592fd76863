# Sourced by the device scripts (scripts/device_search.sh, scripts/device_compare.sh) on the lent
# GPU machine: installs the wheels carried in .whl/ (rlax and its dependencies, which that
# machine lacks) into /tmp/site, puts them on PYTHONPATH, and checks that JAX sees the GPU.
# Needs PYTHON set; exits the calling script when the install or the import fails.
if [ -d .whl ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi -L 2>/dev/null
"$PYTHON" -c "import jax, flax, optax, rlax; print('jax', jax.__version__, jax.devices())" || exit 1
