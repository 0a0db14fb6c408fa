// Registers the handlers (targets.h) with TensorFlow's own XLA, under every target name
// xla_ops.cc emits, when TensorFlow loads the op library.
#include "cc/xla/targets.h"
#include "xla/ffi/api/ffi.h"

namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();  // exported by libtensorflow_cc.so.2
}  // namespace xla::ffi

namespace costxent {
namespace xla_ffi {
namespace {

// The three variants of a loss share one handler (its `variant` attribute says which).
#define COSTXENT_XLA_REGISTER_LOSS(TARGETS, PLATFORM, HANDLER)                             \
  XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), TARGETS[0], PLATFORM, HANDLER);     \
  XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), TARGETS[1], PLATFORM, HANDLER);     \
  XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), TARGETS[2], PLATFORM, HANDLER)

COSTXENT_XLA_REGISTER_LOSS(kSoftmaxTargets, "Host", host_handlers().softmax);
COSTXENT_XLA_REGISTER_LOSS(kSigmoidTargets, "Host", host_handlers().sigmoid);
#if GOOGLE_CUDA
COSTXENT_XLA_REGISTER_LOSS(kSoftmaxTargets, "CUDA", cuda_handlers().softmax);
COSTXENT_XLA_REGISTER_LOSS(kSigmoidTargets, "CUDA", cuda_handlers().sigmoid);
#endif

}  // namespace
}  // namespace xla_ffi
}  // namespace costxent
