# linearnexus_add_plugin(NAME SOURCES src... [OUTPUT_DIR dir] [NO_INSTALL])
#
# Builds a LinearNexus plugin: a MODULE library named NAME.so that links only the SDK library
# (LinearNexus::sdk, never the host), hides every symbol but its entry point, and has the plugin ABI
# and LibTorch version stamped in (by linearnexus/plugin.h, which the entry-point macro expands; the
# LibTorch version is the one whose headers it compiled against). *.cu sources compile when the project has
# enabled CUDA. `cmake --install` puts the plugin in <prefix>/lib/linearnexus/plugins (the folder the
# runner searches next to itself) unless NO_INSTALL.
#
# The same file serves the main build and, installed, find_package(LinearNexus) for out-of-tree
# plugins (examples/plugin_template); the installed copy never sees the main build's PCH target.
function(linearnexus_add_plugin NAME)
  cmake_parse_arguments(ARG "NO_INSTALL" "OUTPUT_DIR" "SOURCES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "linearnexus_add_plugin(${NAME}): give the plugin's sources with SOURCES a.cpp ...")
  endif()
  # CUDA sources (*.cu) go through linearnexus_cuda_sources (the kernels' flags; an error naming the
  # call to add when the project did not enable CUDA).
  set(_host_sources "")
  set(_cuda_sources "")
  foreach(_src ${ARG_SOURCES})
    if(_src MATCHES "\\.cu$")
      list(APPEND _cuda_sources ${_src})
    else()
      list(APPEND _host_sources ${_src})
    endif()
  endforeach()
  add_library(${NAME} MODULE ${_host_sources})
  if(_cuda_sources)
    linearnexus_cuda_sources(${NAME} ${_cuda_sources})
  endif()
  # LinearNexus::sdk carries the SDK's headers, LibTorch (its include dirs and C++ ABI flag) and C++17.
  target_link_libraries(${NAME} PRIVATE LinearNexus::sdk)
  set_target_properties(${NAME} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    DEFINE_SYMBOL ""
    INSTALL_RPATH "$ORIGIN/../..")  # <prefix>/lib, where liblinearnexus_sdk.so lives
  if(ARG_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIR})
  elseif(DEFINED LINEARNEXUS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${LINEARNEXUS_PLUGIN_OUTPUT_DIR})
  endif()
  if(TARGET linearnexus_pch)  # the main build only
    target_precompile_headers(${NAME} REUSE_FROM linearnexus_pch)
  endif()
  if(NOT ARG_NO_INSTALL)
    install(TARGETS ${NAME} LIBRARY DESTINATION lib/linearnexus/plugins COMPONENT runtime)
  endif()
endfunction()

# linearnexus_enable_cuda(): CUDA for this project, for Hopper machine code and PTX that the driver
# compiles for any newer GPU or (slower) an Ampere one, unless CMAKE_CUDA_ARCHITECTURES says
# otherwise. A macro: enable_language must run at file scope.
macro(linearnexus_enable_cuda)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "80-virtual;90-real")
  endif()
  enable_language(CUDA)
endmacro()

# linearnexus_cuda_sources(TARGET src...): a target's CUDA kernels (*.cu) and their ATen glue, with
# what every LinearNexus kernel is built with: C++17, -O3, spills reported, and the CUDA runtime
# shared as LibTorch loads it (one runtime in the process, not a static second). The SDK's kernels
# and a plugin's (plugins/mamba) use the same call.
function(linearnexus_cuda_sources TARGET)
  get_property(_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT "CUDA" IN_LIST _langs)
    message(FATAL_ERROR "linearnexus_cuda_sources(${TARGET}): call linearnexus_enable_cuda() (or project(... CUDA)) first")
  endif()
  target_sources(${TARGET} PRIVATE ${ARGN})
  set_target_properties(${TARGET} PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON CUDA_RUNTIME_LIBRARY Shared)
  target_compile_options(${TARGET} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 -Xptxas=-warn-spills>)
endfunction()
