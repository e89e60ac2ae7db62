// Shim for the nvcc compile check only: the CPU torch wheel does not ship this generated
// header.  Every optional CUDA library is reported absent; the CIF kernels use none of them.
#pragma once
#define AT_CUDNN_ENABLED() 0
#define AT_CUSPARSELT_ENABLED() 0
#define AT_HIPSPARSELT_ENABLED() 0
#define AT_ROCM_ENABLED() 0
#define AT_MAGMA_ENABLED() 0
#define NVCC_FLAGS_EXTRA ""
