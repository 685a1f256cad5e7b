#!/usr/bin/env python3
"""Measure the pauses inside each utterance of the speech set (stdlib only).

    python3 tests/speech/pauses.py [DIR]      # DIR defaults to $SLOWCAT_CACHE/speech

For each WAV in tests/speech/manifest.tsv: 10 ms frames; a frame is "quiet" when
its level is more than 30 dB below the loud speech (98th percentile frame level).
Speech runs from the first to the last point where at least 4 of 6 frames are
loud; a pause is a run of at least 50 ms of quiet frames inside that span.
Prints the span, the longest pause (ms) and every pause of 80 ms or more.
Note: a stop consonant's closure can also read as a short pause (50-80 ms).
"""
import math
import os
import struct
import sys
import wave

HERE = os.path.dirname(os.path.abspath(__file__))


def frame_levels(path):
    with wave.open(path) as w:
        n = w.getnframes()
        x = struct.unpack("<%dh" % n, w.readframes(n))
    out = []
    for i in range(0, n - 160 + 1, 160):
        s = sum(v * v for v in x[i:i + 160]) / 160
        out.append(10 * math.log10(s / 32768 ** 2 + 1e-12))
    return out


def pauses(path):
    db = frame_levels(path)
    thr = sorted(db)[int(len(db) * 0.98)] - 30
    loud = [i for i in range(len(db))
            if sum(1 for j in range(i, min(i + 6, len(db))) if db[j] > thr) >= 4]
    first, last = loud[0], loud[-1]
    runs, start = [], None
    for i in range(first, last + 1):
        if db[i] <= thr:
            if start is None:
                start = i
        elif start is not None:
            runs.append((start, i))
            start = None
    runs = [(a, b) for a, b in runs if b - a >= 5]
    return first / 100, (last + 1) / 100, runs


def main():
    cache = os.environ.get("SLOWCAT_CACHE", os.path.expanduser("~/.cache/slowcat"))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "speech")
    print("name\tspeech_s\tlongest_pause_ms\tpauses_ge_80ms")
    with open(os.path.join(HERE, "manifest.tsv")) as f:
        for line in f:
            name = line.split("\t", 1)[0]
            if not name or name.startswith("#") or name == "name":
                continue
            a, b, runs = pauses(os.path.join(d, name + ".wav"))
            longest = max([(e - s) * 10 for s, e in runs], default=0)
            big = " ".join("%.2f-%.2f" % (s / 100, e / 100) for s, e in runs if e - s >= 8)
            print("%s\t%.2f-%.2f\t%d\t%s" % (name, a, b, longest, big))


if __name__ == "__main__":
    main()
