#!/bin/sh
# Builds the CPU emulator of the CUDA stack into ./lib (see README.md).
set -eu
dir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/lib"
g++ -O2 -fPIC -shared -DEMU_DIR="\"$dir\"" "$dir/nvrtc.cpp" -o "$dir/lib/libnvrtc.so.13"
g++ -O2 -fPIC -shared "$dir/cuda.cpp" -o "$dir/lib/libcuda.so.1"
g++ -O2 -fPIC -shared "$dir/cublas.cpp" -o "$dir/lib/libcublas.so.13"
g++ -O2 -fPIC -shared -pthread "$dir/nccl.cpp" -o "$dir/lib/libnccl.so.2"
echo 'int cublasLtEmulatorMarker;' | gcc -x c -fPIC -shared - -o "$dir/lib/libcublasLt.so.13"
echo "built $dir/lib; run: MATSURGERY_CUDA_LIB_DIR=$dir/lib MATSURGERY_CUDA_CACHE=/tmp/emu-cache go test ./kernels/cuda"
