"""The portable build: AVX instructions only in the kernels chosen at run time for AVX2 CPUs.

setup.py passes no -march, and the AVX2+FMA copies of the hot loops (namespace
``fastamort::isa_avx2``, functions named ``*_avx2``) run only after a CPU feature check
(``fastamort._C.simd_isa()``). Any other function with a VEX-encoded instruction would crash
a wheel on an x86-64 CPU without AVX, for example a standard-library template instantiated in
the AVX2 translation unit and picked by the linker for the whole library.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

import fastamort

pytestmark = [
    pytest.mark.skipif(fastamort.backend_report()["cpp"] != "available", reason="no extension"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not found"),
]

FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def disassembly(path: str | None = None) -> str:
    """objdump's listing of the built extension (or of the library at path), names demangled."""
    if path is None:
        from fastamort import _C

        path = _C.__file__
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def avx_outside_avx2_kernels(listing: str) -> dict[str, set[str]]:
    """{function: VEX mnemonics} for functions outside the AVX2 kernels."""
    found: dict[str, set[str]] = {}
    function = ""
    for line in listing.splitlines():
        header = FUNCTION.match(line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[1].split():
            continue
        mnemonic = fields[1].split()[0]
        # every AVX/AVX2/FMA instruction is VEX-encoded: its mnemonic starts with "v"
        if mnemonic.startswith("v") and mnemonic not in ("verr", "verw") and "avx2" not in function:
            found.setdefault(function, set()).add(mnemonic)
    return found


def test_only_the_avx2_kernels_use_avx_instructions():
    found = avx_outside_avx2_kernels(disassembly())
    assert not found, f"AVX outside the run-time-dispatched kernels: {sorted(found)[:10]}"


def test_the_check_sees_the_avx2_kernels():
    """The scan must see the AVX2 kernels themselves, or it could not fail."""
    listing = disassembly()
    assert avx_outside_avx2_kernels(listing.replace("avx2", "xxxx")), "the scan finds nothing"
    assert re.search(r"isa_avx2::.*gram_tile", listing)
    assert re.search(r"\tvfmadd\w*\s", listing), "no FMA instruction in the AVX2 kernels"
