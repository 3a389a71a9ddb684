// Test-only plugins that must be refused. Each is built as its own .so with one of these defined:
//   BAD_ABI      - claims plugin ABI version 999
//   OLD_ABI      - claims plugin ABI version 1 (built before parameter roles, ABI 2)
//   OTHER_TORCH  - claims it was built against LibTorch 0.0.1
//   THROWS       - its register callback throws
//   NO_ENTRY     - exports no entry point at all
//   DUPLICATE    - a valid plugin ("attention_copy") that registers block `attention` again
//   STATIC_INIT  - no entry point, and a static initialiser that ends the process (as a stray copy of
//                  libc10.so in a plugin folder did): the host must never load it
#include <linearnexus/plugin.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#ifdef STATIC_INIT
#define NO_ENTRY
namespace {
struct EndsTheProcess {
  EndsTheProcess() {
    std::fputs("static_init.so was loaded: its static initialiser ran\n", stderr);
    std::_Exit(3);
  }
} ends_the_process;
}  // namespace
#endif

#ifndef NO_ENTRY
namespace {
#ifndef DUPLICATE
void register_nothing(linearnexus::Registry&) {
#ifdef THROWS
  throw std::runtime_error("this test plugin always fails to register");
#endif
}
#else
void register_attention_again(linearnexus::Registry& r) {
  r.add_block("attention", "a second `attention`", {}, [](const auto&, const auto&, int64_t) { return nullptr; });
}
#endif
}  // namespace

extern "C" __attribute__((visibility("default"))) const LinearNexusPluginInfo* linearnexus_plugin_info() {
#if defined(BAD_ABI)
  static const LinearNexusPluginInfo info{999u,        LINEARNEXUS_TORCH_VERSION,
                                          "bad_abi",   "0.1",
                                          "wrong ABI", [](linearnexus::Registry* r) { register_nothing(*r); }};
#elif defined(OLD_ABI)
  static const LinearNexusPluginInfo info{
      1u, LINEARNEXUS_TORCH_VERSION, "old_abi", "0.1", "ABI 1", [](linearnexus::Registry* r) { register_nothing(*r); }};
#elif defined(OTHER_TORCH)
  static const LinearNexusPluginInfo info{
      LINEARNEXUS_PLUGIN_ABI_VERSION, "0.0.1", "other_torch", "0.1", "other LibTorch", [](linearnexus::Registry* r) {
        register_nothing(*r);
      }};
#elif defined(DUPLICATE)
  static const LinearNexusPluginInfo info{LINEARNEXUS_PLUGIN_ABI_VERSION,
                                          LINEARNEXUS_TORCH_VERSION,
                                          "attention_copy",
                                          "0.1",
                                          "registers attention again",
                                          [](linearnexus::Registry* r) { register_attention_again(*r); }};
#else
  static const LinearNexusPluginInfo info{LINEARNEXUS_PLUGIN_ABI_VERSION,
                                          LINEARNEXUS_TORCH_VERSION,
                                          "throws",
                                          "0.1",
                                          "throws while registering",
                                          [](linearnexus::Registry* r) { register_nothing(*r); }};
#endif
  return &info;
}
#else
extern "C" __attribute__((visibility("default"))) int not_a_linearnexus_plugin() { return 0; }
#endif
