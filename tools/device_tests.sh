# The gpu-marked tests on a lent GPU machine, per plugin, each capped so that one slow
# group (a fresh machine compiles every Triton variant it touches) cannot take the others'
# time:   bash tools/device_tests.sh [SECONDS_PER_GROUP]   (default 100)
. tools/device_env.sh >/dev/null || exit 1
cap=${1:-100}
out=${OUT:-/tmp/ferrule-tests}
mkdir -p "$out"
run() {
    name=$1; shift
    timeout "$cap" python3 -m pytest -q -rf --tb=short -p no:cacheprovider "$@" >"$out/$name.log" 2>&1
    echo "$name (exit $?): $(tail -1 "$out/$name.log" | cut -c1-200)"
}
run engine -m gpu integration_tests/test_engine_cuda.py packages/ferrule-engine/tests/test_staging_and_graph_sizes.py
run fused plugins/ferrule-triton-kernels/tests/test_gather_interpreter.py plugins/ferrule-triton-kernels/tests/test_fused_interpreter.py plugins/ferrule-triton-kernels/tests/test_fused_act_interpreter.py plugins/ferrule-triton-kernels/tests/test_fused_act_gpu.py
run attention -m gpu plugins/ferrule-triton-kernels/tests/test_paged_attention_gpu.py
run cuda -m gpu plugins/ferrule-cuda-kernels/tests
run gptq -m gpu plugins/ferrule-triton-kernels/tests/test_gptq_gpu.py
run others -m gpu packages/ferrule-core/tests packages/ferrule-quant/tests plugins/ferrule-cpu/tests plugins/ferrule-llama/tests
