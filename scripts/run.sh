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
a local llama.cpp server with a small model is started on port 8089 and used instead; it is said so.

Environment:
  SLOWCAT_CACHE      cache directory (default ~/.cache/slowcat): models, LLM venv, build directory
  SLOWCAT_NO_LOCAL_LLM=1   never start the local LLM server
USAGE
    exit 0
    ;;
esac

export SLOWCAT_CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLOWCAT_CACHE/target}"

scripts/setup-system.sh >&2
if ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup (https://rustup.rs) and run again" >&2; exit 1; }
scripts/fetch-models.sh >&2
echo "building slowcat (release; the first build takes several minutes)..." >&2
cargo build --release --bin slowcat >&2
bin="$CARGO_TARGET_DIR/release/slowcat"

# A machine with no sound card (a server, CI) gets a virtual one so the assistant can still start.
if ! aplay -l 2>/dev/null | grep -q '^card' && ! pactl info >/dev/null 2>&1; then
    echo "no sound card found: starting a PulseAudio null sink (scripts/pulse.sh) so slowcat can run" >&2
    eval "$(scripts/pulse.sh start)"
fi

# Make sure an LLM answers; fall back to the local llama.cpp server.
extra=()
if ! "$bin" check --llm "$@" >&2; then
    status=$?
    if [ "$status" = 3 ] && [ "${SLOWCAT_NO_LOCAL_LLM:-0}" != 1 ]; then
        echo "no LLM answers at the configured base_url: starting the local llama.cpp server (scripts/llm-server.sh)" >&2
        scripts/llm-server.sh start >&2
        extra=(--llm-url "$(scripts/llm-server.sh url)")
    else
        exit "$status"
    fi
fi
exec "$bin" run "${extra[@]}" "$@"
