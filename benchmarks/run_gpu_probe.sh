#!/usr/bin/env bash
# A short GPU probe (2B shape, random weights, bf16): where the shared-prefix reranker spends
# its time on image candidates (torch.profiler, batches of 16 and of 50), and encoding with a
# larger padded-token budget than the 16,384 default. Results as json and logs under OUT.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
log="$OUT/probe.log"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s) $(date -u +%T)" | tee -a "$log";
         timeout "$limit" "$@" 2>&1 | grep -v -E "FutureWarning|warnings.warn|USDT" | tee -a "$log";
         echo "=== rc ${PIPESTATUS[0]} $(date -u +%T)" | tee -a "$log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
step 100 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" --repeats 2 \
    --batch-size 16 --profile --out "$OUT/rerank_2b_b16.json"
step 70 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" --repeats 2 \
    --batch-size 50 --profile --out "$OUT/rerank_2b_b50.json"
step 120 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 4096 --images 256 \
    --batch-size 256 --max-batch-tokens 65536 --repeats 2 --out "$OUT/encode_2b_65536.json"
