# shellcheck shell=bash
# Sourced by the set-up scripts: which instruction-set level this CPU has, and the whisper.cpp / llama.cpp build
# flags for it. Native parts are never built with -march=native: a cache built on one machine may later run on
# another CPU (a VM moved to another host, a shared home directory), and some VMs advertise instructions that trap
# (AMX). Instead each part is built for the highest portable level this CPU has, and cached under that level's name,
# so a CPU of another level never runs it.

# The CPU's feature flags, space-separated, lower case (Linux: /proc/cpuinfo; macOS: sysctl).
slowcat_cpu_flags() {
    if [ -r /proc/cpuinfo ]; then
        grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo | sed 's/^[^:]*:[[:space:]]*//' | tr 'A-Z' 'a-z'
    elif command -v sysctl >/dev/null 2>&1; then
        # macOS x86_64 spells them AVX1.0, SSE4.2, FMA, F16C (machdep.cpu.leaf7_features holds AVX2 and BMI2).
        sysctl -n machdep.cpu.features machdep.cpu.leaf7_features 2>/dev/null | tr 'A-Z' 'a-z' | tr '\n' ' ' \
            | sed 's/avx1\.0/avx/g; s/sse4\.2/sse4_2/g; s/sse4\.1/sse4_1/g'
    fi
}

# slowcat_has_flags FLAG...: true when the CPU has every flag.
slowcat_has_flags() {
    local flags f
    flags=" $(slowcat_cpu_flags) "
    for f in "$@"; do
        case "$flags" in *" $f "*) ;; *) return 1 ;; esac
    done
}

# The level to build native code for: x86-64-v3 (AVX2, FMA, F16C, BMI2: most x86 CPUs since 2013-2015),
# x86-64-v2 (SSE4.2, POPCNT), x86-64 (baseline), or the machine name elsewhere (arm64: whisper.cpp's portable
# defaults, which every Apple and ARMv8 CPU runs).
slowcat_cpu_level() {
    case "$(uname -m)" in
        x86_64 | amd64)
            if slowcat_has_flags avx avx2 fma f16c bmi2; then
                echo x86-64-v3
            elif slowcat_has_flags sse4_2 popcnt ssse3; then
                echo x86-64-v2
            else
                echo x86-64
            fi
            ;;
        *) uname -m ;;
    esac
}

# ggml's CMake options for a level (ggml is whisper.cpp's and llama.cpp's tensor library): never native.
slowcat_ggml_options() { # LEVEL
    case "$1" in
        x86-64-v3) echo "GGML_NATIVE=OFF GGML_SSE42=ON GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON GGML_BMI2=ON" ;;
        x86-64-v2) echo "GGML_NATIVE=OFF GGML_SSE42=ON GGML_AVX=OFF GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF GGML_BMI2=OFF" ;;
        x86-64) echo "GGML_NATIVE=OFF GGML_SSE42=OFF GGML_AVX=OFF GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF GGML_BMI2=OFF" ;;
        *) echo "GGML_NATIVE=OFF" ;;
    esac
}

# Exports the ggml options for whisper-rs (whisper-rs-sys hands every GGML_* variable to whisper.cpp's CMake) and
# a cargo target directory of that level under $SLOWCAT_CACHE, unless the caller chose CARGO_TARGET_DIR.
# whisper-rs-sys does not rebuild when these variables change, so each level (and each change of this flag set:
# bump the suffix) gets its own directory.
slowcat_build_env() {
    local level opt
    level="$(slowcat_cpu_level)"
    for opt in $(slowcat_ggml_options "$level"); do
        export "${opt?}"
    done
    export SLOWCAT_CPU_LEVEL="$level"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$SLOWCAT_CACHE/target-$level}"
    # Builds of earlier versions of these scripts were native (-march=native) and lived in $SLOWCAT_CACHE/target.
    if [ -d "$SLOWCAT_CACHE/target" ] && [ "$CARGO_TARGET_DIR" != "$SLOWCAT_CACHE/target" ]; then
        echo "removing $SLOWCAT_CACHE/target: a build for this machine's CPU only (-march=native) from an earlier version" >&2
        rm -rf "$SLOWCAT_CACHE/target"
    fi
}
