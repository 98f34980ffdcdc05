"""Deterministic test corpus for the tokenizer (fixed seed; no files needed).

generate(n, seed) returns n strings that cover what breaks tokenizers: English prose,
code, whitespace runs (tabs, CR LF, Unicode spaces), digit runs in many scripts, CJK,
Hangul (composed and as jamo), emoji with ZWJ sequences and modifiers, combining marks
in non-canonical order, unusual code points (noncharacters, private use, unassigned,
controls, code points newer than Python's Unicode tables), special-token text and very
long words.  Strings never contain U+0000 (the C driver reads C strings).
"""
import random

WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have "
         "from or one had by word but not what all were we when your can said there use an each "
         "which she do how their if will up other about out many then them these so some her "
         "would make like him into time has look two more write go see number no way could "
         "people my than first water been call who oil its now find long down day did get come "
         "made may part tokenizer Hugging Face pdserve decode prefill transformer attention "
         "Internationalization naïve café résumé coöperate façade déjà-vu Zürich straße").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D",
                "'M", "'x", "'", "''", "\u2019s", "'\u017f"]
PUNCT = list(".,;:!?-()[]{}\"'`~@#$%^&*_+=<>/\\|") + ["...", "--", "—", "–", "…", "«", "»", "¿", "¡",
                                                      "“", "”", "‘", "’", "•", "§", "©", "®", "™"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", " \t ", "\u00a0",
          "\u3000", "\u2028", "\u2029", "\x0b", "\x0c", "\x85", "\x1c", "\x1f", "\u200b", "\u2003",
          "\u202f", "\u205f", "\u1680", "\ufeff", " \r\n \r\n", "\n\n\n\n"]
DIGITS = ["0", "7", "42", "123", "1234", "12345", "3.14159", "1,000,000", "2024-01-31", "0x1F",
          "١٢٣٤", "०१२३", "๑๒๓", "²³", "½", "Ⅻ", "①②", "𝟘𝟙", "٣٫٥", "10^9", "+1-800-555-0199"]
CJK = ["日本語のテキストです。", "中文分词测试", "漢字かなカナ", "한국어 텍스트", "東京都渋谷区", "。、「」",
       "𠀀𠀁𪚥", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３", "ﾊﾝｶｸ"]
OTHER_SCRIPTS = ["Привет, мир!", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
                 "สวัสดีชาวโลก", "გამარჯობა", "Բարեւ", "ሰላም ዓለም", "ᚠᚢᚦᚨᚱᚲ", "𐌰𐌱𐌲"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇯🇵", "🇺🇸🇫🇷", "#\ufe0f\u20e3",
         "❤\ufe0f", "🧑🏿\u200d💻", "👩\u200d❤\ufe0f\u200d💋\u200d👨", "🫠", "🪿", "\u263a\ufe0e"]
COMBINING = ["e\u0301", "a\u0308", "A\u030a", "o\u0302\u0323", "o\u0323\u0302", "q\u0307\u0323",
             "\u1100\u1161\u11a8", "\u1100\u1161", "\uac00\u11a8", "n\u0303\u0303\u0303",
             "\u0301leading", "\u05d1\u05bc\u05b7", "\u0915\u093c", "\u0928\u093c", "Å", "Ω", "ﬁ",
             "\u1e9b\u0323", "\u0041\u030a\u0301", "\u00c5", "\u212b", "\u2126", "\u0344", "\u0f73",
             "\u0958", "\u2adc", "\U0001d15e", "\U00011935\U00011930", "\U00011938"]
UNUSUAL = ["\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff", "\U0010fffd",
           "\ue000", "\uf8ff", "\U000f0000", "\U00100000", "\u0378", "\u0380", "\U000e0001",
           "\U000e0041", "\u2fff", "\x01", "\x07", "\x1b[31m", "\x7f", "\u0080", "\u009f", "\ufffd",
           "\u00ad", "\u200d", "\u200e", "\u2066", "\U0001e030", "\u1c89", "\ua7cb", "\U000105c0",
           "\U00010d40", "\U00031350", "\U0002ebf0", "\U00011f00", "\U00016d40"]
CODE = ['def f(x):\n    return x * 2\n', 'for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}\n',
        '{"key": [1, 2, 3], "nested": {"a": null}}', '#include <stdio.h>\nint main(void) { return 0; }',
        'SELECT * FROM users WHERE id = 42;', '    if (x &&y||!z) { return -1; }\r\n',
        'x = [i**2 for i in range(10)]  # squares', '<div class="a">Hello</div>', 'a_b-c.d/e\\f',
        'fn main() { println!("{}", 1_000); }', '$ ls -la | grep "\\.py$"', '\t\t\tdeeply\n\t\t\tindented',
        "print('it''s')", "don't can't won't I'm you're we've they'll he'd", "x+=1;y-=2;z*=3"]


def specials_for(name):
    base = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<|reserved_special_token_5|>", "<|im_", "<|", "|>", "< s>",
            "<|fim_prefix|>", "<repo_name>", "<file_sep>", "<|box_start|>"]
    return base


def rand_word(rng):
    w = rng.choice(WORDS)
    r = rng.random()
    if r < 0.1:
        w = w.upper()
    elif r < 0.25:
        w = w.capitalize()
    return w


def sentence(rng, specials):
    parts = []
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.55:
            parts.append(rand_word(rng))
        elif r < 0.62:
            parts.append(rand_word(rng) + rng.choice(CONTRACTIONS))
        elif r < 0.70:
            parts.append(rng.choice(PUNCT))
        elif r < 0.77:
            parts.append(rng.choice(DIGITS))
        elif r < 0.82:
            parts.append(rng.choice(SPACES))
        elif r < 0.85:
            parts.append(rng.choice(CJK))
        elif r < 0.88:
            parts.append(rng.choice(EMOJI))
        elif r < 0.91:
            parts.append(rng.choice(COMBINING))
        elif r < 0.94:
            parts.append(rng.choice(OTHER_SCRIPTS))
        elif r < 0.97:
            parts.append(rng.choice(specials))
        else:
            parts.append(rng.choice(UNUSUAL))
    out = ""
    for p in parts:
        out += p if rng.random() < 0.25 else " " + p
    return out if rng.random() < 0.7 else out.strip(" ")


def random_codepoints(rng, n):
    ranges = [(0x20, 0x7e), (0xa0, 0x2ff), (0x300, 0x36f), (0x370, 0x1fff), (0x2000, 0x2bff),
              (0x3000, 0x9fff), (0xac00, 0xd7a3), (0xe000, 0xffff), (0x10000, 0x1ffff),
              (0x20000, 0x3ffff), (0xe0000, 0x10ffff), (0x1, 0x1f)]
    s = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        c = rng.randint(lo, hi)
        if 0xd800 <= c <= 0xdfff:
            c = 0xfffd
        s.append(chr(c))
    return "".join(s)


def generate(n=2400, seed=20261128, name="any"):
    rng = random.Random(seed)
    specials = specials_for(name)
    out = []
    # fixed edge cases first
    out += ["", " ", "  ", "\n", "\r\n", "\t", "a", "A", "1", "12", "123", "1234", "'s", "'", " '",
            "Hello world", " Hello world", "Hello  world", "Hello   world ", "hello\n\nworld\n",
            "a" * 5000, "ab" * 3000, " " * 3000, "\n" * 500, "1" * 1001, "!" * 2000, "é" * 700,
            "🙂" * 300, "x\u0301" * 400, "supercalifragilisticexpialidocious" * 30,
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            "<s>[INST] hi [/INST]</s>", "</s><s>", "<s><s>", "<unk>", "x<s>y", " <s> ", "<<s>>"]
    out += UNUSUAL + COMBINING + EMOJI + CJK + OTHER_SCRIPTS + CODE + SPACES + DIGITS
    while len(out) < n:
        r = rng.random()
        if r < 0.55:
            out.append(sentence(rng, specials))
        elif r < 0.65:
            out.append("".join(rng.choice(CODE) for _ in range(rng.randint(1, 4))))
        elif r < 0.73:
            out.append("".join(rng.choice(SPACES + [rand_word(rng)]) for _ in range(rng.randint(1, 12))))
        elif r < 0.80:
            out.append(" ".join(rng.choice(DIGITS) + rng.choice(["", " ", ".", "x"]) for _ in range(rng.randint(1, 8))))
        elif r < 0.88:
            out.append(random_codepoints(rng, rng.randint(1, 60)))
        elif r < 0.93:
            out.append("".join(rng.choice(EMOJI + COMBINING + CJK) for _ in range(rng.randint(1, 10))))
        elif r < 0.97:
            out.append(rng.choice(WORDS) * rng.randint(20, 200))
        else:
            out.append("".join(rng.choice(specials) for _ in range(rng.randint(1, 6))))
    return [s.replace("\x00", "") for s in out[:n]]


if __name__ == "__main__":
    import json
    import sys
    for s in generate(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
        print(json.dumps(s))
