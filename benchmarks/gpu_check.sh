#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, install engine[onnx,gpu] from this checkout into a fresh virtualenv,
# serve examples/onnx-iris with `compute: {gpu: 1}`, and check that onnxruntime's CUDAExecutionProvider served it.
#
#   bash benchmarks/gpu_check.sh [--wheelhouse DIR] [--ort REQUIREMENT] [--cuda-libs auto|pip|system] [--keep]
#
#   --wheelhouse DIR   install every package from DIR only (no network); see docs/hardware.md for how to fill it
#   --ort REQ          the onnxruntime-gpu to install (default: the newest); pin an older one for an older driver
#   --cuda-libs        where onnxruntime-gpu finds CUDA and cuDNN: `pip` installs onnxruntime-gpu[cuda,cudnn],
#                      `system` uses the machine's libraries, `auto` (default) uses the system's when they are all there
#   --keep             keep the work folder (virtualenv, project, server log) instead of deleting it
#
# Prints a PASS/FAIL line per check and a summary; exits 0 only when every required check passed. A few minutes end to
# end, most of it pip installing onnxruntime-gpu (and the CUDA libraries when they come from pip).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELHOUSE=""
CUDA_LIBS="auto"
ORT="onnxruntime-gpu"
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) WHEELHOUSE="$(cd "${2:?--wheelhouse needs a folder}" && pwd)" || exit 2; shift 2 ;;
        --cuda-libs) CUDA_LIBS="${2:?--cuda-libs needs auto, pip or system}"; shift 2 ;;
        --ort) ORT="${2:?--ort needs a requirement, e.g. onnxruntime-gpu==1.22.0}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$CUDA_LIBS" in auto|pip|system) ;; *) echo "--cuda-libs must be auto, pip or system" >&2; exit 2 ;; esac

WORK="$(mktemp -d "${TMPDIR:-/tmp}/engine-gpu-check.XXXXXX")"
VENV="$WORK/venv"
PY="$VENV/bin/python"
LOG="$WORK/serve.log"
SERVER_PID=""
STARTED=$SECONDS
declare -a RESULTS=()
FAILED=0

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - STARTED))"; }
pass() { RESULTS+=("PASS  $*"); echo "PASS  $*"; }
fail() { RESULTS+=("FAIL  $*"); echo "FAIL  $*"; FAILED=1; }
info() { RESULTS+=("INFO  $*"); echo "INFO  $*"; }

summary() {
    printf '\n== summary (%ds)\n' "$((SECONDS - STARTED))"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$FAILED" = 0 ]; then echo "GPU CHECK: PASS"; else echo "GPU CHECK: FAIL"; fi
    if [ "$FAILED" != 0 ] && [ -f "$LOG" ]; then printf '\n== last lines of the server log\n'; tail -n 40 "$LOG"; fi
}

# Stop here: print the summary and exit non-zero (the EXIT trap cleans up).
abort() { fail "$*"; summary; exit 1; }

pip_install() {
    if [ -n "$WHEELHOUSE" ]; then
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" "$@"
    else
        "$PY" -m pip install --quiet "$@"
    fi
}

# --- 1. the machine ------------------------------------------------------------------------------------------------
step "machine"
command -v nvidia-smi >/dev/null || abort "nvidia-smi not found: is the NVIDIA driver installed?"
GPUS="$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1)" \
    || abort "nvidia-smi failed: $GPUS"
[ -n "$GPUS" ] || abort "nvidia-smi lists no GPU"
GPU_COUNT="$(printf '%s\n' "$GPUS" | wc -l)"
pass "nvidia-smi lists $GPU_COUNT GPU(s): $(printf '%s' "$GPUS" | tr '\n' ';')"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || abort "$PYTHON is $("$PYTHON" --version 2>&1); engine needs Python 3.10 or newer (set PYTHON=...)"
pass "$("$PYTHON" --version 2>&1), work folder $WORK"

# --- 2. install ----------------------------------------------------------------------------------------------------
step "install engine[onnx,gpu] from $REPO${WHEELHOUSE:+ (wheelhouse $WHEELHOUSE)}"
"$PYTHON" -m venv "$VENV" || abort "python -m venv failed"
pip_install 'setuptools>=68' wheel || abort "pip could not install setuptools and wheel"
# The checkout's distributions, built with the venv's setuptools (no isolated build env: works offline too).
pip_install --no-build-isolation "$REPO" "$REPO/plugins/python_predictor" "$REPO/plugins/onnx_predictor" \
    "$REPO/plugins/hw_cuda" || abort "pip could not install engine and its onnx and cuda plugins"
# onnxruntime and onnxruntime-gpu share the `onnxruntime` package: remove both, then install the GPU build alone.
"$PY" -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu >/dev/null 2>&1
pip_install "$ORT" || abort "pip could not install $ORT"
ORT_VERSION="$("$PY" -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))' 2>/dev/null)"
CUDA_PROVIDER="$("$PY" -c 'import glob, os, onnxruntime as o
print(*glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime_providers_cuda.so")))' 2>/dev/null)"
[ -n "$CUDA_PROVIDER" ] || abort "onnxruntime-gpu $ORT_VERSION has no libonnxruntime_providers_cuda.so"
# The CUDA major version this build links against, and the newest one the driver supports.
NEEDS_CUDA="$(ldd "$CUDA_PROVIDER" 2>/dev/null | grep -o 'libcublasLt\.so\.[0-9]*' | head -n 1 | sed 's/.*\.//')"
DRIVER_CUDA="$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9]*' | grep -o '[0-9]*$' | head -n 1)"
info "onnxruntime-gpu $ORT_VERSION is built for CUDA ${NEEDS_CUDA:-?}; the driver supports CUDA up to ${DRIVER_CUDA:-?}"
if [ -n "$NEEDS_CUDA" ] && [ -n "$DRIVER_CUDA" ] && [ "$DRIVER_CUDA" -lt "$NEEDS_CUDA" ]; then
    abort "onnxruntime-gpu $ORT_VERSION needs CUDA $NEEDS_CUDA, newer than the driver's CUDA $DRIVER_CUDA: rerun with" \
          "--ort 'onnxruntime-gpu==X' for a release built for CUDA $DRIVER_CUDA (see onnxruntime's CUDA requirements)"
fi
# Libraries the CUDA provider cannot find (libcuda.so.1 is the driver's own; cuDNN is loaded when a session starts).
missing_libs() {
    ldd "$CUDA_PROVIDER" 2>/dev/null | awk '/not found/ && $1 != "libcuda.so.1" {print $1}'
    has_cudnn || echo "libcudnn.so.9"
}
has_cudnn() {
    ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9' && return 0
    local folder folders
    IFS=: read -ra folders <<< "${LD_LIBRARY_PATH:-}"
    for folder in "${folders[@]}"; do [ -e "$folder/libcudnn.so.9" ] && return 0; done
    return 1
}
MISSING="$(missing_libs | xargs)"
if [ "$CUDA_LIBS" = auto ]; then
    if [ -z "$MISSING" ]; then CUDA_LIBS=system; else CUDA_LIBS=pip; fi
fi
if [ "$CUDA_LIBS" = pip ]; then
    pip_install "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION" \
        || abort "pip could not install onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION (the CUDA and cuDNN libraries)"
    # The nvidia-* wheels put their libraries under site-packages/nvidia/...; make them findable by dlopen.
    NVIDIA_LIBS="$("$PY" - <<'PYEOF'
import glob, os, site
folders = {os.path.dirname(path) for base in site.getsitepackages()
           for path in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(folders)))
PYEOF
)"
    export LD_LIBRARY_PATH="${NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    MISSING="$(missing_libs | xargs)"
fi
if [ -n "$MISSING" ]; then
    abort "the CUDA provider of onnxruntime-gpu $ORT_VERSION cannot find: $MISSING (CUDA and cuDNN from $CUDA_LIBS;" \
          "try --cuda-libs pip, or install CUDA ${NEEDS_CUDA:-} and cuDNN 9 on the machine)"
fi
pass "installed: $("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(engine|onnxruntime|nvidia-ml-py)' | tr '\n' ' ')"
info "CUDA and cuDNN libraries: from $CUDA_LIBS${NVIDIA_LIBS:+ ($NVIDIA_LIBS)}"
PROVIDERS="$("$PY" -c 'import onnxruntime as o; print(",".join(o.get_available_providers()))' 2>&1)"
case ",$PROVIDERS," in
    *,CUDAExecutionProvider,*) pass "onnxruntime $("$PY" -c 'import onnxruntime as o; print(o.__version__)') has CUDAExecutionProvider" ;;
    *) abort "onnxruntime has no CUDAExecutionProvider (providers: $PROVIDERS)" ;;
esac

# --- 3. the project ------------------------------------------------------------------------------------------------
step "project: examples/onnx-iris with compute.gpu: 1"
PROJECT="$WORK/onnx-iris"
cp -R "$REPO/examples/onnx-iris" "$PROJECT" || abort "examples/onnx-iris is missing from $REPO"
if [ ! -f "$PROJECT/model/model.onnx" ]; then
    info "model/model.onnx is not shipped: making it with make_model.py (scikit-learn, skl2onnx)"
    pip_install scikit-learn skl2onnx || abort "pip could not install scikit-learn and skl2onnx"
    "$PY" "$PROJECT/make_model.py" --out "$PROJECT/model/model.onnx" || abort "make_model.py failed"
fi
# Ask for one GPU in every API of the example (and, in a second file, for one more GPU than the machine has).
"$PY" - "$PROJECT" "$GPU_COUNT" <<'EOF' || abort "could not write the GPU configurations"
import sys, yaml
project, count = sys.argv[1], int(sys.argv[2])
apis = yaml.safe_load(open(f"{project}/cortex.yaml"))
for name, gpus in (("cortex.yaml", 1), ("too-many-gpus.yaml", count + 1)):
    for api in apis:
        api["compute"] = {**(api.get("compute") or {}), "gpu": gpus}
    yaml.safe_dump(apis, open(f"{project}/{name}", "w"), sort_keys=False)
EOF
API="$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[0]["name"])' "$PROJECT/cortex.yaml")"
ENGINE="$VENV/bin/engine"
PLUGINS="$("$ENGINE" plugins 2>&1)"
if printf '%s' "$PLUGINS" | grep -q 'hardware targets: .*gpu' && printf '%s' "$PLUGINS" | grep -q 'onnx (ONNXPredictor)'; then
    pass "engine plugins lists the onnx predictor and the gpu target"
else
    fail "engine plugins does not list both the onnx predictor and the gpu target: $PLUGINS"
fi
if VALID="$("$ENGINE" validate "$PROJECT" 2>&1)"; then pass "engine validate: $VALID"; else abort "engine validate: $VALID"; fi
if TOO_MANY="$("$ENGINE" validate "$PROJECT" -f "$PROJECT/too-many-gpus.yaml" 2>&1)"; then
    fail "engine validate accepted compute.gpu: $((GPU_COUNT + 1)) on $GPU_COUNT GPU(s)"
else
    pass "engine validate refuses compute.gpu: $((GPU_COUNT + 1)): ${TOO_MANY#error: }"
fi

# --- 4. serve and call ---------------------------------------------------------------------------------------------
step "serve"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
MEMORY_BEFORE="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' ')"
SERVE_STARTED=$SECONDS
"$ENGINE" serve "$PROJECT" --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
# Prints the body of a request to the server, or nothing when it cannot be reached; $1 is GET or POST.
http() {
    "$PY" - "$@" <<'EOF'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        print(response.read().decode())
except urllib.error.HTTPError as error:
    print(error.read().decode())
except OSError:
    pass
EOF
}
READY=0
for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        wait "$SERVER_PID"
        abort "engine serve exited with code $? before it was ready"
    fi
    case "$(http GET "$URL/readyz")" in *'"ready":true'*|*'"ready": true'*) READY=1; break ;; esac
    sleep 1
done
[ "$READY" = 1 ] || abort "engine serve was not ready after 300 s"
pass "engine serve ready on $URL within $((SECONDS - SERVE_STARTED + 1)) s"

ANSWER="$(http POST "$URL/$API" "$(cat "$PROJECT/sample.json")")"
if [ "$ANSWER" = setosa ]; then pass "POST /$API answered: $ANSWER"; else fail "POST /$API answered '$ANSWER', not setosa"; fi

SUMMARY="$(http GET "$URL/$API")"
FIRST_PROVIDER="$("$PY" - "$SUMMARY" <<'EOF'
import json, sys
def providers(node):
    if isinstance(node, dict):
        if isinstance(node.get("providers"), list):
            yield node["providers"]
        for value in node.values():
            yield from providers(value)
try:
    found = list(providers(json.loads(sys.argv[1]).get("model_metadata") or {}))
except ValueError:
    found = []
print(found[0][0] if found and found[0] else "none", found or repr(sys.argv[1][:200]))
EOF
)"
if [ "${FIRST_PROVIDER%% *}" = CUDAExecutionProvider ]; then
    pass "the model's onnxruntime session runs on CUDAExecutionProvider (GET summary: ${FIRST_PROVIDER#* })"
else
    fail "the model's onnxruntime session does not use CUDAExecutionProvider (GET summary: ${FIRST_PROVIDER#* })"
fi
if grep -q "GPU [0-9]*: .*(CUDA_VISIBLE_DEVICES=" "$LOG"; then
    pass "the cuda plugin set up the process: $(grep -o "GPU [0-9]*: .*(CUDA_VISIBLE_DEVICES=[^)]*)" "$LOG" | head -n 1)"
else
    fail "no 'GPU N: ... (CUDA_VISIBLE_DEVICES=...)' line from the cuda plugin in the server log"
fi
if grep -q "without CUDA support\|is not available in this onnxruntime build" "$LOG"; then
    fail "the server warned that onnxruntime lacks CUDA: $(grep -m 1 "without CUDA support\|is not available in" "$LOG")"
fi

# Evidence from the driver: the server's process on the GPU (hidden inside some containers) and the memory it took.
APPS="$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null)"
if printf '%s\n' "$APPS" | grep -q "^$SERVER_PID,"; then
    info "nvidia-smi shows the server on the GPU: $(printf '%s\n' "$APPS" | grep "^$SERVER_PID,")"
else
    info "nvidia-smi does not list the server's pid $SERVER_PID (normal inside a container): ${APPS:-no processes}"
fi
MEMORY_AFTER="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | tr -d ' ')"
if [ -n "$MEMORY_BEFORE" ] && [ -n "$MEMORY_AFTER" ]; then
    info "GPU 0 memory used: ${MEMORY_BEFORE} MiB before serving, ${MEMORY_AFTER} MiB while serving"
fi
# Which nodes of the model CUDA runs: the iris model's ai.onnx.ml operators have no CUDA kernels, so onnxruntime
# places them on the CPU inside the CUDA session; a model of standard operators (MatMul, Add, ...) runs on the GPU.
PLACEMENT="$("$PY" - "$PROJECT/model/model.onnx" <<'EOF' 2>&1 | grep -i "placed on\|node placements" | head -n 5
import onnxruntime as ort, sys
options = ort.SessionOptions()
options.log_severity_level = 0
ort.InferenceSession(sys.argv[1], options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
EOF
)"
info "onnxruntime node placement for the iris model: ${PLACEMENT:-not reported by this onnxruntime version}"

summary
exit "$FAILED"
