// The typed-FFI handlers, one per loss and platform. Each serves its loss' three custom-call
// targets (handlers.h). TensorFlow's XLA gets them from tf_targets.cc; JAX gets them as
// capsules from costxent._core (cc/py/core_module.cc), so both run the same handler code.
#pragma once

#include <cstdint>

#include "xla/ffi/api/c_api.h"

namespace costxent {
namespace xla_ffi {

// Which of a loss' three custom calls a handler is serving (its `variant` attribute).
enum class Variant : int32_t { kLoss = 0, kGrad = 1, kReduced = 2 };

struct Handlers {
  XLA_FFI_Handler* softmax;
  XLA_FFI_Handler* sigmoid;
};

// The custom-call target names of each loss' variants, indexed by Variant.
inline constexpr const char* kSoftmaxTargets[] = {
    "costxent_softmax_loss", "costxent_softmax_loss_grad", "costxent_softmax_loss_reduced"};
inline constexpr const char* kSigmoidTargets[] = {
    "costxent_sigmoid_loss", "costxent_sigmoid_loss_grad", "costxent_sigmoid_loss_reduced"};

Handlers host_handlers();  // "Host": the CPU kernels (host.cc)
Handlers cuda_handlers();  // "CUDA": the CUDA kernels (cuda.cc, CUDA builds only)

}  // namespace xla_ffi
}  // namespace costxent
