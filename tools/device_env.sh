# Source on a GPU machine whose python3 already holds a CUDA torch (the lent device):
#   . tools/device_env.sh
# Installs the build backend from .whl/ (wheels carried along; nothing can be downloaded
# there) into /tmp/site, then every workspace package editable without dependencies.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
editables=""
for d in packages/* plugins/*; do editables="$editables -e $d"; done
python3 -m pip install -q --no-deps --no-build-isolation $editables || return 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
