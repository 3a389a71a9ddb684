#pragma once
// Reading a shared library's exported symbols without loading it (core-internal; no LibTorch).
#include <string>

namespace linearnexus {

// Whether the 64-bit little-endian ELF shared library `file` exports (defines, with default
// visibility, in its dynamic symbol table) a symbol named `symbol`. Nothing in the file runs: it is
// read, bounds-checked, not dlopen'ed. Throws Error naming the file when it is not such an ELF file
// or its tables lie outside it.
//
// Why not Boost.DLL's library_info: it reads the static .symtab, which `strip` (and distribution
// packaging) removes while dlopen only needs .dynsym, and it indexes the string table unchecked.
bool elf_exports_symbol(const std::string& file, const std::string& symbol);

}  // namespace linearnexus
