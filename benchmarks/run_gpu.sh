#!/usr/bin/env bash
# One GPU session's benchmark run: reranking (with and without lamra's packed vision attention)
# and encoding of the real 2B shape (random weights, bf16), then the 7B reranking; training
# too with WITH_TRAIN=1. PROBE=1 runs the profile of 2026-11-27 instead (torch.profiler of the
# reranker on image candidates, batches of 16 and 50; encoding with 65,536 tokens per batch).
# ENCODE=1 runs issue 25's encoding steps instead (about 9 minutes): padded and sorted baselines,
# text packed, images collated in worker processes, and an index build against encoding alone.
# Results as json under OUT.
# Each step has its own time limit so one slow step cannot take the others' time.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
log="$OUT/$([ "${PROBE:-0}" = 1 ] && echo probe || ([ "${ENCODE:-0}" = 1 ] && echo encode) || echo all).log"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s) $(date -u +%T)" | tee -a "$log";
         timeout "$limit" "$@" 2>&1 | grep -v -E "FutureWarning|warnings.warn" | tee -a "$log";
         echo "=== rc ${PIPESTATUS[0]} $(date -u +%T)" | tee -a "$log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$log"
if [ "${PROBE:-0}" = 1 ]; then  # where the reranker's time goes, and a larger encoding token budget
    step 100 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" --repeats 2 \
        --batch-size 16 --profile --out "$OUT/rerank_2b_b16.json"
    step 70 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" --repeats 2 \
        --batch-size 50 --profile --out "$OUT/rerank_2b_b50.json"
    step 180 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 4096 --images 256 \
        --batch-size 256 --max-batch-tokens 65536 --repeats 2 --profile --out "$OUT/encode_2b_65536.json"
    exit 0
fi
if [ "${ENCODE:-0}" = 1 ]; then  # issue 25 (docs/benchmarks.md): each workload checked against the baselines' vectors
    step 180 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 4096 --images 256 \
        --batch-size 256 --sorted-batch-size 256 --repeats 2 --out "$OUT/encode_2b.json"
    # Text packed: no padding, torch's varlen attention.
    step 90 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 4096 --images 0 \
        --batch-size 256 --sorted-batch-size 256 --repeats 2 --packing --out "$OUT/encode_2b_packed.json"
    # Images collated in 4 worker processes, pinned, non-blocking copies.
    step 80 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 256 --images 256 \
        --batch-size 256 --repeats 2 --workers 4 --out "$OUT/encode_2b_workers.json"
    # A text jsonl indexed end to end against encoding alone (target: build >= 90 % of encode-only items/s).
    step 170 python3 benchmarks/index_build.py --arch 2b --device cuda --dtype bf16 --items 30000 --repeats 1 \
        --out "$OUT/index_build_2b.json"
    exit 0
fi
step 170 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --out "$OUT/rerank_2b.json"
# The same image workloads with transformers' per-image vision attention: what packing gains.
step 70 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" \
    --stock-vision-attention --out "$OUT/rerank_2b_stock_vision.json"
# Issue 25: against the padded batch-64 loop and the plain sorted batch-256 loop (both timed), with MFU.
step 200 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 4096 --images 256 \
    --batch-size 256 --sorted-batch-size 256 --repeats 2 --out "$OUT/encode_2b.json"
step 90 python3 benchmarks/rerank.py --arch 7b --device cuda --dtype bf16 --repeats 2 --out "$OUT/rerank_7b.json"
[ "${WITH_TRAIN:-0}" = 1 ] && step 150 python3 benchmarks/train_throughput.py --arch 2b --device cuda --batch 32 \
    --chunk-size 8 --words 40 --out "$OUT/train_2b.json"
exit 0
