# linearnexus_add_plugin(NAME SOURCES src... [OUTPUT_DIR dir])
#
# Builds a LinearNexus plugin: a MODULE library named NAME.so that links only the public core
# library, hides every symbol but its entry point, and has the plugin ABI and LibTorch version
# stamped in (by core/include/linearnexus/plugin.h, which the entry-point macro expands).
# Used in-tree and, installed, by find_package(LinearNexus) for out-of-tree plugins.
function(linearnexus_add_plugin NAME)
  cmake_parse_arguments(ARG "" "OUTPUT_DIR" "SOURCES" ${ARGN})
  add_library(${NAME} MODULE ${ARG_SOURCES})
  if(TARGET LinearNexus::core)
    target_link_libraries(${NAME} PRIVATE LinearNexus::core)
  else()
    target_link_libraries(${NAME} PRIVATE linearnexus_core)
  endif()
  set_target_properties(${NAME} PROPERTIES
    PREFIX ""
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    DEFINE_SYMBOL ""
    INSTALL_RPATH "$ORIGIN/../..")
  if(ARG_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIR})
  elseif(DEFINED LINEARNEXUS_PLUGIN_OUTPUT_DIR)
    set_target_properties(${NAME} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${LINEARNEXUS_PLUGIN_OUTPUT_DIR})
  endif()
  if(TARGET linearnexus_pch)
    target_precompile_headers(${NAME} REUSE_FROM linearnexus_pch)
  endif()
  # CUDA sources (*.cu) compile only when the project enabled CUDA.
  get_property(_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  foreach(_src ${ARG_SOURCES})
    if(_src MATCHES "\\.cu$" AND NOT "CUDA" IN_LIST _langs)
      message(FATAL_ERROR "plugin ${NAME}: ${_src} needs CUDA; enable the CUDA language first")
    endif()
  endforeach()
endfunction()
