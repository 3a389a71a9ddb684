# linearnexus_add_plugin(NAME SOURCES src... [OUTPUT_DIR dir] [NO_INSTALL])
#
# Builds a LinearNexus plugin: a MODULE library named NAME.so that links only the public core
# library, hides every symbol but its entry point, and has the plugin ABI and LibTorch version
# stamped in (by core/include/linearnexus/plugin.h, which the entry-point macro expands; the LibTorch
# version is the one whose headers it compiled against). *.cu sources compile when the project has
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
  # CUDA sources (*.cu) compile only when the project enabled CUDA: say so before add_library fails.
  get_property(_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  foreach(_src ${ARG_SOURCES})
    if(_src MATCHES "\\.cu$" AND NOT "CUDA" IN_LIST _langs)
      message(FATAL_ERROR "plugin ${NAME}: ${_src} needs CUDA; call enable_language(CUDA) (or project(... CUDA)) first")
    endif()
  endforeach()

  add_library(${NAME} MODULE ${ARG_SOURCES})
  # LinearNexus::core carries the public headers, LibTorch (its include dirs and C++ ABI flag) and C++17.
  target_link_libraries(${NAME} PRIVATE LinearNexus::core)
  set_target_properties(${NAME} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    DEFINE_SYMBOL ""
    INSTALL_RPATH "$ORIGIN/../..")  # <prefix>/lib, where liblinearnexus_core.so lives
  if(ARG_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIR})
  elseif(DEFINED LINEARNEXUS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${LINEARNEXUS_PLUGIN_OUTPUT_DIR})
  endif()
  if(TARGET linearnexus_pch)  # the main build only
    target_precompile_headers(${NAME} REUSE_FROM linearnexus_pch)
  endif()
  if(NOT ARG_NO_INSTALL)
    install(TARGETS ${NAME} LIBRARY DESTINATION lib/linearnexus/plugins)
  endif()
endfunction()
