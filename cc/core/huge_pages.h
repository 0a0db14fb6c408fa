// Host allocators (TensorFlow's CPU allocator, XLA:CPU's buffers under JAX) hand out large
// outputs as fresh 4 KiB pages, and faulting in 64 MiB of them costs several times the kernel
// itself on a VM. Asking for transparent huge pages before the first write (as NumPy does for
// its large arrays) removes most faults; memory already touched is unaffected, and the call is
// advisory (errors are ignored).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cc/core/problem.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace costxent {

inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The outputs a host kernel call is about to write for the first time: the per-element loss
// and a backprop that is not written over the logits.
template <typename Problem>
void advise_output_pages(const Problem& p) {
  using T = std::remove_const_t<std::remove_pointer_t<decltype(p.logits)>>;
  using A = std::remove_pointer_t<decltype(p.loss)>;
  if (p.loss != nullptr)
    advise_huge_pages(p.loss, sizeof(A) * static_cast<size_t>(loss_elements(p)));
  if (p.backprop != nullptr && static_cast<const void*>(p.backprop) != p.logits)
    advise_huge_pages(p.backprop, sizeof(T) * static_cast<size_t>(p.n * p.c));
}

}  // namespace costxent
