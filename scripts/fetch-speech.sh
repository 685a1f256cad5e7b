#!/usr/bin/env bash
# Fetch a small set of REAL human speech recordings (no TTS) for tests and
# benchmarks, taken out of packages on the package registries only:
#
#   - Debian package pocketsphinx-testdata (apt-get download + dpkg-deb -x,
#     no root needed, nothing installed system-wide)
#   - PyPI wheel pyannote.audio (pip download, the wheel is only unpacked)
#
#   scripts/fetch-speech.sh           # fetch / verify the whole set
#   scripts/fetch-speech.sh --list    # what there is and what is present
#   scripts/fetch-speech.sh --help
#
# tests/speech/manifest.tsv says, for each utterance, which package and member
# it comes from, the cut (start/end seconds) if any, speaker, category,
# transcript and the sha256 of the final WAV. Every utterance is converted with
# sox to 16 kHz mono signed 16-bit WAV into $CACHE/speech/<name>.wav, written
# under a temporary name and renamed only once its sha256 matches, so an
# interrupted run never leaves a truncated file under its real name.
# Downloaded packages are kept in $CACHE/speech-src; when every WAV is already
# present and verified the script downloads nothing and exits at once.
#
# Environment: SLOWCAT_CACHE (cache dir, default ~/.cache/slowcat), PYTHON
# (python3 with pip; default python3). Needs sox (scripts/setup-system.sh
# installs it). Works with bash 3.2 (macOS) and newer.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
MANIFEST=$REPO_DIR/tests/speech/manifest.tsv
CACHE=${SLOWCAT_CACHE:-$HOME/.cache/slowcat}
SRC=$CACHE/speech-src
OUT=$CACHE/speech
PYTHON=${PYTHON:-python3}

usage() {
    cat <<EOF
Usage: scripts/fetch-speech.sh [--list | --help]

Fetches the real-human speech test set listed in tests/speech/manifest.tsv
(see tests/speech/README.md) into:
  $OUT/<name>.wav      (16 kHz, mono, s16 WAV, sha256-checked)
Source packages are kept in:
  $SRC

  --list   list the utterances (name, category, seconds, transcript) and
           whether each is present and verified; downloads nothing
  --help   this text

Sources: Debian package pocketsphinx-testdata (apt-get download, no root
needed) and the PyPI wheel pyannote.audio (pip download). Needs sox, and
python3 with pip for the wheel. Set SLOWCAT_CACHE to use another cache dir.
EOF
}

MODE=fetch
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -l|--list) MODE=list ;;
        *) echo "fetch-speech: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

die() { echo "fetch-speech: error: $*" >&2; exit 1; }
say() { echo "fetch-speech: $*"; }

[ -f "$MANIFEST" ] || die "manifest not found: $MANIFEST (run this script from a slowcat checkout)"

if command -v sha256sum >/dev/null 2>&1; then
    SHA="sha256sum"
elif command -v shasum >/dev/null 2>&1; then
    SHA="shasum -a 256"
else
    die "neither sha256sum nor shasum found (install coreutils)"
fi

# ---- read the manifest (bash 3.2: indexed arrays only) -----------------------
# Tabs are turned into \037 first: with a non-whitespace IFS, empty fields
# (no start / no end) are kept instead of collapsed.
N=0
US=$(printf '\037')
while IFS="$US" read -r name source member start end speaker category sha dur text; do
    case "$name" in ''|'#'*|name) continue ;; esac
    NAMES[$N]=$name; SOURCES[$N]=$source; MEMBERS[$N]=$member
    STARTS[$N]=$start; ENDS[$N]=$end; SHAS[$N]=$sha
    CATS[$N]=$category; DURS[$N]=$dur; TEXTS[$N]=$text
    N=$((N + 1))
done < <(tr '\t' "$US" < "$MANIFEST")
[ "$N" -gt 0 ] || die "no utterances in $MANIFEST"

# ---- which WAVs are present and good (one sha256 call for all) ---------------
STATUS=()   # ok | missing | bad
sums=""
present=()
i=0
while [ $i -lt $N ]; do
    STATUS[$i]=missing
    [ -f "$OUT/${NAMES[$i]}.wav" ] && present[${#present[@]}]="$OUT/${NAMES[$i]}.wav"
    i=$((i + 1))
done
if [ ${#present[@]} -gt 0 ]; then
    sums=$($SHA "${present[@]}")
fi
NEED=0
i=0
while [ $i -lt $N ]; do
    f="$OUT/${NAMES[$i]}.wav"
    if [ -f "$f" ]; then
        got=$(printf '%s\n' "$sums" | while read -r h p; do [ "${p#\*}" = "$f" ] && { echo "$h"; break; }; done)
        if [ "$got" = "${SHAS[$i]}" ]; then STATUS[$i]=ok; else STATUS[$i]=bad; fi
    fi
    [ "${STATUS[$i]}" = ok ] || NEED=$((NEED + 1))
    i=$((i + 1))
done

if [ "$MODE" = list ]; then
    printf '%-20s %-8s %6s  %-8s %s\n' NAME CATEGORY SECONDS STATUS TRANSCRIPT
    i=0
    while [ $i -lt $N ]; do
        printf '%-20s %-8s %6s  %-8s %s\n' "${NAMES[$i]}" "${CATS[$i]}" "${DURS[$i]}" "${STATUS[$i]}" "${TEXTS[$i]}"
        i=$((i + 1))
    done
    echo "$((N - NEED))/$N present and verified in $OUT"
    exit 0
fi

if [ "$NEED" -eq 0 ]; then
    say "all $N utterances present and verified"
    say "speech set: $OUT"
    exit 0
fi

command -v sox >/dev/null 2>&1 ||
    die "sox not found: run scripts/setup-system.sh (or: apt-get install sox / brew install sox)"

mkdir -p "$SRC" "$OUT"
TMPS=()
cleanup() {
    local t
    for t in ${TMPS[@]+"${TMPS[@]}"}; do rm -rf "$t"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- sources -----------------------------------------------------------------
# Each source is unpacked once into $SRC/<pkg>-<version>/ (renamed into place
# when complete); the downloaded package file stays in $SRC.

debian_extract() { # deb dest
    local deb=$1 dest=$2 tmp
    tmp="$dest.tmp.$$"; TMPS[${#TMPS[@]}]=$tmp
    rm -rf "$tmp"; mkdir -p "$tmp"
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb could not unpack $deb: delete it and run again"
    else
        # No dpkg (e.g. macOS): a .deb is an ar archive holding data.tar.*
        command -v ar >/dev/null 2>&1 || die "need dpkg-deb or ar to unpack $deb"
        (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary) ||
            die "could not unpack $deb: delete it and run again"
    fi
    mv "$tmp" "$dest"
}

source_debian() { # pkg version -> sets ROOT
    local pkg=$1 ver=$2 dest deb inst dl
    dest="$SRC/$pkg-$ver"
    if [ -d "$dest" ]; then ROOT=$dest; return; fi
    # Installed already at this exact version? Then use the system copy.
    if command -v dpkg-query >/dev/null 2>&1; then
        inst=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
        if [ "$inst" = "install ok installed $ver" ]; then
            say "using installed Debian package $pkg $ver"
            ROOT=/; return
        fi
    fi
    deb="$SRC/${pkg}_${ver}_all.deb"
    if [ ! -f "$deb" ]; then
        command -v apt-get >/dev/null 2>&1 ||
            die "apt-get not found: $pkg $ver comes from Debian; on another system copy ${pkg}_${ver}_all.deb into $SRC"
        say "downloading Debian package $pkg=$ver"
        dl="$SRC/apt.tmp.$$"; TMPS[${#TMPS[@]}]=$dl
        rm -rf "$dl"; mkdir -p "$dl"
        # -o APT::Sandbox::User=root only avoids a harmless warning when root.
        if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$pkg=$ver" >&2); then
            if [ "$(id -u)" = 0 ]; then
                say "refreshing the package lists (apt-get update) and trying again"
                apt-get update -q >&2 || die "apt-get update failed: check the Debian mirror settings"
                (cd "$dl" && apt-get download -q "$pkg=$ver" >&2) ||
                    die "apt-get download $pkg=$ver failed even after apt-get update: is version $ver still in the archive? If not, update tests/speech/manifest.tsv"
            else
                die "apt-get download $pkg=$ver failed: run 'sudo apt-get update' once and try again (the package lists may be missing or old)"
            fi
        fi
        mv "$dl"/*.deb "$deb" 2>/dev/null || die "apt-get download left no .deb in $dl"
        rm -rf "$dl"
    fi
    say "unpacking $(basename "$deb")"
    debian_extract "$deb" "$dest"
    ROOT=$dest
}

source_pypi() { # dist version -> sets ROOT
    local dist=$1 ver=$2 dest whl dl
    dest="$SRC/$dist-$ver"
    if [ -d "$dest" ]; then ROOT=$dest; return; fi
    whl=$(ls "$SRC"/*.whl 2>/dev/null | grep -i "/$(echo "$dist" | tr '.-' '__')-$ver-" | head -n 1 || true)
    if [ -z "$whl" ]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: python3 with pip is needed to download $dist==$ver (set PYTHON=...)"
        say "downloading PyPI wheel $dist==$ver"
        dl="$SRC/pip.tmp.$$"; TMPS[${#TMPS[@]}]=$dl
        rm -rf "$dl"; mkdir -p "$dl"
        "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
            --dest "$dl" "$dist==$ver" >&2 ||
            die "pip download $dist==$ver failed: check PyPI access (pip's PIP_INDEX_URL / proxy settings) and that '$PYTHON -m pip' works"
        whl=$(ls "$dl"/*.whl 2>/dev/null | head -n 1 || true)
        [ -n "$whl" ] || die "pip download left no wheel in $dl"
        mv "$whl" "$SRC/" && whl="$SRC/$(basename "$whl")"
        rm -rf "$dl"
    fi
    say "unpacking $(basename "$whl")"
    local tmp="$dest.tmp.$$"; TMPS[${#TMPS[@]}]=$tmp
    rm -rf "$tmp"; mkdir -p "$tmp"
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$tmp" ||
        die "could not unpack $whl: delete it and run again"
    mv "$tmp" "$dest"
    ROOT=$dest
}

# Source roots, resolved once per source (bash 3.2: parallel arrays, no maps).
ROOT_KEYS=()
ROOT_DIRS=()
source_root() { # "debian:pkg==ver" | "pypi:dist==ver" -> sets ROOT
    local key=$1 k=0 kind spec pkg ver
    while [ $k -lt ${#ROOT_KEYS[@]} ]; do
        if [ "${ROOT_KEYS[$k]}" = "$key" ]; then ROOT=${ROOT_DIRS[$k]}; return; fi
        k=$((k + 1))
    done
    kind=${key%%:*}; spec=${key#*:}; pkg=${spec%%==*}; ver=${spec#*==}
    case "$kind" in
        debian) source_debian "$pkg" "$ver" ;;
        pypi)   source_pypi "$pkg" "$ver" ;;
        *) die "unknown source kind '$kind' in $MANIFEST" ;;
    esac
    ROOT_KEYS[${#ROOT_KEYS[@]}]=$key
    ROOT_DIRS[${#ROOT_DIRS[@]}]=$ROOT
}

# ---- convert -----------------------------------------------------------------
say "$NEED of $N utterances to make in $OUT"
FAILED=0
i=0
while [ $i -lt $N ]; do
    if [ "${STATUS[$i]}" = ok ]; then i=$((i + 1)); continue; fi
    name=${NAMES[$i]}
    source_root "${SOURCES[$i]}"
    in="${ROOT%/}/${MEMBERS[$i]}"
    [ -f "$in" ] || die "${MEMBERS[$i]} is missing from ${SOURCES[$i]} (unpacked in $ROOT): delete that directory and run again"
    case "$in" in
        *.raw) inopts="-t raw -r 16000 -e signed-integer -b 16 -c 1 -L" ;;
        *) inopts="" ;;
    esac
    trim=""
    if [ -n "${STARTS[$i]}" ] || [ -n "${ENDS[$i]}" ]; then
        trim="trim ${STARTS[$i]:-0}"
        [ -z "${ENDS[$i]}" ] || trim="$trim =${ENDS[$i]}"
    fi
    tmp="$OUT/.$name.wav.tmp.$$"; TMPS[${#TMPS[@]}]=$tmp
    # shellcheck disable=SC2086  # inopts / trim are word lists on purpose
    sox -q -D $inopts "$in" -t wav -r 16000 -c 1 -b 16 -e signed-integer "$tmp" $trim ||
        die "sox failed on $in (for $name)"
    got=$($SHA "$tmp" | cut -d' ' -f1)
    if [ "$got" = "${SHAS[$i]}" ]; then
        mv -f "$tmp" "$OUT/$name.wav"
        say "ok   $name (${DURS[$i]} s) ${TEXTS[$i]}"
    else
        rm -f "$tmp"
        echo "fetch-speech: FAIL $name: sha256 $got, manifest says ${SHAS[$i]}" >&2
        FAILED=$((FAILED + 1))
    fi
    i=$((i + 1))
done

if [ "$FAILED" -gt 0 ]; then
    die "$FAILED utterance(s) did not match tests/speech/manifest.tsv. The source package in $SRC may be damaged (delete $SRC and run again) or your sox converts differently (check 'sox --version'; the manifest was made with sox 14.4.2)"
fi
say "all $N utterances present and verified"
say "speech set: $OUT"
