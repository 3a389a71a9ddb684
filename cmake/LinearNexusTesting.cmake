# Catch2 (v2 on Debian, v3 elsewhere) behind tests/catch.h, one shared test main, and
# linearnexus_add_test(NAME SOURCES...) for test programs anywhere in the tree (plugin folders too).
find_package(Catch2 REQUIRED)
# Both versions install Catch.cmake beside their package config; v3's is not on the module path.
include(${Catch2_DIR}/Catch.cmake)
# v2: the single header; v3: the library without its main (tests/main.cpp is the main for both).
set(LINEARNEXUS_CATCH_TARGET Catch2::Catch2)

# Paths tests need (a generated header rather than -D flags, so every target shares one PCH).
set(LINEARNEXUS_SHARED_DATA_DIR "${CMAKE_SOURCE_DIR}/../shared/data")
configure_file(${CMAKE_SOURCE_DIR}/tests/test_paths.h.in ${CMAKE_BINARY_DIR}/tests/generated/test_paths.h @ONLY)

add_library(linearnexus_test_main OBJECT ${CMAKE_SOURCE_DIR}/tests/main.cpp)
target_link_libraries(linearnexus_test_main PUBLIC ${LINEARNEXUS_CATCH_TARGET} linearnexus_host)
target_include_directories(linearnexus_test_main PUBLIC ${CMAKE_SOURCE_DIR}/tests ${CMAKE_BINARY_DIR}/tests/generated)
linearnexus_reuse_pch(linearnexus_test_main)

# linearnexus_add_test(NAME [LABEL cpu|gpu] SOURCES...): LABEL defaults to cpu. `gpu` tests need a
# CUDA device and skip (saying so) without one: `ctest -L gpu` runs just them on the GPU machine.
function(linearnexus_add_test NAME)
  cmake_parse_arguments(ARG "" "LABEL" "" ${ARGN})
  if(NOT ARG_LABEL)
    set(ARG_LABEL cpu)
  endif()
  add_executable(${NAME} ${ARG_UNPARSED_ARGUMENTS})
  target_link_libraries(${NAME} PRIVATE linearnexus_test_main linearnexus_host)
  linearnexus_reuse_pch(${NAME})
  # Each test case is its own CTest test, so `ctest -j2` spreads them over both cores. One LibTorch
  # thread per test process: OpenMP threads spin while they wait, and two 2-thread processes on 2
  # cores slow each other down many times over.
  catch_discover_tests(${NAME} PROPERTIES LABELS ${ARG_LABEL} ENVIRONMENT LINEARNEXUS_NUM_THREADS=1)
endfunction()
