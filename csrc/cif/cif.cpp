// Schema of the CIF ops, declared once for every backend; the kernels register themselves
// beside it (CPU: cpu/cif_cpu.cpp, CUDA: gpu/cif_cuda.cu) and check their inputs on entry
// (cif_common.h: check_inputs).  Semantics: see w2p/cif.py.
//
// A fragment, not TORCH_LIBRARY: the w2p namespace may be defined only once per process, so
// each op folder (csrc/<op>/) adds its own schemas to it, as torchaudio does.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(w2p, m) {
  // -> (out (B, U_max, C), out_lengths (B,), fire_frames (B, U_max), -1 padded)
  m.def(
      "cif_forward(Tensor hidden, Tensor alphas, Tensor lengths, float threshold, Tensor? target_lengths, "
      "float tail_threshold) -> (Tensor, Tensor, Tensor)");
  // -> (grad_hidden (B, T, C), grad_alphas (B, T)); `out` is the forward output (tail normaliser term).
  m.def(
      "cif_backward(Tensor grad_out, Tensor hidden, Tensor alphas, Tensor lengths, Tensor out, float threshold, "
      "Tensor? target_lengths, float tail_threshold) -> (Tensor, Tensor)");
}
