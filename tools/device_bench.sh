# The issue-6 measurements in one command on a lent GPU machine (each step time-capped):
#   bash tools/device_bench.sh            # writes under $OUT (or /tmp/ferrule-bench)
# Kernel ratios, decode at batch 1 (fp16, W4 g128) and offline throughput against
# transformers, all on Llama-3-8B shapes with random weights; see docs/benchmarks.md.
. tools/device_env.sh >/dev/null || exit 1
out=${OUT:-/tmp/ferrule-bench}
mkdir -p "$out"
ferrule bench random-model /tmp/l8 --shape llama3-8b >/dev/null
ferrule bench random-model /tmp/l8w4 --shape llama3-8b --bits 4 --group-size 128 >/dev/null
timeout 170 ferrule bench kernels >"$out/kernels.txt" 2>&1
grep -v "^  " "$out/kernels.txt" | tail -30
for m in l8 l8w4; do
    timeout 100 ferrule bench latency /tmp/$m --load-format dummy --output-len 128 \
        --iterations 2 --max-model-len 4096 2>&1 | tee "$out/latency_$m.txt" | tail -2
done
timeout 330 ferrule bench throughput /tmp/l8 --load-format dummy --num-prompts 512 \
    --input-len 512 --output-len 256 --spread --hf-batch-size 64 --max-model-len 2048 \
    --max-num-seqs 512 --max-num-batched-tokens 16384 \
    2>&1 | tee "$out/throughput_fp16.txt" | tail -5
