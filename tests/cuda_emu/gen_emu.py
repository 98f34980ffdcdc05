#!/usr/bin/env python3
"""gen_emu.py OUT_DIR SRC_DIR FILE.cu... - copies of kcuda sources that g++ compiles
against emu_cuda.h: kcuda_internal.cuh with the emulation after its includes and
kc_launch_pdl running the kernel on the CPU, every `kern<<<grid, block, ...>>>(args)`
turned into `emu_launch((kern), grid, block, ...)(args)`, NULL into nullptr (a launch
argument must convert to the kernel's pointer parameter), other headers copied as they
are.  Used by test_cuda_emu.py."""
import os
import re
import shutil
import sys


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
    for f in files:
        t = open(os.path.join(src, f)).read()
        t = re.sub(r'([A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.+?)>>>\(', r'emu_launch((\1), \2)(', t)
        t = re.sub(r'\bNULL\b', 'nullptr', t)
        open(os.path.join(out, f), 'w').write(t)
    for f in os.listdir(src):
        if f.endswith('.cuh') and f != 'kcuda_internal.cuh':
            shutil.copy(os.path.join(src, f), out)


if __name__ == '__main__':
    main()
