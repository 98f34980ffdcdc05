#!/usr/bin/env python3
"""gen_emu.py OUT_DIR SRC_DIR FILE.cu... - copies of kcuda sources that g++ compiles
against emu_cuda.h: kcuda_internal.cuh with the emulation after its includes and
kc_launch_pdl running the kernel on the CPU, every `kern<<<grid, block, ...>>>(args)`
turned into `emu_launch((kern), grid, block, ...)(args)`, NULL into nullptr (a launch
argument must convert to the kernel's pointer parameter), `extern __shared__` arrays
into static ones of EMU_DYN_SMEM bytes, the definitions written in inline PTX into the
stand-ins of emu_overrides.h (any asm left is an error), other headers copied as they
are.  Used by test_cuda_emu.py."""
import os
import re
import shutil
import sys


def load_overrides(path):
    """[(first line of the definition to replace, replacement text)] from the "//@ " lines."""
    out, head, body = [], None, []
    for line in open(path):
        if line.startswith('//@ '):
            if head is not None:
                out.append((head, ''.join(body)))
            head, body = line[4:].rstrip('\n'), []
        elif head is not None:
            body.append(line)
    if head is not None:
        out.append((head, ''.join(body)))
    return out


def replace_definition(t, head, body):
    """t with the definition starting at `head` (up to its matching brace, and a struct's
    ";") replaced by body; t unchanged when head is not in it."""
    i = t.find(head)
    if i < 0:
        return t
    j = t.index('{', i)
    depth = 0
    while True:
        if t[j] == '{':
            depth += 1
        elif t[j] == '}':
            depth -= 1
            if depth == 0:
                break
        j += 1
    j += 1
    if t[j:j + 1] == ';':
        j += 1
    return t[:i] + body + t[j:]


def main():
    out, src, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    s = open(os.path.join(src, 'kcuda_internal.cuh')).read()
    emu = open(os.path.join(here, 'emu_cuda.h')).read()
    anchor = '#include "kcuda.h"\n'
    if anchor not in s:
        sys.exit('gen_emu.py: kcuda_internal.cuh has no ' + anchor.strip())
    s = s.replace(anchor, anchor + emu, 1)
    i = s.index('template <typename... KArgs, typename... Args>\nstatic inline void kc_launch_pdl')
    j = s.index('#endif /* KCUDA_INTERNAL_CUH */')
    s = s[:i] + '''template <typename... KArgs, typename... Args>
static inline void kc_launch_pdl(bool pdl, void (*kern)(KArgs...), dim3 grid, dim3 block, cudaStream_t s,
                                 Args... args)
{
    emu_run(kern, grid, block, args...);
}

''' + s[j:]
    open(os.path.join(out, 'kcuda_internal.cuh'), 'w').write(s)
    overrides = load_overrides(os.path.join(here, 'emu_overrides.h'))
    for f in files:
        t = open(os.path.join(src, f)).read()
        t = re.sub(r'([A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.+?)>>>\(', r'emu_launch((\1), \2)(', t)
        t = re.sub(r'\bNULL\b', 'nullptr', t)
        # dynamic shared memory: a function-static array like the static ones
        t = re.sub(r'extern __shared__ (.*?)(\w+)\[\];', r'__shared__ \1\2[EMU_DYN_SMEM];', t)
        t = t.replace('asm volatile("cp.async.wait_all;" ::: "memory");', '(void)0;')
        for head, body in overrides:
            t = replace_definition(t, head, body)
        if re.search(r'\basm\b', t):
            sys.exit(f'gen_emu.py: inline asm left in {f} (add a section to emu_overrides.h)')
        open(os.path.join(out, f), 'w').write(t)
    for f in os.listdir(src):
        if f.endswith('.cuh') and f != 'kcuda_internal.cuh':
            shutil.copy(os.path.join(src, f), out)


if __name__ == '__main__':
    main()
