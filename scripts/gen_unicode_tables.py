#!/usr/bin/env python3
"""Generate engine/eng_unicode_tables.inc from Python's unicodedata.

The tokenizer needs, per code point: the regex classes \\p{L}, \\p{N} and \\s (the
Unicode White_Space property), the canonical combining class, and the data for NFC
(full canonical decompositions and primary composition pairs).  Hangul syllables are
handled algorithmically in C and are left out of the tables.

Usage: python3 scripts/gen_unicode_tables.py > engine/eng_unicode_tables.inc
The Unicode version is the one of the Python that runs this script; it is written into
the output so a reader can compare it with what the reference tokenizer uses.

The reference (Hugging Face `tokenizers`) matches its regexes with Oniguruma, whose
Unicode tables are newer than Python 3.11's (16.0 against 14.0: about 9,300 letters and
120 numbers more).  When the `tokenizers` package is importable, the \\p{L}, \\p{N} and
\\s sets are read from Oniguruma itself (by splitting a string of every code point with
each class) so our pre-tokenizer classifies new code points exactly as the reference;
pass --unicodedata-only to use Python's tables alone.  NFC data always comes from
unicodedata (the reference's NFC differs from it for one code point, U+11938).
"""
import sys
import unicodedata as ud

MAX_CP = 0x110000
BLOCK = 256

# White_Space from PropList.txt (stable since Unicode 6.3); unicodedata has no
# property lookup, and str.isspace() also accepts U+001C..U+001F, which \s does not.
WHITE_SPACE = set(range(0x09, 0x0E)) | {0x20, 0x85, 0xA0, 0x1680} | set(range(0x2000, 0x200B)) \
    | {0x2028, 0x2029, 0x202F, 0x205F, 0x3000}

F_L, F_N, F_WS, F_NFC = 1, 2, 4, 8

def is_hangul_syllable(cp):
    return 0xAC00 <= cp <= 0xD7A3

def oniguruma_classes():
    """The code points Oniguruma (inside `tokenizers`) puts in \\p{L}, \\p{N} and \\s."""
    from tokenizers import Regex, pre_tokenizers
    cps = [c for c in range(MAX_CP) if not 0xD800 <= c <= 0xDFFF]

    def members(rx):
        split = pre_tokenizers.Split(Regex(rx), behavior='removed')
        found = set()
        for i in range(0, len(cps), 50000):
            chunk = cps[i:i + 50000]
            kept = set()
            for piece, _ in split.pre_tokenize_str(''.join(chr(c) for c in chunk)):
                kept.update(ord(ch) for ch in piece)
            found.update(c for c in chunk if c not in kept)
        return found

    return members(r'\p{L}'), members(r'\p{N}'), members(r'\s')


def main():
    out = sys.stdout
    classes = None
    if '--unicodedata-only' not in sys.argv:
        try:
            classes = oniguruma_classes()
        except ImportError:
            sys.stderr.write('tokenizers not importable: classes from unicodedata only\n')
    # primary composites: canonical two-code-point decompositions that NFC keeps
    comps = {}
    seconds = set()
    decomp = {}
    for cp in range(MAX_CP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if is_hangul_syllable(cp):
            continue
        nfd = ud.normalize('NFD', ch)
        if nfd != ch:
            decomp[cp] = [ord(c) for c in nfd]
        raw = ud.decomposition(ch)
        if raw and not raw.startswith('<'):
            parts = [int(x, 16) for x in raw.split()]
            if len(parts) == 2 and ud.normalize('NFC', ch) == ch:
                comps[(parts[0], parts[1])] = cp
                seconds.add(parts[1])
    if '--unicodedata-only' not in sys.argv:
        # Keep only the compositions the reference's NFC performs (its tables are older
        # for a few pairs, e.g. U+11935 U+11930 -> U+11938).
        try:
            from tokenizers import normalizers
            nfc = normalizers.NFC()
            nfd = normalizers.NFD()
            for cp in list(decomp):
                ref = [ord(c) for c in nfd.normalize_str(chr(cp))]
                if ref != decomp[cp]:
                    sys.stderr.write('decomposition of %04X follows the reference\n' % cp)
                    if ref == [cp]:
                        del decomp[cp]
                    else:
                        decomp[cp] = ref
            for (a, b), c in list(comps.items()):
                if nfc.normalize_str(chr(a) + chr(b)) != chr(c):
                    sys.stderr.write('dropping composition %04X %04X -> %04X (reference keeps it apart)\n'
                                     % (a, b, c))
                    del comps[(a, b)]
        except ImportError:
            pass
    # Hangul V and T jamo are composition seconds too
    seconds |= set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))

    # The reference's NFC tables are older than Python's (they predate Unicode 14): marks
    # it does not know have combining class 0 there and are never reordered.  Combining
    # classes never change once assigned, so probing "known or not" is enough.
    ref_unknown_marks = set()
    if '--unicodedata-only' not in sys.argv:
        try:
            from tokenizers import normalizers
            nfc = normalizers.NFC()
            # base U+0378 (unassigned: composes with nothing); marks that decompose are
            # old enough to be known
            marks = [cp for cp in range(MAX_CP)
                     if not 0xD800 <= cp <= 0xDFFF and ud.combining(chr(cp)) != 0
                     and ud.normalize('NFD', chr(cp)) == chr(cp)]
            probe = []
            for cp in marks:
                if ud.combining(chr(cp)) > 1:
                    probe.append('\u0378' + chr(cp) + '\u0334')   # U+0334 has class 1
                else:
                    probe.append('\u0378' + '\u0301' + chr(cp))   # U+0301 has class 230
            outs = nfc.normalize_str('\n'.join(probe)).split('\n')
            for cp, o in zip(marks, outs):
                if ud.combining(chr(cp)) > 1 and not o.endswith(chr(cp)):
                    ref_unknown_marks.add(cp)
                elif ud.combining(chr(cp)) == 1 and not o.endswith('\u0301'):
                    ref_unknown_marks.add(cp)
            sys.stderr.write('%d combining marks unknown to the reference get class 0\n'
                             % len(ref_unknown_marks))
        except ImportError:
            pass

    vals = [0] * MAX_CP
    for cp in range(MAX_CP):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        cat = ud.category(ch)
        f = 0
        if cat[0] == 'L':
            f |= F_L
        if cat[0] == 'N':
            f |= F_N
        if cp in WHITE_SPACE:
            f |= F_WS
        ccc = 0 if cp in ref_unknown_marks else ud.combining(ch)
        if cp in decomp or ccc != 0 or cp in seconds or not ud.is_normalized("NFC", ch):
            f |= F_NFC
        if classes is not None:
            f &= ~(F_L | F_N | F_WS)
            f |= (F_L if cp in classes[0] else 0) | (F_N if cp in classes[1] else 0) \
                | (F_WS if cp in classes[2] else 0)
        vals[cp] = (f << 8) | ccc

    blocks = {}
    stage1 = []
    stage2 = []
    for b in range(MAX_CP // BLOCK):
        blk = tuple(vals[b * BLOCK:(b + 1) * BLOCK])
        if blk not in blocks:
            blocks[blk] = len(stage2)
            stage2.append(blk)
        stage1.append(blocks[blk])

    w = out.write
    src = 'classes L/N/WS from Oniguruma via tokenizers %s' % __import__('tokenizers').__version__ \
        if classes is not None else 'classes from unicodedata'
    w('/* Generated by scripts/gen_unicode_tables.py from Python %s unicodedata (Unicode %s);\n'
      ' * %s.  Do not edit by hand. */\n\n' % (sys.version.split()[0], ud.unidata_version, src))
    w('#define ENG_UNI_TABLES_VERSION "%s"\n\n' % ud.unidata_version)
    w('/* stage1[cp >> 8] -> block index; stage2[block][cp & 255] = flags << 8 | ccc */\n')
    w('static const uint16_t uni_stage1[%d] = {\n' % len(stage1))
    for i in range(0, len(stage1), 16):
        w('    ' + ', '.join(str(x) for x in stage1[i:i + 16]) + ',\n')
    w('};\n\n')
    w('static const uint16_t uni_stage2[%d][%d] = {\n' % (len(stage2), BLOCK))
    for blk in stage2:
        w('    {\n')
        for i in range(0, BLOCK, 16):
            w('        ' + ', '.join('0x%x' % x for x in blk[i:i + 16]) + ',\n')
        w('    },\n')
    w('};\n\n')

    pool = []
    entries = []
    for cp in sorted(decomp):
        d = decomp[cp]
        entries.append((cp, len(pool), len(d)))
        pool.extend(d)
    w('/* full canonical decompositions (NFD of one code point), sorted by code point */\n')
    w('static const uint32_t uni_decomp_pool[%d] = {\n' % len(pool))
    for i in range(0, len(pool), 12):
        w('    ' + ', '.join('0x%x' % x for x in pool[i:i + 12]) + ',\n')
    w('};\n\n')
    w('static const struct uni_decomp { uint32_t cp; uint16_t off; uint8_t len; } uni_decomp[%d] = {\n'
      % len(entries))
    for cp, off, n in entries:
        w('    {0x%x, %d, %d},\n' % (cp, off, n))
    w('};\n\n')
    w('/* primary composites: (first << 21 | second) -> composite, sorted by key */\n')
    w('static const struct uni_comp { uint64_t key; uint32_t cp; } uni_comp[%d] = {\n' % len(comps))
    for (a, b) in sorted(comps, key=lambda p: (p[0] << 21) | p[1]):
        w('    {0x%xull, 0x%x},\n' % ((a << 21) | b, comps[(a, b)]))
    w('};\n')

if __name__ == '__main__':
    main()
