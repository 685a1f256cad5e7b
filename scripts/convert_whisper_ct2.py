#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model directory into a whisper.cpp ggml file.

Usage: convert_whisper_ct2.py [--type f16|q8_0] <ct2_dir> <out.bin>

<ct2_dir> holds model.bin, config.json and vocabulary.txt as written by
CTranslate2's Whisper converter (e.g. the faster-whisper models). The output
is whisper.cpp's legacy ggml format, the one convert-pt-to-ggml.py writes:

    u32 magic 0x67676d6c
    11 x i32 hparams: n_vocab, n_audio_ctx, n_audio_state, n_audio_head,
        n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer,
        n_mels, ftype
    i32 n_mel, i32 n_fft_bins, f32[n_mel * n_fft_bins] mel filterbank
    i32 n_tokens, then per token: u32 length, raw bytes
    per tensor: i32 n_dims, i32 name length, i32 type (0 f32, 1 f16, 8 q8_0),
        i32 dims (innermost first), name bytes, data

--type f16 (the default) stores the weight matrices as f16 (ftype 1).
--type q8_0 writes what whisper.cpp's `quantize` tool makes of that f16 file
with type q8_0, byte for byte: ftype 2007 (ggml's quantization version 2
times 1000, plus GGML_FTYPE_MOSTLY_Q8_0), every 2-D f16 matrix as Q8_0 blocks
except the ones whisper.cpp keeps as they are (positional embeddings, conv
biases; the conv weights are 3-D and stay f16, as whisper.cpp loads them).

Pure python3 standard library: the weights are already f16, so most tensors
are byte copies; small tensors are widened to f32 with struct's 'e' format.
Q8_0 is computed with C-level bulk operations (struct, array, map), about
10 s for tiny.en.
"""

import array
import itertools
import json
import math
import mmap
import operator
import os
import struct
import sys

GGML_MAGIC = 0x67676D6C
N_GPT2_TOKENS = 50257  # tokens stored in the file; whisper.cpp makes the specials itself

# CTranslate2 model.bin dtypes -> (struct format, byte size)
CT2_DTYPES = {0: ("f", 4), 1: ("b", 1), 2: ("h", 2), 3: ("i", 4), 4: ("e", 2), 5: (None, 2)}
CT2_F32, CT2_F16, CT2_BF16 = 0, 4, 5

GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8
# ggml_ftype values (hparams.ftype)
FTYPE_MOSTLY_F16, FTYPE_MOSTLY_Q8_0 = 1, 7
# A quantized file's ftype also carries ggml's quantization format version:
# ftype = GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + ggml_ftype.
GGML_QNT_VERSION, GGML_QNT_VERSION_FACTOR = 2, 1000
OUT_TYPES = {"f16": FTYPE_MOSTLY_F16, "q8_0": GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + FTYPE_MOSTLY_Q8_0}
# 2-D tensors whisper.cpp's quantize tool leaves alone (whisper.cpp loads them as f32)
QUANT_SKIP = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding")
QK8_0 = 32  # values per Q8_0 block: one f16 scale, then 32 int8


def tensor_nbytes(ttype, nelem):
    if ttype == GGML_F32:
        return nelem * 4
    if ttype == GGML_F16:
        return nelem * 2
    if ttype == GGML_Q8_0:
        return nelem // QK8_0 * (2 + QK8_0)
    raise ConvertError("unknown ggml type %d" % ttype)


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------------------
# CTranslate2 model.bin reader


class Var:
    __slots__ = ("name", "shape", "dtype", "data")

    def __init__(self, name, shape, dtype, data):
        self.name, self.shape, self.dtype, self.data = name, shape, dtype, data

    def scalar(self):
        fmt, size = CT2_DTYPES[self.dtype]
        if fmt is None or len(self.data) != size:
            raise ConvertError("%s is not a scalar" % self.name)
        return struct.unpack("<" + fmt, self.data)[0]


def read_ct2(path):
    with open(path, "rb") as f:
        try:
            buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except ValueError:  # empty file
            raise ConvertError("%s is empty" % path)
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("H")
        s = bytes(buf[pos : pos + n])
        pos += n
        return s.rstrip(b"\0").decode("utf-8")

    try:
        (version,) = take("I")
        if version < 5:
            raise ConvertError("unsupported CTranslate2 model.bin version %d (need >= 5)" % version)
        spec = string()
        (revision,) = take("I")
        if spec != "WhisperSpec":
            raise ConvertError("model.bin holds a %r, not a WhisperSpec" % spec)
        (count,) = take("I")
        variables = {}
        for _ in range(count):
            name = string()
            (rank,) = take("B")
            shape = take("%dI" % rank) if rank else ()
            (dtype,) = take("B")
            (nbytes,) = take("I")
            if dtype not in CT2_DTYPES:
                raise ConvertError("%s: unknown dtype %d" % (name, dtype))
            n = 1
            for d in shape:
                n *= d
            if n * CT2_DTYPES[dtype][1] != nbytes:
                raise ConvertError("%s: %d bytes for shape %s" % (name, nbytes, shape))
            if pos + nbytes > len(buf):
                raise ConvertError("model.bin is truncated (in %s)" % name)
            variables[name] = Var(name, tuple(shape), dtype, buf[pos : pos + nbytes])
            pos += nbytes
        (n_alias,) = take("I")
        for _ in range(n_alias):
            alias, target = string(), string()
            if target in variables:
                variables.setdefault(alias, variables[target])
    except struct.error:
        raise ConvertError("model.bin is truncated or not a CTranslate2 model")
    if pos != len(buf):
        raise ConvertError("model.bin has %d unexpected trailing bytes" % (len(buf) - pos))
    return version, revision, count, variables


# ---------------------------------------------------------------------------
# element conversion helpers


def to_f32_bytes(var, data=None):
    data = var.data if data is None else data
    if var.dtype == CT2_F32:
        return bytes(data)
    if var.dtype == CT2_F16:
        n = len(data) // 2
        return array.array("f", struct.unpack("<%de" % n, data)).tobytes()
    if var.dtype == CT2_BF16:
        h = array.array("H", bytes(data))
        if sys.byteorder != "little":
            h.byteswap()
        out = array.array("I", (v << 16 for v in h))
        return out.tobytes()
    raise ConvertError("%s: cannot convert dtype %d to f32" % (var.name, var.dtype))


def to_f16_bytes(var, data=None):
    data = var.data if data is None else data
    if var.dtype == CT2_F16:
        return bytes(data)
    n = len(data) // CT2_DTYPES[var.dtype][1]
    if var.dtype == CT2_F32:
        return struct.pack("<%de" % n, *struct.unpack("<%df" % n, data))
    if var.dtype == CT2_BF16:
        f = array.array("f", to_f32_bytes(var, data))
        return struct.pack("<%de" % n, *f)
    raise ConvertError("%s: cannot convert dtype %d to f16" % (var.name, var.dtype))


def is_all_zero(var, data):
    return not any(bytes(data)) or all(v == 0.0 for v in array.array("f", to_f32_bytes(var, data)))


# ---------------------------------------------------------------------------
# Slaney mel filterbank == librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
# (htk=False, norm="slaney", fmin=0, fmax=sr/2, float32 output)


def _hz_to_mel(f):
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    if f >= min_log_hz:
        return min_log_mel + math.log(f / min_log_hz) / logstep
    return f / f_sp


def _mel_to_hz(m):
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    if m >= min_log_mel:
        return min_log_hz * math.exp(logstep * (m - min_log_mel))
    return f_sp * m


def _linspace(start, stop, num):
    # numpy.linspace(start, stop, num): i * step + start, last point exactly stop
    step = (stop - start) / (num - 1)
    out = [i * step + start for i in range(num)]
    out[-1] = stop
    return out


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def mel_filters(sr=16000, n_fft=400, n_mels=80):
    n_bins = 1 + n_fft // 2
    fftfreqs = [i * (sr / n_fft) for i in range(n_bins)]
    mel_f = [_mel_to_hz(m) for m in _linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2)]
    fdiff = [mel_f[i + 1] - mel_f[i] for i in range(n_mels + 1)]
    out = array.array("f")
    for i in range(n_mels):
        enorm = 2.0 / (mel_f[i + 2] - mel_f[i])
        for f in fftfreqs:
            lower = -(mel_f[i] - f) / fdiff[i]
            upper = (mel_f[i + 2] - f) / fdiff[i + 1]
            w = _f32(max(0.0, min(lower, upper)))  # librosa stores into a float32 array...
            out.append(w * enorm)  # ...then scales it in place (rounded to f32 again)
    return n_mels, n_bins, out


# ---------------------------------------------------------------------------
# vocabulary: GPT-2 byte-to-unicode -> raw bytes


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_vocab(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    lines = text.split("\n")  # not splitlines(): tokens may hold U+0085, U+2028, ...
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def decode_tokens(lines):
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for i, tok in enumerate(lines):
        try:
            out.append(bytes(decoder[c] for c in tok))
        except KeyError as e:
            raise ConvertError("vocabulary.txt line %d: %r is not a GPT-2 byte character" % (i + 1, e.args[0]))
    return out


# ---------------------------------------------------------------------------
# Q8_0, as ggml's reference quantizer (quantize_row_q8_0_ref) does it, in f32:
#   amax = max |x| over the block; d = amax / 127; id = d ? 1 / d : 0
#   scale = f16(d); q[j] = roundf(x[j] * id)   (roundf: halves away from zero)
# Python floats are doubles: every quotient and product of two f32 values,
# rounded once to f32 (array 'f'), is the correctly rounded f32 result, so this
# matches the C code bit for bit.

_F32 = array.array("f", [0.0])


def _f32_of(x):
    _F32[0] = x
    return _F32[0]


_SCALES = {}  # a block's amax (an f16 value: few distinct ones) -> (f16 scale bytes, id)


def _scale(amax):
    hit = _SCALES.get(amax)
    if hit is None:
        d = _f32_of(amax / 127.0)
        inv = _f32_of(1.0 / d) if d else 0.0
        hit = _SCALES[amax] = (struct.pack("<e", d), inv)
    return hit


def q8_0_bytes(f16, ne0):
    """Rows of ne0 f16 values (little-endian bytes) -> Q8_0 blocks."""
    if ne0 % QK8_0:
        raise ConvertError("row length %d is not a multiple of %d: cannot quantize to Q8_0" % (ne0, QK8_0))
    n = len(f16) // 2
    out = []
    chunk = QK8_0 * 4096  # values at a time: bounds the memory taken by Python floats
    mul, sub, repeat = operator.mul, operator.sub, itertools.repeat
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = struct.unpack_from("<%de" % m, f16, start * 2)  # exact in a double
        nb = m // QK8_0
        scales = [_scale(max(map(abs, x[i : i + QK8_0]))) for i in range(0, m, QK8_0)]
        ids = itertools.chain.from_iterable(repeat(inv, QK8_0) for _, inv in scales)
        y = array.array("f", map(mul, x, ids)).tolist()  # x * id rounded to f32
        q = list(map(round, y))  # ties to even: fixed below
        diff = list(map(sub, y, q))
        for tie in (0.5, -0.5):  # y is k + 0.5 exactly: roundf goes away from zero
            i = -1
            while True:
                try:
                    i = diff.index(tie, i + 1)
                except ValueError:
                    break
                q[i] = int(y[i] + math.copysign(0.5, y[i]))
        qs = array.array("b", q).tobytes()
        out.extend(
            itertools.chain.from_iterable(
                (scales[b][0], qs[b * QK8_0 : (b + 1) * QK8_0]) for b in range(nb)
            )
        )
    return b"".join(out)


def quantize_tensors(tensors, out_type):
    """Pass tensors through; with q8_0, 2-D f16 ones that whisper.cpp quantizes become Q8_0."""
    for name, shape, ttype, data in tensors:
        if out_type == "q8_0" and len(shape) == 2 and name not in QUANT_SKIP:
            if ttype != GGML_F16:
                raise ConvertError("%s: cannot quantize a tensor of ggml type %d" % (name, ttype))
            yield name, shape, GGML_Q8_0, q8_0_bytes(data, shape[-1])
        else:
            yield name, shape, ttype, data


# ---------------------------------------------------------------------------
# conversion


def build_tensors(v, n_audio_layer, n_text_layer):
    """Yield (name, shape, ggml_type, bytes) in the order of Whisper's PyTorch state_dict.

    A generator, so only one converted tensor is in memory at a time."""

    def get(name):
        if name not in v:
            raise ConvertError("model.bin has no variable %s" % name)
        return v[name]

    def plain(name, src, force_f32=False, shape=None):
        var = get(src)
        shp = tuple(shape or var.shape)
        if force_f32 or len(shp) < 2:
            return (name, shp, GGML_F32, to_f32_bytes(var))
        return (name, shp, GGML_F16, to_f16_bytes(var))

    def rows(var, start, stop):
        """Rows [start, stop) of a 2-D (or 1-D) variable, as raw bytes of its dtype."""
        row = (var.shape[1] if len(var.shape) == 2 else 1) * CT2_DTYPES[var.dtype][1]
        return var.data[start * row : stop * row]

    def linear(dst, src, has_bias=True):
        out = [plain(dst + ".weight", src + "/weight")]
        if has_bias:
            out.append(plain(dst + ".bias", src + "/bias"))
        return out

    def split_linear(dsts, src):
        """Fused [k*d, d] weight (+ bias) -> k tensors; a 'key' part has no bias (must be zero)."""
        w, b = get(src + "/weight"), get(src + "/bias")
        k = len(dsts)
        d = w.shape[0] // k
        if w.shape[0] != k * d or b.shape != (k * d,):
            raise ConvertError("%s: cannot split shape %s into %d" % (src, w.shape, k))
        out = []
        for j, dst in enumerate(dsts):
            out.append((dst + ".weight", (d, w.shape[1]), GGML_F16, to_f16_bytes(w, rows(w, j * d, (j + 1) * d))))
            bias = rows(b, j * d, (j + 1) * d)
            if dst.endswith(".key"):
                if not is_all_zero(b, bias):
                    raise ConvertError("%s: key bias is not zero; whisper.cpp has no key bias" % src)
                continue
            out.append((dst + ".bias", (d,), GGML_F32, to_f32_bytes(b, bias)))
        return out

    def norm(dst, src):
        return [plain(dst + ".weight", src + "/gamma"), plain(dst + ".bias", src + "/beta")]

    # encoder
    yield plain("encoder.positional_embedding", "encoder/position_encodings/encodings", force_f32=True)
    for c in ("conv1", "conv2"):
        yield plain("encoder.%s.weight" % c, "encoder/%s/weight" % c)
        bias = get("encoder/%s/bias" % c)
        yield plain("encoder.%s.bias" % c, bias.name, force_f32=True, shape=(bias.shape[0], 1))
    for i in range(n_audio_layer):
        p, s = "encoder.blocks.%d." % i, "encoder/layer_%d/" % i
        yield from split_linear([p + "attn.query", p + "attn.key", p + "attn.value"], s + "self_attention/linear_0")
        yield from linear(p + "attn.out", s + "self_attention/linear_1")
        yield from norm(p + "attn_ln", s + "self_attention/layer_norm")
        yield from linear(p + "mlp.0", s + "ffn/linear_0")
        yield from linear(p + "mlp.2", s + "ffn/linear_1")
        yield from norm(p + "mlp_ln", s + "ffn/layer_norm")
    yield from norm("encoder.ln_post", "encoder/layer_norm")
    # decoder
    yield plain("decoder.positional_embedding", "decoder/position_encodings/encodings", force_f32=True)
    yield plain("decoder.token_embedding.weight", "decoder/embeddings/weight")
    for i in range(n_text_layer):
        p, s = "decoder.blocks.%d." % i, "decoder/layer_%d/" % i
        yield from split_linear([p + "attn.query", p + "attn.key", p + "attn.value"], s + "self_attention/linear_0")
        yield from linear(p + "attn.out", s + "self_attention/linear_1")
        yield from norm(p + "attn_ln", s + "self_attention/layer_norm")
        yield from linear(p + "cross_attn.query", s + "attention/linear_0")
        yield from split_linear([p + "cross_attn.key", p + "cross_attn.value"], s + "attention/linear_1")
        yield from linear(p + "cross_attn.out", s + "attention/linear_2")
        yield from norm(p + "cross_attn_ln", s + "attention/layer_norm")
        yield from linear(p + "mlp.0", s + "ffn/linear_0")
        yield from linear(p + "mlp.2", s + "ffn/linear_1")
        yield from norm(p + "mlp_ln", s + "ffn/layer_norm")
    yield from norm("decoder.ln", "decoder/layer_norm")


def count_layers(v, prefix):
    n = 0
    while ("%s/layer_%d/ffn/linear_0/weight" % (prefix, n)) in v:
        n += 1
    return n


def convert(ct2_dir, out_path, log=print, out_type="f16"):
    if out_type not in OUT_TYPES:
        raise ConvertError("unknown output type %r (use %s)" % (out_type, " or ".join(OUT_TYPES)))
    model_bin = os.path.join(ct2_dir, "model.bin")
    vocab_txt = os.path.join(ct2_dir, "vocabulary.txt")
    config_json = os.path.join(ct2_dir, "config.json")
    for p in (model_bin, vocab_txt):
        if not os.path.isfile(p):
            raise ConvertError("missing %s" % p)
    if os.path.isfile(config_json):
        with open(config_json, "rb") as f:
            json.load(f)  # only checked for sanity; the shapes carry every hparam

    version, revision, n_vars, v = read_ct2(model_bin)

    emb = v.get("decoder/embeddings/weight")
    pos_e = v.get("encoder/position_encodings/encodings")
    pos_d = v.get("decoder/position_encodings/encodings")
    conv1 = v.get("encoder/conv1/weight")
    if not (emb and pos_e and pos_d and conv1):
        raise ConvertError("model.bin lacks the Whisper embeddings / conv layers")
    hp = {
        "n_vocab": emb.shape[0],
        "n_audio_ctx": pos_e.shape[0],
        "n_audio_state": pos_e.shape[1],
        "n_audio_head": int(v["encoder/num_heads"].scalar()),
        "n_audio_layer": count_layers(v, "encoder"),
        "n_text_ctx": pos_d.shape[0],
        "n_text_state": emb.shape[1],
        "n_text_head": int(v["decoder/num_heads"].scalar()),
        "n_text_layer": count_layers(v, "decoder"),
        "n_mels": conv1.shape[1],
        "ftype": OUT_TYPES[out_type],
    }
    if hp["n_audio_state"] != hp["n_text_state"]:
        raise ConvertError("audio and text widths differ (%d vs %d)" % (hp["n_audio_state"], hp["n_text_state"]))

    lines = read_vocab(vocab_txt)
    if len(lines) != hp["n_vocab"]:
        log("note: vocabulary.txt has %d lines, the embedding %d rows" % (len(lines), hp["n_vocab"]))
    if len(lines) < N_GPT2_TOKENS:
        raise ConvertError("vocabulary.txt has only %d lines (need %d)" % (len(lines), N_GPT2_TOKENS))
    tokens = decode_tokens(lines[:N_GPT2_TOKENS])

    n_mel, n_bins, filters = mel_filters(n_mels=hp["n_mels"])
    tensors = quantize_tensors(build_tensors(v, hp["n_audio_layer"], hp["n_text_layer"]), out_type)

    tmp = out_path + ".tmp.%d" % os.getpid()
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<I", GGML_MAGIC))
            f.write(struct.pack("<11i", *hp.values()))
            f.write(struct.pack("<ii", n_mel, n_bins))
            if sys.byteorder != "little":
                filters.byteswap()
            f.write(filters.tobytes())
            f.write(struct.pack("<i", len(tokens)))
            for tok in tokens:
                f.write(struct.pack("<I", len(tok)))
                f.write(tok)
            n_tensors = 0
            for name, shape, ttype, data in tensors:
                n_tensors += 1
                nelem = 1
                for d in shape:
                    nelem *= d
                if len(data) != tensor_nbytes(ttype, nelem):
                    raise ConvertError("%s: %d bytes for shape %s" % (name, len(data), shape))
                nb = name.encode("utf-8")
                f.write(struct.pack("<iii", len(shape), len(nb), ttype))
                f.write(struct.pack("<%di" % len(shape), *reversed(shape)))
                f.write(nb)
                f.write(data)
            expected = 7 + 15 * hp["n_audio_layer"] + 4 + 24 * hp["n_text_layer"]
            if n_tensors != expected:
                raise ConvertError("wrote %d tensors, whisper.cpp expects %d" % (n_tensors, expected))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

    log(
        "converted CTranslate2 model.bin v%d (%d variables) -> %s (%s): %d tensors, %d bytes"
        % (version, n_vars, out_path, out_type, n_tensors, os.path.getsize(out_path))
    )
    log("hparams: " + " ".join("%s=%d" % kv for kv in hp.items()))
    return hp, n_tensors


def main(argv):
    args = argv[1:]
    out_type = "f16"
    if args[:1] == ["--type"] and len(args) >= 2:
        out_type, args = args[1], args[2:]
    elif args and args[0].startswith("--type="):
        out_type, args = args[0][len("--type=") :], args[1:]
    if len(args) != 2 or args[0] in ("-h", "--help") or out_type not in OUT_TYPES:
        sys.stderr.write("usage: %s [--type f16|q8_0] <ct2_dir> <out.bin>\n" % os.path.basename(argv[0]))
        return 2
    try:
        convert(args[0], args[1], out_type=out_type)
    except (ConvertError, OSError, ValueError) as e:
        sys.stderr.write("convert_whisper_ct2: error: %s\n" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
