#!/usr/bin/env bash
# One GPU session's benchmark run: reranking (with and without lamra's packed vision attention)
# and encoding of the real 2B shape (random weights, bf16; padded, then text packed), then the
# 7B reranking; training too with WITH_TRAIN=1; with WITH_INDEX=1 (issue 25, up to 330 s more, beyond
# the default steps' 530 s) encoding with worker-process collation and `lamra index build` end to end. PROBE=1 runs the profile of 2026-11-27 instead
# (torch.profiler of the reranker on image candidates, batches of 16 and 50; encoding with 65,536
# tokens per batch).
# Results as json under OUT.
# Each step has its own time limit so one slow step cannot take the others' time.
set -u
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
log="$OUT/$([ "${PROBE:-0}" = 1 ] && echo probe || echo all).log"
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
step 170 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --out "$OUT/rerank_2b.json"
# The same image workloads with transformers' per-image vision attention: what packing gains.
step 70 python3 benchmarks/rerank.py --arch 2b --device cuda --dtype bf16 --only "image candidates" \
    --stock-vision-attention --out "$OUT/rerank_2b_stock_vision.json"
# Issue 25: against the padded batch-64 loop and the plain sorted batch-256 loop (both timed), with MFU;
# then the same text workloads packed (no padding, varlen attention), checked against both loops' vectors.
# 2,048 texts each (4,096 before packing was added; the two steps fit the old one's 200 s).
step 115 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 2048 --images 256 \
    --batch-size 256 --sorted-batch-size 256 --repeats 2 --out "$OUT/encode_2b.json"
step 85 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 --texts 2048 --images 0 \
    --batch-size 256 --sorted-batch-size 256 --repeats 2 --packing --out "$OUT/encode_2b_packed.json"
step 90 python3 benchmarks/rerank.py --arch 7b --device cuda --dtype bf16 --repeats 2 --out "$OUT/rerank_7b.json"
# Issue 25, opt-in (the default steps above already take the 530 s): images collated in 4 worker
# processes (pinned, non-blocking copies), checked like the rest; then a 100k-item text jsonl indexed end
# to end against encoding alone (target: build >= 90 % of the encode-only items/s).
[ "${WITH_INDEX:-0}" = 1 ] && step 90 python3 benchmarks/encode_throughput.py --arch 2b --device cuda --dtype bf16 \
    --texts 256 --images 256 --batch-size 256 --repeats 2 --workers 4 --out "$OUT/encode_2b_workers.json"
[ "${WITH_INDEX:-0}" = 1 ] && step 240 python3 benchmarks/index_build.py --arch 2b --device cuda --dtype bf16 \
    --items 100000 --repeats 1 --out "$OUT/index_build_2b.json"
[ "${WITH_TRAIN:-0}" = 1 ] && step 150 python3 benchmarks/train_throughput.py --arch 2b --device cuda --batch 32 \
    --chunk-size 8 --words 40 --out "$OUT/train_2b.json"
exit 0
