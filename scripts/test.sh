#!/usr/bin/env bash
# Installs what the tests need (system packages, models, the local LLM server, a PulseAudio null sink) and runs
# every test: unit tests, processor tests with real models, and end-to-end tests of the binary.
# Idempotent: a second run only rebuilds what changed. Caches live in $SLOWCAT_CACHE (default ~/.cache/slowcat).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help)
    cat <<'USAGE'
Usage: scripts/test.sh [CARGO TEST ARGS...]

Sets up everything the tests use, then runs `cargo test --workspace` (extra arguments are passed on,
e.g. `scripts/test.sh memory` runs only tests whose name contains "memory"). The lint step (cargo fmt
--check, cargo clippy) runs first, so a formatting slip fails in seconds; each step prints its time.

Environment:
  SLOWCAT_CACHE         cache directory (default ~/.cache/slowcat): models, LLM server, build directory
  SLOWCAT_TEST_PORT     port of the test LLM server (default 18089); the tool tests serve Qwen on the next one
  SLOWCAT_SKIP_LINT=1   skip the fmt/clippy checks (they are also skipped when test arguments are given)
USAGE
    exit 0
    ;;
esac

export SLOWCAT_CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
export SLOWCAT_MODELS_DIR="${SLOWCAT_MODELS_DIR:-$PWD/models}"
port="${SLOWCAT_TEST_PORT:-18089}"
# shellcheck source=lib/steps.sh
. scripts/lib/steps.sh
# shellcheck source=lib/cpu.sh
. scripts/lib/cpu.sh

started_llm=0
cleanup() {
    local rc=$? failed_in="$STEP_NAME"
    if [ "$started_llm" = 1 ]; then scripts/llm-server.sh stop --port "$port" >/dev/null 2>&1 || true; fi
    step_done
    if [ "$rc" != 0 ]; then
        printf '\n== scripts/test.sh failed in step "%s" after %ds (exit %d); the reason is above\n' \
            "${failed_in:-?}" $((SECONDS - SETUP_START)) "$rc" >&2
    fi
}
trap cleanup EXIT

step "system packages"
scripts/setup-system.sh
if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup (https://rustup.rs) and run again" >&2; exit 1; }
# Native code (whisper.cpp) is built for this CPU's portable level, never -march=native; builds are cached per level.
slowcat_build_env
echo "native code built for $SLOWCAT_CPU_LEVEL ($(slowcat_ggml_options "$SLOWCAT_CPU_LEVEL")); build directory $CARGO_TARGET_DIR"

if [ "${SLOWCAT_SKIP_LINT:-0}" != 1 ] && [ $# -eq 0 ]; then
    step "lint (cargo fmt --check, cargo clippy)"
    cargo fmt --all --check || { echo "cargo fmt found unformatted code: run 'cargo fmt --all'" >&2; exit 1; }
    cargo clippy --workspace --all-targets -- -D warnings
fi

step "models"
# whisper-base too: the tests check the multilingual model detects the language. --all also fetches
# Qwen2.5-Coder-0.5B, the model that calls tools: tests/tools_qwen.rs serves it on its own port (below).
scripts/fetch-models.sh --all

step "local LLM server (llama.cpp + SmolLM2-135M) on port $port"
if ! scripts/llm-server.sh status --port "$port" >/dev/null 2>&1; then
    started_llm=1
    # At the default nice 10 the server yields to the assistant; here the test binaries run many pipelines at once
    # beside it and would starve it (replies taking over a minute), so it runs at their priority.
    scripts/llm-server.sh start --port "$port" --nice 0
fi
export SLOWCAT_LLM_URL
SLOWCAT_LLM_URL="$(scripts/llm-server.sh url --port "$port")"
# The tool tests start and stop their own Qwen server, on the next port.
export SLOWCAT_QWEN_TEST_PORT="${SLOWCAT_QWEN_TEST_PORT:-$((port + 1))}"

step "audio devices (PulseAudio null sink)"
eval "$(scripts/pulse.sh start)"

step "build"
cargo build --workspace --all-targets

step "tests"
cargo test --workspace --no-fail-fast "$@"
