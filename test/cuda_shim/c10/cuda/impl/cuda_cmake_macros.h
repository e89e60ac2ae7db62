// Shim for the nvcc compile check only: the CPU torch wheel does not ship this generated
// header.  A CUDA torch build generates the same single definition.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
