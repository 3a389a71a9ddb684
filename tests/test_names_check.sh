#!/bin/bash
# CTest splits a test name at ';' (a CMake list): a Catch2 TEST_CASE whose name holds one becomes
# pieces that match no test, and CTest reports them passed without running anything (a leading '-'
# makes Catch2 read the name as an option, the same). This check fails on any such name.
cd "$(dirname "$0")/.."
python3 - <<'PY'
import glob, os, re, sys
pat = re.compile(r'TEST_CASE\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+),', re.S)
bad = []
for f in sorted(glob.glob('tests/**/*.cpp', recursive=True) + glob.glob('plugins/**/*.cpp', recursive=True)):
    for m in pat.finditer(open(f, encoding='utf-8').read()):
        name = ''.join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1)))
        if ';' in name or name.startswith('-'):
            bad.append(f"{f}: TEST_CASE(\"{name}\")")
if bad:
    print("test names with ';' (CTest splits them) or a leading '-' (Catch2 reads an option): CTest would never run them:")
    print("\n".join(bad))
    sys.exit(1)
print("no test name holds ';'")
PY
