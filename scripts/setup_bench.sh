#!/usr/bin/env bash
# Optional, for tests/bench only (never needed by the test suite): a virtual environment
# .venv-bench with a current PyTorch 2.x from PyPI, the "modern peer" bench_gpt2_step runs
# beside Debian's PyTorch 1.13 (eager and torch.compile). PyPI's Linux x86-64 torch is the
# CUDA build (about 3 GB with its nvidia-* wheels); it runs on CPU without a GPU.
# Usage: scripts/setup_bench.sh   (idempotent; prints the torch version it has)
set -euo pipefail
cd "$(dirname "$0")/.."
torch_pin="torch==2.15.0"
if ! .venv-bench/bin/python -c "import torch" 2>/dev/null; then
  echo "setup_bench: creating .venv-bench ($torch_pin)"
  rm -rf .venv-bench
  /usr/bin/python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --disable-pip-version-check "$torch_pin"
fi
.venv-bench/bin/python -c "import torch; print('setup_bench: torch', torch.__version__, 'in .venv-bench')"
