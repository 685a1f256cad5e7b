#!/usr/bin/env bash
# Real audio devices without audio hardware: a PulseAudio daemon with a null sink whose monitor is the default
# source, so whatever slowcat plays can be recorded back. ALSA's `default` device routes to PulseAudio while a
# daemon runs (Debian's pulseaudio package installs that hook), so cpal's ALSA host works unchanged.
set -euo pipefail

CACHE="${SLOWCAT_CACHE:-$HOME/.cache/slowcat}"
SINK=slowcat_null
SOURCE="$SINK.monitor"
# Present while the daemon running is one this script started, so 'stop' never kills somebody else's daemon.
STARTED_MARKER="$CACHE/pulse-started-by-slowcat"
# A client config that forbids autospawn, for probing: on non-root desktops a bare `pactl info` would otherwise
# autospawn a daemon that exits after 20 s idle, not the one we want.
PROBE_CONF="$CACHE/pulse-client-probe.conf"
START_TIMEOUT=10

usage() {
    cat <<EOF
Usage: scripts/pulse.sh COMMAND

Audio devices without hardware, through PulseAudio.

Commands:
  start    start a PulseAudio daemon if none answers (pulseaudio --start --exit-idle-time=-1; fine as root,
           which only prints a warning), load the null sink "$SINK" if it is not loaded, make it the default
           sink and "$SOURCE" the default source (what is played can be recorded back),
           and print the server address as:  export PULSE_SERVER=unix:/path/to/native
           All other output goes to stderr, so  eval "\$(scripts/pulse.sh start)"  sets PULSE_SERVER.
  env      print  export PULSE_SERVER=...  for the running daemon (fails when none runs)
  stop     unload "$SINK" and kill the daemon with pulseaudio --kill if this script started it
           (a daemon somebody else runs is left alone); no error when nothing runs
  status   print the daemon, default sink/source and whether "$SINK" is loaded;
           exit 0 when running with "$SINK" as the defaults, 3 otherwise
  test     start, then play a 440 Hz tone through ALSA's default device while recording ALSA's default
           device, and check with sox that the recording holds the tone; exit 1 if not

Notes:
  Capture through ALSA -> PulseAudio delivers nothing for the first 0.5-2.2 s of a stream: wait for the first
  captured data before playing a test signal ('test' does).
  cpal's native PulseAudio host needs PULSE_SERVER when XDG_RUNTIME_DIR is unset.

Environment:
  SLOWCAT_CACHE   cache directory (default \$HOME/.cache/slowcat), holds the "started by us" marker
EOF
}

log() { echo "pulse: $*" >&2; }
die() { echo "pulse: error: $*" >&2; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found; run scripts/setup-system.sh (installs $2)"
}

pactl_probe() {
    PULSE_CLIENTCONFIG="$PROBE_CONF" pactl "$@"
}

write_probe_conf() {
    mkdir -p "$CACHE"
    [ -f "$PROBE_CONF" ] || printf 'autospawn = no\n' >"$PROBE_CONF"
}

daemon_answers() {
    pactl_probe info >/dev/null 2>&1
}

info_field() {
    # "Default Sink: slowcat_null" -> slowcat_null
    pactl_probe info 2>/dev/null | sed -n "s/^$1: //p" | head -n1
}

pulse_server() {
    local s
    s="$(info_field 'Server String')"
    [ -n "$s" ] || return 1
    case "$s" in
        /*) echo "unix:$s" ;;
        *) echo "$s" ;;
    esac
}

sink_loaded() {
    pactl_probe list short sinks 2>/dev/null | awk -v s="$SINK" '$2 == s { found = 1 } END { exit !found }'
}

print_env() {
    local server
    server="$(pulse_server)" || die "could not read the server address from pactl info"
    echo "export PULSE_SERVER=$server"
}

do_start() {
    need pactl pulseaudio-utils
    need pulseaudio pulseaudio
    write_probe_conf
    if daemon_answers; then
        log "a PulseAudio daemon already answers ($(info_field 'Server Name') $(info_field 'Server Version'))"
    else
        if [ "$(id -u)" -eq 0 ]; then
            log "starting PulseAudio as root (it warns that it is not meant to run as root; that is fine here)"
        else
            log "starting PulseAudio"
        fi
        local err
        if ! err="$(pulseaudio --start --exit-idle-time=-1 2>&1)"; then
            die "pulseaudio --start failed: ${err:-no message}. Try 'pulseaudio -vvv --exit-idle-time=-1' to see why"
        fi
        local waited=0
        until daemon_answers; do
            [ "$waited" -lt $((START_TIMEOUT * 10)) ] || die "pulseaudio started but pactl info gets no answer after ${START_TIMEOUT}s"
            sleep 0.1
            waited=$((waited + 1))
        done
        touch "$STARTED_MARKER"
        log "daemon started"
    fi

    if sink_loaded; then
        log "null sink $SINK already loaded"
    else
        pactl_probe load-module module-null-sink "sink_name=$SINK" "sink_properties=device.description=$SINK" >/dev/null \
            || die "could not load module-null-sink sink_name=$SINK"
        log "loaded null sink $SINK"
    fi
    pactl_probe set-default-sink "$SINK" || die "could not make $SINK the default sink"
    pactl_probe set-default-source "$SOURCE" || die "could not make $SOURCE the default source"
    log "default sink: $(info_field 'Default Sink'), default source: $(info_field 'Default Source')"
    print_env
}

do_stop() {
    need pactl pulseaudio-utils
    write_probe_conf
    if ! daemon_answers; then
        rm -f "$STARTED_MARKER"
        log "not running"
        return 0
    fi
    local ids
    ids="$(pactl_probe list short modules 2>/dev/null \
        | awk -v a="sink_name=$SINK" '$2 == "module-null-sink" && index($0, a) { print $1 }')"
    local id
    for id in $ids; do
        pactl_probe unload-module "$id" 2>/dev/null || true
    done
    [ -z "$ids" ] || log "unloaded null sink $SINK"

    if [ ! -f "$STARTED_MARKER" ]; then
        log "the running daemon was not started by this script; leaving it running"
        return 0
    fi
    need pulseaudio pulseaudio
    pulseaudio --kill 2>/dev/null || true
    local waited=0
    while daemon_answers; do
        [ "$waited" -lt $((START_TIMEOUT * 10)) ] || die "the daemon still answers ${START_TIMEOUT}s after pulseaudio --kill"
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$STARTED_MARKER"
    log "daemon stopped"
}

do_status() {
    need pactl pulseaudio-utils
    write_probe_conf
    if ! daemon_answers; then
        echo "not running"
        return 3
    fi
    local sink source server loaded=no
    sink="$(info_field 'Default Sink')"
    source="$(info_field 'Default Source')"
    server="$(pulse_server || echo unknown)"
    sink_loaded && loaded=yes
    echo "running: PULSE_SERVER=$server"
    echo "default sink: $sink"
    echo "default source: $source"
    echo "$SINK loaded: $loaded"
    [ "$sink" = "$SINK" ] && [ "$source" = "$SOURCE" ] || return 3
}

do_test() {
    need sox sox
    need aplay alsa-utils
    need arecord alsa-utils
    do_start >/dev/null
    local dir
    dir="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$dir'" EXIT
    sox -n -r 16000 -c 1 -b 16 "$dir/tone.wav" synth 1 sine 440 vol 0.5

    # Record 2 s of captured data from ALSA's default device (-> PulseAudio -> $SOURCE).
    arecord -q -D default -f S16_LE -r 16000 -c 1 -d 2 "$dir/rec.wav" 2>"$dir/arecord.err" &
    local rec=$! waited=0
    # Capture delivers nothing for a while after the stream starts; play only once data flows.
    while [ ! -f "$dir/rec.wav" ] || [ "$(wc -c <"$dir/rec.wav")" -le 44 ]; do
        if ! kill -0 "$rec" 2>/dev/null; then
            die "arecord -D default failed: $(cat "$dir/arecord.err")"
        fi
        [ "$waited" -lt 100 ] || { kill "$rec" 2>/dev/null; die "no captured data from ALSA's default device after 5s"; }
        sleep 0.05
        waited=$((waited + 1))
    done
    log "capture started after $((waited * 50)) ms; playing a 1 s 440 Hz tone through ALSA's default device"
    aplay -q -D default "$dir/tone.wav" || die "aplay -D default failed"
    wait "$rec" || die "arecord failed: $(cat "$dir/arecord.err")"

    local stats rms freq
    stats="$(sox "$dir/rec.wav" -n stat 2>&1)"
    rms="$(printf '%s\n' "$stats" | awk '/^RMS +amplitude/ { print $3 }')"
    freq="$(printf '%s\n' "$stats" | awk '/^Rough +frequency/ { print $3 }')"
    log "recording: RMS amplitude $rms, rough frequency ${freq} Hz"
    awk -v r="$rms" 'BEGIN { exit !(r > 0.05) }' \
        || die "the recording is (nearly) silent: RMS $rms. Check 'scripts/pulse.sh status' and 'aplay -L'"
    awk -v f="$freq" 'BEGIN { exit !(f > 400 && f < 480) }' \
        || die "the recording does not look like the 440 Hz tone (rough frequency $freq Hz)"
    echo "ok: played 440 Hz through ALSA default, recorded it back (RMS $rms, ~$freq Hz)"
}

[ $# -eq 1 ] || { usage >&2; exit 2; }
case "$1" in
    -h|--help|help) usage ;;
    start) do_start ;;
    env) need pactl pulseaudio-utils; write_probe_conf; daemon_answers || die "no PulseAudio daemon answers; run scripts/pulse.sh start"; print_env ;;
    stop) do_stop ;;
    status) do_status ;;
    test) do_test ;;
    *) echo "pulse: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
