#!/usr/bin/env bash
# bench/gpu.py on a device machine (H100/H200) in ONE call, everything back under $OUT.
#
# 1. Here, once (host with network; builds pure-Python wheels of what the device image lacks:
#    torchsde + trampoline for the SDE samplers, openai-clip for CLIP's BPE vocabulary,
#    websocket-client for the benchmark's /ws listener; ~1.5 MB, ignored by git, carried):
#        bash bench/device_run.sh prepare
# 2. The device tool's run, with a timeout that leaves time for a rerun in the 15-minute lease
#    (the benchmark's own --budget is 285 s and it writes its JSON after every part):
#        run(command="bash bench/device_run.sh", carry=[".whl"], timeout_s=360)
#    Extra arguments go to bench/gpu.py, e.g. a second try of only what is missing:
#        run(command="bash bench/device_run.sh --only compile,restart", carry=[".whl"], timeout_s=300)
#    A rerun on the same warm machine reuses the checkpoints in /tmp/comfyd_gpu_bench.
# 3. What comes back (files_at): gpu.json (all figures), gpu_console.txt (the tables, printed
#    as markdown), logs/<part>.log (each comfyd server's log: eager, batch_plain, batch_batched,
#    compile, restart).
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    py=${PYTHON:-.venv/bin/python}
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    "$py" -m pip wheel --no-deps --no-build-isolation -q -w .whl \
        torchsde==0.2.6 trampoline==0.1.2 websocket-client==1.9.2 openai-clip==1.0.1 && exit 0
    # no registry: copy the same pure-Python packages out of the local environment instead
    echo "pip wheel failed: copying torchsde, trampoline, websocket, clip from $py's site-packages" >&2
    mkdir -p .whl/site
    for mod in torchsde trampoline websocket clip; do
        src=$("$py" -c "import importlib.util as u; print(u.find_spec('$mod').submodule_search_locations[0])") || exit 1
        cp -r "$src" .whl/site/ || exit 1
    done
    exit 0
fi

OUT=${OUT:-bench/results}
mkdir -p "$OUT/logs"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .whl/site ] && export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu_console.txt"
set -o pipefail
timeout 345 python3 bench/gpu.py --out "$OUT/gpu.json" --log-dir "$OUT/logs" "$@" 2>&1 \
    | tee -a "$OUT/gpu_console.txt"
