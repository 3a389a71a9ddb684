// Empty translation unit: carries the precompiled LibTorch headers (see CMakeLists.txt).
