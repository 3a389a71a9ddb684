# Catch2 (v2 on Debian, v3 elsewhere) behind tests/catch.h, one shared test main, and
# linearnexus_add_test(NAME SOURCES...) for test programs anywhere in the tree (plugin folders too).
find_package(Catch2 REQUIRED)
include(Catch)
if(TARGET Catch2::Catch2WithMain)
  set(LINEARNEXUS_CATCH_TARGET Catch2::Catch2)  # v3: we bring our own main
else()
  set(LINEARNEXUS_CATCH_TARGET Catch2::Catch2)
endif()

# Paths tests need (a generated header rather than -D flags, so every target shares one PCH).
set(LINEARNEXUS_SHARED_DATA_DIR "${CMAKE_SOURCE_DIR}/../shared/data")
configure_file(${CMAKE_SOURCE_DIR}/tests/test_paths.h.in ${CMAKE_BINARY_DIR}/tests/generated/test_paths.h @ONLY)

add_library(linearnexus_test_main OBJECT ${CMAKE_SOURCE_DIR}/tests/main.cpp)
target_link_libraries(linearnexus_test_main PUBLIC ${LINEARNEXUS_CATCH_TARGET} linearnexus_core)
target_include_directories(linearnexus_test_main PUBLIC ${CMAKE_SOURCE_DIR}/tests ${CMAKE_BINARY_DIR}/tests/generated)
linearnexus_reuse_pch(linearnexus_test_main)

function(linearnexus_add_test NAME)
  add_executable(${NAME} ${ARGN})
  target_link_libraries(${NAME} PRIVATE linearnexus_test_main linearnexus_core)
  linearnexus_reuse_pch(${NAME})
  # Each test case is its own CTest test, so `ctest -j2` spreads them over both cores. One LibTorch
  # thread per test process: OpenMP threads spin while they wait, and two 2-thread processes on 2
  # cores slow each other down many times over.
  catch_discover_tests(${NAME} PROPERTIES LABELS cpu ENVIRONMENT LINEARNEXUS_NUM_THREADS=1)
endfunction()
