// Python module init for w2p._C.  The ops live in their own folders (csrc/<op>/: schema with
// TORCH_LIBRARY_FRAGMENT(w2p, m), kernels with TORCH_LIBRARY_IMPL(w2p, CPU|CUDA, m) in cpu/ and
// gpu/) and are reached through torch.ops.w2p.*; this file only reports what was compiled in.
// Load it through w2p._ext.load(), which imports torch (libtorch) first.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
bool cuda_built() {
#ifdef W2P_WITH_CUDA
  return true;
#else
  return false;
#endif
}
bool openmp_built() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "w2p compiled kernels (CIF); ops live under torch.ops.w2p";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled in");
  m.def("openmp_built", &openmp_built, "True when the CPU kernels were compiled with OpenMP");
}
