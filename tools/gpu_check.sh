#!/usr/bin/env bash
# One prepared GPU check: the `gpu` tests of all packages and the GPU benchmarks, results in ONE
# folder. Budget: under 8 minutes on one modern GPU.
#
#   bash tools/gpu_check.sh [OUT_DIR]              # uses nox (needs the package registries)
#   GPU_CHECK_SYSTEM=1 bash tools/gpu_check.sh OUT # uses this machine's python3 and its torch /
#       transformers as they are; our packages from src/ via PYTHONPATH (nothing installed), and
#       wheels found in .whl/ (e.g. open_clip_torch, ftfy, wcwidth) unpacked to /tmp/site first.
#
# Writes: OUT/gpu-tests.log, OUT/gpu-tests.xml (JUnit), OUT/bench.jsonl, OUT/env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0

if [[ "${GPU_CHECK_SYSTEM:-0}" == "1" ]]; then
  PY=${PYTHON:-python3}
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=packages/vl-core/src:packages/clip4dm/src:packages/egtr/src:$PYTHONPATH
  pytest_cmd=("$PY" -m pytest -m gpu -p no:cacheprovider)
else
  python3 -m pip install -q "nox>=2024.4" || exit 1
  PY=.nox/_shared/bin/python   # nox's shared environment (torch, the packages, pytest)
  pytest_cmd=(nox -s gpu --)
fi

[[ -x "$PY" ]] || nox -s typecheck -- --version >/dev/null  # creates .nox/_shared on first use
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__)"
} | tee "$OUT/env.txt"

echo "::: gpu tests"
"${pytest_cmd[@]}" --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1

echo "::: clip4dm throughput"
for shape in vit-b-32 vit-l-14; do
  timeout 180 "$PY" tools/bench/clip4dm_throughput.py --shape "$shape" --device cuda --dtype float16 \
    --pairs 128 --literal-pairs 16 --batch-sizes 1 16 64 --repeats 3 --out "$OUT/bench.jsonl" \
    || status=1
done

echo "::: clip4dm latency (batch 1, with torch.compile)"
timeout 300 "$PY" tools/bench/clip4dm_latency.py --shape vit-b-32 --device cuda --dtype float16 \
  --pairs 8 --repeats 10 --compile --out "$OUT/bench.jsonl" || status=1

if [[ -f tools/bench/egtr_inference.py ]]; then
  echo "::: egtr inference"
  timeout 180 "$PY" tools/bench/egtr_inference.py --device cuda --out "$OUT/egtr_inference.json" \
    2>&1 | tee -a "$OUT/bench.jsonl" || status=1
fi

if [[ -f tools/bench/egtr_vs_detr.py ]]; then
  echo "::: egtr vs transformers' DeformableDetrModel"
  for dtype in float32 bfloat16; do
    timeout 180 "$PY" tools/bench/egtr_vs_detr.py --device cuda --dtype "$dtype" --repeats 20 \
      --out "$OUT/egtr_vs_detr_${dtype}.json" 2>&1 | tee -a "$OUT/bench.jsonl" || status=1
  done
fi

if [[ -f tools/bench/egtr_predict_throughput.py ]]; then
  echo "::: egtr predict throughput (workers vs the bare forward)"
  # the shipped small model (decoding-bound) and the VG-size random model (realistic)
  timeout 240 "$PY" tools/bench/egtr_predict_throughput.py --device cuda --dtype bfloat16 \
    --images 512 --batch-size 16 --workers 0 4 8 --out "$OUT/bench.jsonl" || status=1
  timeout 300 "$PY" tools/bench/egtr_predict_throughput.py --model vg-random --device cuda \
    --dtype bfloat16 --images 128 --batch-size 8 --workers 0 4 --out "$OUT/bench.jsonl" \
    || status=1
fi
echo "::: gpu_check finished with status ${status}; results in ${OUT}"
exit "$status"
