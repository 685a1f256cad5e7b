#!/usr/bin/env bash
# Installs what is missing and runs the assistant on config.toml (or the config given with --config).
# Idempotent: a second run starts in seconds. Caches live in $SLOWCAT_CACHE (default ~/.cache/slowcat).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help)
    cat <<'USAGE'
Usage: scripts/run.sh [SLOWCAT RUN OPTIONS...]

Installs system packages, fetches the models and builds slowcat (release) when needed, makes sure an LLM
answers, then runs `slowcat run` with the options given (see `slowcat run --help`), for example:

  scripts/run.sh                                   # the assistant on config.toml: microphone to speaker
  scripts/run.sh --input question.wav --output answer.wav   # one replayable turn from a WAV file
  scripts/run.sh --config my.toml --set processors.llm.temperature=0.2

If nothing answers at the LLM base_url of the config (LM Studio's http://localhost:1234/v1 by default),
a local llama.cpp server with a small model is started (scripts/llm-server.sh, port 8089) and used
instead; it is said so. It keeps running after slowcat exits, so the next start is fast; stop it with
scripts/llm-server.sh stop.

Environment:
  SLOWCAT_CACHE            cache directory (default ~/.cache/slowcat): models, LLM server, build directory
  SLOWCAT_NO_LOCAL_LLM=1   never start the local LLM server
  SLOWCAT_LLM_PORT         port of the local LLM server (default 8089)
  SLOWCAT_PROFILE=dev      build and run the debug binary instead of the release one (the tests do)
USAGE
    exit 0
    ;;
esac

export SLOWCAT_CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
# Set-up progress goes to stderr, so the assistant's own output stays apart.
STEP_OUT=2
# shellcheck source=lib/steps.sh
. scripts/lib/steps.sh
# shellcheck source=lib/cpu.sh
. scripts/lib/cpu.sh

step "system packages"
scripts/setup-system.sh >&2
if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup (https://rustup.rs) and run again" >&2; exit 1; }
slowcat_build_env

step "models"
scripts/fetch-models.sh >&2

case "${SLOWCAT_PROFILE:-release}" in
release)
    step "build (release, for $SLOWCAT_CPU_LEVEL; the first build takes several minutes)"
    cargo build --release --bin slowcat >&2
    bin="$CARGO_TARGET_DIR/release/slowcat"
    ;;
dev)
    step "build (debug, for $SLOWCAT_CPU_LEVEL)"
    cargo build --bin slowcat >&2
    bin="$CARGO_TARGET_DIR/debug/slowcat"
    ;;
*) echo "SLOWCAT_PROFILE must be release or dev, got '$SLOWCAT_PROFILE'" >&2; exit 2 ;;
esac

# A machine with no sound card (a server, CI) gets a virtual one so the assistant can still start.
if ! aplay -l 2>/dev/null | grep -q '^card' && ! pactl info >/dev/null 2>&1; then
    step "audio devices"
    echo "no sound card found: starting a PulseAudio null sink (scripts/pulse.sh) so slowcat can run" >&2
    eval "$(scripts/pulse.sh start)"
fi

# Make sure an LLM answers; fall back to the local llama.cpp server.
step "LLM"
extra=()
status=0
"$bin" check --llm "$@" >&2 || status=$?
if [ "$status" != 0 ]; then
    if [ "$status" = 3 ] && [ "${SLOWCAT_NO_LOCAL_LLM:-0}" != 1 ]; then
        echo "no LLM answers at the configured base_url: using the local llama.cpp server (scripts/llm-server.sh)" >&2
        scripts/llm-server.sh start >&2
        extra=(--llm-url "$(scripts/llm-server.sh url)")
    elif [ "$status" = 3 ]; then
        echo "no LLM answers at the configured base_url, and SLOWCAT_NO_LOCAL_LLM=1: start LM Studio (or another server) first" >&2
        exit "$status"
    else
        exit "$status"
    fi
fi
step_done
exec "$bin" run ${extra[@]+"${extra[@]}"} "$@"
