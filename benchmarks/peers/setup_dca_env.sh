#!/usr/bin/env bash
# Build (idempotently) a separate venv in which DCA 0.3.4 runs on Python 3.11; see BENCHMARKS.md.
# Usage: bash benchmarks/peers/setup_dca_env.sh [VENV_DIR]   (default: .dca_venv)
# Pins: tensorflow-cpu 2.15.1 + keras 2.15.0 (the last Keras 2) + numpy 1.26.4; dca and kopt
# are installed with --no-deps (their own pins ask for tensorflow < 2.5) and patched in place.
set -euo pipefail
VENV="${1:-.dca_venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "tensorflow-cpu==2.15.1" "keras==2.15.0" "numpy==1.26.4" "scanpy==1.10.4" \
  "anndata==0.12.19" "hyperopt==0.3.0" "pyyaml"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
  "dca==0.3.4" "kopt==0.1.0"

# The five one-line fixes (each applied only if the old text is still there).
"$VENV/bin/python" - <<'EOF'
import importlib.util
from pathlib import Path

site = Path(importlib.util.find_spec("dca").origin).parent.parent
fixes = {
    "dca/layers.py": [
        ("from keras.engine.topology import Layer", "from keras.layers import Layer"),
        ("from keras.engine.base_layer import InputSpec", "from keras.layers import InputSpec"),
        ("ColwiseMultLayer = Lambda(lambda l: l[0]*tf.reshape(l[1], (-1,1)))",
         "ColwiseMultLayer = lambda inputs: Lambda(lambda l: l[0]*tf.reshape(l[1], (-1,1)))(inputs)"),
    ],
    "dca/network.py": [("from keras.objectives import", "from keras.losses import")],
    "dca/train.py": [("import keras.optimizers as opt", "import keras.optimizers.legacy as opt")],
    "kopt/config.py": [("yaml.load(open(_config_path))", "yaml.safe_load(open(_config_path))")],
}
for rel, pairs in fixes.items():
    path = site / rel
    text = path.read_text()
    for old, new in pairs:
        if new not in text:
            assert old in text, f"{rel}: neither the original nor the fixed line found"
            text = text.replace(old, new)
    path.write_text(text)
    for p in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        p.unlink()
print("dca fixes applied in", site)
EOF

TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" -c \
  "import tensorflow as tf, keras, numpy, dca.api; print('dca env ok: tf', tf.__version__, \
'keras', keras.__version__, 'numpy', numpy.__version__)"
