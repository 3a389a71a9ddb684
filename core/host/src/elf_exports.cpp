// Bounds-checked lookup in an ELF file's dynamic symbol table (see elf_exports.h).
#include "elf_exports.h"

#include <elf.h>

#include <cstring>
#include <vector>

#include "linearnexus/error.h"
#include "linearnexus/host/read_file.h"

namespace linearnexus {

namespace {

struct ElfFile {
  std::string path;
  RegularFile in;  // a regular file within the plugin size limit (read_file.h): never a FIFO or device
  uint64_t size = 0;

  [[noreturn]] void bad(const std::string& what) const {
    throw Error(path + ": not a loadable plugin library (" + what + ")");
  }
  // `bytes` bytes at `offset`, which must lie inside the file.
  std::vector<char> read(uint64_t offset, uint64_t bytes) {
    if (offset > size || bytes > size - offset) bad("a table lies outside the file");
    std::vector<char> out(bytes);
    try {
      in.read_at(offset, bytes, out.data());
    } catch (const Error&) {
      bad("cannot read it");
    }
    return out;
  }
  template <class T>
  T read_struct(uint64_t offset) {
    T t;
    auto raw = read(offset, sizeof(T));
    std::memcpy(&t, raw.data(), sizeof(T));
    return t;
  }
};

}  // namespace

bool elf_exports_symbol(const std::string& file, const std::string& symbol) {
  ElfFile f{file, RegularFile(file, file_kind::kPlugin)};
  f.size = f.in.size();
  if (f.size < sizeof(Elf64_Ehdr)) f.bad("too short for an ELF file");
  const auto eh = f.read_struct<Elf64_Ehdr>(0);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) f.bad("not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    f.bad("not a 64-bit little-endian ELF file");
  if (eh.e_shnum == 0 || eh.e_shentsize != sizeof(Elf64_Shdr)) f.bad("no section table");
  const auto table = f.read(eh.e_shoff, uint64_t{eh.e_shnum} * sizeof(Elf64_Shdr));
  auto section = [&](size_t i) {
    Elf64_Shdr s;
    std::memcpy(&s, table.data() + i * sizeof(Elf64_Shdr), sizeof s);
    return s;
  };
  for (size_t i = 0; i < eh.e_shnum; ++i) {
    const Elf64_Shdr dynsym = section(i);
    if (dynsym.sh_type != SHT_DYNSYM) continue;
    if (dynsym.sh_entsize != sizeof(Elf64_Sym) || dynsym.sh_link >= eh.e_shnum)
      f.bad("a malformed dynamic symbol table");
    const Elf64_Shdr strtab = section(dynsym.sh_link);
    const auto syms = f.read(dynsym.sh_offset, dynsym.sh_size - dynsym.sh_size % sizeof(Elf64_Sym));
    const auto names = f.read(strtab.sh_offset, strtab.sh_size);
    for (size_t k = 0; k + sizeof(Elf64_Sym) <= syms.size(); k += sizeof(Elf64_Sym)) {
      Elf64_Sym s;
      std::memcpy(&s, syms.data() + k, sizeof s);
      const unsigned bind = ELF64_ST_BIND(s.st_info);
      if (s.st_shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK) ||
          ELF64_ST_VISIBILITY(s.st_other) != STV_DEFAULT || s.st_name >= names.size())
        continue;
      const char* name = names.data() + s.st_name;
      const size_t room = names.size() - s.st_name;
      if (symbol.size() < room && std::memcmp(name, symbol.data(), symbol.size()) == 0 && name[symbol.size()] == '\0')
        return true;
    }
  }
  return false;
}

}  // namespace linearnexus
