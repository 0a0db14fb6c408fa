// CUDA implementation of the core kernels (cuda.h). The formulas come from row_math.h; this
// file only decides which threads own which elements, and how they reduce.
//
// Softmax rows are walked by a *group* of threads: a power-of-two slice of a warp (several
// rows per warp, small C), a whole block (medium C), or a cluster of blocks joined through
// distributed shared memory (large C, sm_90). Every thread owns S slots of one 16-byte
// vector each, anchored on the 16-byte boundaries of the logits, so full vectors load and
// store with one instruction whatever the row's offset; the partial vectors at the ends of
// a row go element by element. When the group's slots cover the row it stays in registers
// and is read from memory once; rows longer than that (C beyond a cluster, or beyond a block
// on GPUs without clusters) are walked in chunks, once per pass, re-reading from L2.
//
// A row needs one reduction over the group: each thread summarises its elements relative to
// its own maximum (the sum of exp(z - max), the sums of half-shifted logits and of the
// targets' terms; row_math.h's notation) and the summaries combine by rescaling to the
// larger maximum (the "online softmax" merge), so the maximum and every sum of the loss
// arrive together, and exp(z - max) computed for the sum is kept in registers for the
// gradient. The focal loss and a dense cost-matrix weight need one more reduction, because
// their terms depend on the row's log-sum-exp or its argmax.
//
// Each element is read and written only by the thread that owns it, and every gradient
// write comes after the group's last reduction over the row, so backprop may alias logits.
// Reductions are fixed butterfly / in-order trees with no atomics: results are bitwise
// reproducible, and every thread of a group gets the same bits.
//
// Block sums (problem.h) are deterministic without atomics: rows are dealt out in *chunks*
// of a power of two of rows that divides kReduceBlockRows, each chunk to one group, which
// adds its rows' scaled losses in row order into one double. A chunk of kReduceBlockRows
// rows writes its block sum directly; smaller chunks write one partial each into a scratch
// array, and a second small kernel adds each block's partials in chunk order. The chunk size
// depends only on n and the group's shape, never on timing, so the sums are bit-identical
// run to run; it is chosen just small enough that the chunks fill the GPU, which keeps the
// scratch below a few hundred kilobytes.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>

#include "cc/core/cpu_isa.h"
#include "cc/core/cuda.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/row_math.h"

namespace costxent {
namespace cuda {
namespace {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define COSTXENT_CLUSTERS 1
#endif

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// Slots per thread of a block group: 8 row values (4 doubles), which keeps a 1024-thread
// block within 64 registers (a warp group, for rows of up to 32 vectors, has one slot per
// thread).
template <typename T>
constexpr int kSlots = kVec<T> >= 8 ? 1 : (sizeof(T) == 8 ? 2 : 8 / kVec<T>);

constexpr int kRowBlock = 256;  // block size when a block holds several row groups
constexpr int kMaxBlock = 1024;
constexpr int kPortableCluster = 8;
constexpr int kMaxCluster = 16;  // Hopper's non-portable limit
constexpr int kFlatBlock = 256;
constexpr int kSlotBytes = 80;  // the largest value reduced at once (a RowStat of doubles)
// Indices inside a row are 32-bit (offsets into arrays are 64-bit); a row's span of
// vectors may reach this far past c.
constexpr int64_t kMaxClasses = INT32_MAX - 64;
// Chunks are made small enough to give about this many warps work: two waves of an
// H100/H200 (132 SMs x 64 warps), so the last, partial wave costs little.
constexpr int64_t kTargetWarps = 16384;

// ---------------------------------------------------------------------------------------
// Vector access. [j0, j0 + N) is one slot of an array `base`; only elements in [lo, hi) are
// the caller's (a softmax row is [0, c), a sigmoid chunk a range of the flat array).

template <typename U, int N>
struct alignas(16) Pack {
  U v[N];
};

// Index is int inside a softmax row, int64_t over a flat array.
template <int N, typename Index, typename U>
__device__ __forceinline__ bool whole_aligned(const U* base, Index j0, Index lo, Index hi) {
  return j0 >= lo && j0 + N <= hi && reinterpret_cast<uintptr_t>(base + j0) % 16 == 0;
}

// Elements outside [lo, hi) read as zero bits (0.0 in every storage type).
template <int N, typename Index, typename U>
__device__ __forceinline__ Pack<U, N> load(const U* base, Index j0, Index lo, Index hi) {
  if (whole_aligned<N>(base, j0, lo, hi)) return *reinterpret_cast<const Pack<U, N>*>(base + j0);
  Pack<U, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const Index j = j0 + i;
    if (j >= lo && j < hi) {
      pk.v[i] = base[j];
    } else {
      memset(&pk.v[i], 0, sizeof(U));
    }
  }
  return pk;
}

template <int N, typename Index, typename U, typename A>
__device__ __forceinline__ void load_acc(const U* base, Index j0, Index lo, Index hi,
                                         A (&out)[N]) {
  const Pack<U, N> pk = load<N>(base, j0, lo, hi);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_acc(pk.v[i]);
}

// base[j0 + i] = value(i) for the i with j0 + i in [lo, hi). value(i) is evaluated for every
// i (one code path for whole and partial vectors), so it must not read outside the range.
template <int N, typename Index, typename U, typename F>
__device__ __forceinline__ void store(U* base, Index j0, Index lo, Index hi, F value) {
  Pack<U, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_acc<U>(value(i));
  if (whole_aligned<N>(base, j0, lo, hi)) {
    *reinterpret_cast<Pack<U, N>*>(base + j0) = pk;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Index j = j0 + i;
      if (j >= lo && j < hi) base[j] = pk.v[i];
    }
  }
}

// Elements before the first 16-byte boundary at or after p.
template <typename T>
__device__ __forceinline__ int misalignment(const T* p) {
  return static_cast<int>(reinterpret_cast<uintptr_t>(p) % 16 / sizeof(T));
}

// ---------------------------------------------------------------------------------------
// Groups and their reductions.

template <typename V>
__device__ __forceinline__ V shfl_xor(const V& v, int offset, unsigned mask) {
  static_assert(sizeof(V) % 4 == 0, "reduced values are whole 32-bit words");
  uint32_t w[sizeof(V) / 4];
  memcpy(w, &v, sizeof(V));
#pragma unroll
  for (size_t k = 0; k < sizeof(V) / 4; ++k) w[k] = __shfl_xor_sync(mask, w[k], offset);
  V out;
  memcpy(&out, w, sizeof(V));
  return out;
}

// lanes: a power of two up to 32; groups of that many lanes are aligned within the warp.
// combine must be commutative: a step on lanes l and l^o computes f(a, b) and f(b, a), and
// commutativity is what gives both lanes the same bits.
template <typename V, typename F>
__device__ __forceinline__ V butterfly(V v, int lanes, unsigned mask, F combine) {
  for (int o = lanes / 2; o > 0; o /= 2) v = combine(v, shfl_xor(v, o, mask));
  return v;
}

// The sum of one double per group leader of a warp (the lanes that are multiples of
// `width`), in a fixed tree order; lane 0 gets it.
__device__ __forceinline__ double warp_leader_sum(double v, int width) {
  for (int o = 16; o >= width; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Row groups share an interface: size() threads, this thread's rank() (0 is the leader(),
// which writes the loss), the group's lanes() within one warp and their mask(), reduce().
// Rows are dealt out in chunks (see the top of the file): first_chunk() / chunk_stride()
// walk this group's chunks, first_row() / row_stride() its rows inside one, and
// write_partial() stores the chunk's sum of the leaders' partials.

// `width` lanes of one warp (a power of two up to 32); a chunk per warp, whose 32 / width
// groups take consecutive rows.
class WarpGroup {
 public:
  static constexpr int kSlotsPerThread = 1;
  static constexpr bool kChunked = false;  // the launcher makes the slots cover the row
  static constexpr int kMaxThreads = kRowBlock;
  // 64 registers, as for a full block: one vector per thread in flight, so the occupancy
  // is what hides memory latency.
  static constexpr int kMinBlocks = 2048 / kRowBlock / 2;

  __device__ WarpGroup(int width, int) : width_(width) {
    const int lane = threadIdx.x & 31;
    mask_ = width == 32 ? 0xffffffffu : ((1u << width) - 1u) << (lane & ~(width - 1));
  }
  __device__ int size() const { return width_; }
  __device__ int rank() const { return static_cast<int>(threadIdx.x) & (width_ - 1); }
  __device__ bool leader() const { return rank() == 0; }
  __device__ int lanes() const { return width_; }
  __device__ unsigned mask() const { return mask_; }
  __device__ int64_t first_chunk() const {
    return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  }
  __device__ int64_t chunk_stride() const { return static_cast<int64_t>(gridDim.x) * blockDim.x / 32; }
  __device__ int first_row() const { return static_cast<int>(threadIdx.x & 31) / width_; }
  __device__ int row_stride() const { return 32 / width_; }
  template <typename V, typename F>
  __device__ V reduce(V v, F combine, const V&) const {
    return butterfly(v, width_, mask_, combine);
  }
  // Every lane of the warp calls this (rows past n included: their partial is 0).
  __device__ void write_partial(double partial, double scale, double* out) const {
    partial = warp_leader_sum(partial, width_);
    if ((threadIdx.x & 31) == 0) *out = scale * partial;
  }

 private:
  int width_;
  unsigned mask_;
};

// Per-warp and per-block partials, in two alternating sets: the barrier of the next
// reduction separates one reduction's reads from the writes of the one after.
alignas(16) __shared__ unsigned char block_partials[2][32][kSlotBytes];
alignas(16) __shared__ unsigned char cluster_partials[2][kMaxCluster][kSlotBytes];

// A whole block (blockDim.x a multiple of 32) times `clusters` blocks; one row at a time.
template <int S>
class BlockGroup {
 public:
  static constexpr int kSlotsPerThread = S;
  static constexpr bool kChunked = true;
  static constexpr int kMaxThreads = kMaxBlock;
  static constexpr int kMinBlocks = 1;

  __device__ BlockGroup(int, int clusters) : clusters_(clusters) {
#if defined(COSTXENT_CLUSTERS)
    if (clusters > 1) block_rank_ = static_cast<int>(cooperative_groups::this_cluster().block_rank());
#endif
  }
  __device__ int size() const { return static_cast<int>(blockDim.x) * clusters_; }
  __device__ int rank() const { return block_rank_ * static_cast<int>(blockDim.x) + threadIdx.x; }
  __device__ bool leader() const { return rank() == 0; }
  __device__ int lanes() const { return 32; }
  __device__ unsigned mask() const { return 0xffffffffu; }
  __device__ int64_t first_chunk() const { return blockIdx.x / clusters_; }
  __device__ int64_t chunk_stride() const { return gridDim.x / clusters_; }
  __device__ int first_row() const { return 0; }
  __device__ int row_stride() const { return 1; }

  // Three fixed trees: the warp's lanes, the block's warps (one partial per lane of every
  // warp, so each warp combines them with one butterfly instead of a serial loop), then the
  // cluster's blocks. Each block pushes its total into every peer's shared memory before
  // the cluster barrier and then reads only its own, so no block touches another's memory
  // after the last barrier and a block may exit as soon as its rows are done.
  template <typename V, typename F>
  __device__ V reduce(V v, F combine, const V& identity) {
    static_assert(sizeof(V) <= kSlotBytes, "enlarge kSlotBytes");
    const int lane = threadIdx.x & 31;
    const int warps = static_cast<int>(blockDim.x / 32);
    v = butterfly(v, 32, 0xffffffffu, combine);
    if (warps > 1) {
      if (lane == 0) *reinterpret_cast<V*>(block_partials[parity_][threadIdx.x / 32]) = v;
      __syncthreads();
      v = lane < warps ? *reinterpret_cast<const V*>(block_partials[parity_][lane]) : identity;
      v = butterfly(v, 32, 0xffffffffu, combine);
    }
    if (clusters_ > 1) v = across_cluster(v, combine, identity);
    parity_ ^= 1;
    return v;
  }

  __device__ void write_partial(double partial, double scale, double* out) const {
    if (leader()) *out = scale * partial;
  }

 private:
  template <typename V, typename F>
  __device__ V across_cluster(V v, F combine, const V& identity) {
#if defined(COSTXENT_CLUSTERS)
    auto cluster = cooperative_groups::this_cluster();
    if (threadIdx.x < static_cast<unsigned>(clusters_)) {
      V* mine = reinterpret_cast<V*>(cluster_partials[parity_][block_rank_]);
      *cluster.map_shared_rank(mine, static_cast<unsigned>(threadIdx.x)) = v;
    }
    cluster.sync();
    const int lane = threadIdx.x & 31;
    v = lane < clusters_ ? *reinterpret_cast<const V*>(cluster_partials[parity_][lane]) : identity;
    return butterfly(v, 32, 0xffffffffu, combine);
#else
    __trap();  // the launcher only asks for clusters where this code was built for them
    return v;
#endif
  }

  int clusters_;
  int block_rank_ = 0;
  int parity_ = 0;
};

template <typename A, int N>
struct Sums {
  A v[N];
};

template <typename A, int N>
__device__ __forceinline__ Sums<A, N> add(const Sums<A, N>& a, const Sums<A, N>& b) {
  Sums<A, N> out;
#pragma unroll
  for (int k = 0; k < N; ++k) out.v[k] = a.v[k] + b.v[k];
  return out;
}

// ---------------------------------------------------------------------------------------
// Softmax modes, fixed at compile time: which loss, and sparse or dense labels. The weight
// mode stays a run-time choice: it only changes which weight one row loads (one branch per
// row, the same in every thread), except a dense cost-matrix weight, which costs a
// reduction.

enum class Kind { kCrossEntropy, kFocal, kExpectedCost };

template <Kind K, bool kDenseLabels>
struct Mode {
  static constexpr Kind kKind = K;
  static constexpr bool kDense = kDenseLabels;
};

// The sums one row's reduction carries beside the maximum, in RowStat::v in this order.
// Three kinds of entry: exp-weighted sums (of exp(z - max) over the elements below the max,
// of cost * exp(z - max)) rescale by exp(max_thread - max) when summaries merge;
// shift-linear sums of the half-shifted logits h = z / 2 - max / 2 (of h / C, of t h) gain
// coef * (max_thread / 2 - max / 2), their coefficients (the share of classes, count / C,
// and the sum of t) following them in the same order; the rest add plainly. Summed as
// h / C and count / C, the smoothing mean cannot leave the float range.
enum Field {
  kExpRest,
  kCostSum,
  kHalfMean,
  kTargetDotHalf,
  kShare,
  kTargetSum,
  kLabelLogit,   // z_y of a sparse label
  kClassWeight,  // sum t_j a_j of dense labels
  kFields
};

template <typename M>
struct Layout {
  static constexpr bool has(Field f) {
    const bool expected = M::kKind == Kind::kExpectedCost;
    const bool smoothing = M::kKind != Kind::kFocal;  // mean h, for eps
    const bool targets = M::kDense && M::kKind != Kind::kFocal;
    switch (f) {
      case kExpRest:
        return true;
      case kCostSum:
        return expected;
      case kHalfMean:
      case kShare:
        return smoothing;
      case kTargetDotHalf:
      case kTargetSum:
        return targets;
      case kLabelLogit:
        return !M::kDense;
      case kClassWeight:
        return M::kDense && !expected;
      default:
        return false;
    }
  }
  static constexpr int at(Field f) {
    int k = 0;
    for (int e = 0; e < f; ++e) k += has(static_cast<Field>(e));
    return k;
  }
  static constexpr int kExpN = at(kHalfMean);
  static constexpr int kLinN = at(kShare) - kExpN;
  static constexpr int kN = at(kFields);
};

// A summary of some of a row's elements: their maximum and its lowest index, how many reach
// it (their exp(z - max) is exactly 1, kept apart from the rest for log_sum_exp_with), a sum
// of (z - z) that is NaN iff some z is not finite, and the sums of Layout relative to max.
template <typename A, typename M>
struct RowStat {
  A max;
  A at_max;
  A nonfinite;
  A v[Layout<M>::kN];  // Layout's fields
  int arg;
};

template <typename A, typename M>
__device__ __forceinline__ RowStat<A, M> empty_stat() {
  RowStat<A, M> s;
  s.max = -INFINITY;
  s.at_max = A(0);
  s.nonfinite = A(0);
#pragma unroll
  for (int k = 0; k < Layout<M>::kN; ++k) s.v[k] = A(0);
  s.arg = INT_MAX;
  return s;
}

// Products that are never fused into a neighbouring add: merge(a, b) and merge(b, a) must
// give the same bits, and a contraction of x * fx + y * fy into fma(x, fx, y * fy) would
// round the two orders differently.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// coef * d, where an empty sum (coef 0) contributes 0 even when d is infinite (an empty
// summary's max is -inf).
template <typename A>
__device__ __forceinline__ A shift_term(A coef, A d) {
  return coef == A(0) ? A(0) : mul_rn(coef, d);
}

// The online-softmax merge; commutative to the bit.
template <typename A, typename M>
__device__ __forceinline__ RowStat<A, M> merge(const RowStat<A, M>& a, const RowStat<A, M>& b) {
  using L = Layout<M>;
  const bool take_b = b.max > a.max || (b.max == a.max && b.arg < a.arg);
  RowStat<A, M> r;
  r.max = take_b ? b.max : a.max;
  r.arg = take_b ? b.arg : a.arg;
  r.nonfinite = a.nonfinite + b.nonfinite;
  // A summary at the merged max needs no rescaling (two empty ones: -inf - -inf is NaN).
  const bool a_top = a.max == r.max;
  const bool b_top = b.max == r.max;
  const A half_max = A(0.5) * r.max;
  const A fa = a_top ? A(1) : exp(a.max - r.max);
  const A fb = b_top ? A(1) : exp(b.max - r.max);
  const A ha = a_top ? A(0) : half_shift(a.max, half_max);
  const A hb = b_top ? A(0) : half_shift(b.max, half_max);
  r.at_max = (a_top ? a.at_max : A(0)) + (b_top ? b.at_max : A(0));
  r.v[L::at(kExpRest)] = (a_top ? a.v[L::at(kExpRest)] : mul_rn(a.v[L::at(kExpRest)] + a.at_max, fa)) +
                         (b_top ? b.v[L::at(kExpRest)] : mul_rn(b.v[L::at(kExpRest)] + b.at_max, fb));
#pragma unroll
  for (int k = L::at(kExpRest) + 1; k < L::kExpN; ++k)
    r.v[k] = mul_rn(a.v[k], fa) + mul_rn(b.v[k], fb);
#pragma unroll
  for (int k = L::kExpN; k < L::kExpN + L::kLinN; ++k)
    r.v[k] = (a.v[k] + shift_term(a.v[k + L::kLinN], ha)) +
             (b.v[k] + shift_term(b.v[k + L::kLinN], hb));
#pragma unroll
  for (int k = L::kExpN + L::kLinN; k < L::kN; ++k) r.v[k] = a.v[k] + b.v[k];
  return r;
}

// ---------------------------------------------------------------------------------------
// A row as the group sees it: this thread's slots, chunk by chunk.

template <typename T, typename A, typename Group, bool kDense>
class RowWalker {
 public:
  static constexpr int V = kVec<T>;
  static constexpr int S = Group::kSlotsPerThread;

  // dense: the row of dense labels (kDense), else the sparse label y.
  __device__ RowWalker(const T* z, const T* dense, int y, int c, const Group& g)
      : row_(z), dense_(dense), y_(y), c_(c), group_size_(g.size()), rank_(g.rank()) {
    head_ = misalignment(z);
    if (Group::kChunked) {
      const int vectors = (head_ + c + V - 1) / V;
      const int per_chunk = group_size_ * S;
      chunks_ = (vectors + per_chunk - 1) / per_chunk;
    }
  }

  // One chunk: the whole row when its slots cover it, so values set by one pass are still
  // there in the next.
  __device__ bool resident() const { return chunks_ == 1; }

  // f(chunk) for each chunk, its logits loaded into slot(s) (zero outside the row). Every
  // thread of the group makes the same calls.
  template <typename F>
  __device__ void chunks(F f) {
    for (int chunk = 0; chunk < chunks_; ++chunk) {
      if (chunk != loaded_) {
#pragma unroll
        for (int s = 0; s < S; ++s) load_acc<V>(row_, first(chunk, s), 0, c_, values_[s]);
        loaded_ = chunk;
      }
      f(chunk);
    }
  }

  // Slot s of a chunk: vector (chunk * S + s) * group_size + rank of the row's span, which
  // starts head_ elements before the row so that vectors fall on 16-byte boundaries.
  __device__ int first(int chunk, int s) const {
    return ((chunk * S + s) * group_size_ + rank_) * V - head_;
  }
  __device__ A (&slot(int s))[V] { return values_[s]; }

  // The unsmoothed targets of [j0, j0 + V), zero outside the row.
  __device__ void targets(int j0, A (&t)[V]) const {
    if (kDense) {
      load_acc<V>(dense_, j0, 0, c_, t);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) t[i] = j0 + i == y_ ? A(1) : A(0);
    }
  }

  // out_j = f(j, slot value, t_j) for this thread's elements.
  template <typename F>
  __device__ void write(T* out, F f) {
    chunks([&](int chunk) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int j0 = first(chunk, s);
        A t[V];
        targets(j0, t);
        store<V>(out, j0, 0, c_, [&](int i) { return f(j0 + i, values_[s][i], t[i]); });
      }
    });
  }

  // out_j = value, without reading the row.
  __device__ void fill(T* out, A value) const {
    for (int chunk = 0; chunk < chunks_; ++chunk)
#pragma unroll
      for (int s = 0; s < S; ++s) store<V>(out, first(chunk, s), 0, c_, [&](int) { return value; });
  }

  __device__ bool in_row(int j) const { return j >= 0 && j < c_; }
  __device__ const T* dense() const { return dense_; }

 private:
  const T* row_;
  const T* dense_;
  int y_;
  int c_;
  int group_size_;
  int rank_;
  int head_;
  int chunks_ = 1;
  int loaded_ = -1;
  A values_[S][V];  // this thread's slots of the loaded chunk
};

// c_j = sum_k t_k M[k, j] for the slot's columns, over the nonzero t_k (DESIGN 2.2 with
// dense labels). Each warp scans the target row 32 (or the group's lanes) at a time and
// broadcasts its nonzeros; k ascends, as in the CPU kernel.
template <typename T, typename A, int V, typename Group>
__device__ void dense_costs(const Group& g, const T* t, const A* cost, int c, int j0,
                            A (&out)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = A(0);
  const int lanes = g.lanes();
  const int lane = threadIdx.x % lanes;
  const int base = (threadIdx.x & 31) - lane;
  for (int k0 = 0; k0 < c; k0 += lanes) {
    const A tk = k0 + lane < c ? to_acc(t[k0 + lane]) : A(0);
    unsigned nonzero = __ballot_sync(g.mask(), tk != A(0)) >> base;
    if (lanes < 32) nonzero &= (1u << lanes) - 1u;
    while (nonzero != 0) {
      const int b = __ffs(nonzero) - 1;
      nonzero &= nonzero - 1;
      const A tb = __shfl_sync(g.mask(), tk, base + b);
      const A* row = cost + static_cast<int64_t>(k0 + b) * c;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int j = j0 + i;
        if (j >= 0 && j < c) out[i] += tb * __ldg(row + j);
      }
    }
  }
}

// One softmax row (DESIGN 2.1, 2.2); the CPU's softmax_row in cpu_kernels.cc, with the
// passes over a scratch row replaced by passes over the group's slots. Writes the loss and
// the gradient scaled by row_scale * scale; returns row_scale * loss in double (0 for an
// ignored row) for the block sums, in every thread of the group.
template <typename M, typename T, typename A, typename Group>
__device__ double softmax_row(const SoftmaxProblem<T, A>& p, int64_t row, Group& g) {
  using L = Layout<M>;
  constexpr int V = kVec<T>;
  constexpr int S = Group::kSlotsPerThread;
  const int c = static_cast<int>(p.c);
  bool ignored = false;
  bool bad_label = false;
  int y = -1;
  if (!M::kDense) {
    const int64_t label = label_at(p, row);
    ignored = p.has_ignore_class && label == p.ignore_class;
    bad_label = !ignored && (label < 0 || label >= c);
    if (!ignored && !bad_label) y = static_cast<int>(label);
  }
  const int64_t offset = row * p.c;
  RowWalker<T, A, Group, M::kDense> walk(p.logits + offset, M::kDense ? p.dense + offset : nullptr,
                                          y, c, g);
  T* out = p.backprop != nullptr ? p.backprop + offset : nullptr;
  auto finish = [&](A loss, A grad, double term) {
    if (g.leader() && p.loss != nullptr) p.loss[row] = loss;
    if (out != nullptr) walk.fill(out, grad);
    return term;
  };
  const A nan = quiet_nan(A(0));
  if (ignored) return finish(A(0), A(0), 0.0);
  if (bad_label) return finish(nan, nan, static_cast<double>(nan));

  const A rs = p.row_scale != nullptr ? __ldg(p.row_scale + row) : A(1);
  const A f = rs * p.scale;  // the gradient's scale
  const A eps = p.label_smoothing;
  const bool smoothing = eps != A(0);
  const A inv_c = A(1) / static_cast<A>(c);
  const bool sparse_focal_label_only = M::kKind == Kind::kFocal && !M::kDense && !smoothing;
  // exp(z - max_thread) replaces z in the registers when no later pass needs z.
  const bool cache_exp =
      walk.resident() && (M::kKind != Kind::kFocal || sparse_focal_label_only);
  const bool class_weight = p.weight_mode == WeightMode::kClass;
  const A* cost_row = M::kDense ? p.weights : p.weights + static_cast<int64_t>(y) * c;
  auto costs = [&](int j0, A(&cost)[V]) {
    if (M::kDense) {
      dense_costs<T, A, V>(g, walk.dense(), p.weights, c, j0, cost);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) cost[i] = walk.in_row(j0 + i) ? __ldg(cost_row + j0 + i) : A(0);
    }
  };

  // This thread's summary, merged chunk by chunk.
  RowStat<A, M> st = empty_stat<A, M>();
  walk.chunks([&](int chunk) {
    RowStat<A, M> cs = empty_stat<A, M>();
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int j0 = walk.first(chunk, s);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A zj = walk.slot(s)[i];
        if (!walk.in_row(j0 + i)) continue;
        cs.nonfinite += zj - zj;
        if (zj > cs.max) {
          cs.max = zj;
          cs.arg = j0 + i;
        }
      }
    }
    const A m = cs.max;
    const A half_m = A(0.5) * m;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int j0 = walk.first(chunk, s);
      A t[V];
      if (L::has(kTargetSum) || (L::has(kClassWeight) && class_weight)) walk.targets(j0, t);
      A cost[V];
      if constexpr (L::has(kCostSum)) costs(j0, cost);
      A(&z)[V] = walk.slot(s);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int j = j0 + i;
        if (!walk.in_row(j)) continue;
        const A e = exp(z[i] - m);
        const bool top = z[i] == m;
        cs.at_max += top ? A(1) : A(0);
        cs.v[L::at(kExpRest)] += top ? A(0) : e;
        if constexpr (L::has(kCostSum)) cs.v[L::at(kCostSum)] += cost[i] * e;
        const A h = half_shift(z[i], half_m);
        if constexpr (L::has(kHalfMean)) {
          if (smoothing) {
            cs.v[L::at(kHalfMean)] += h * inv_c;
            cs.v[L::at(kShare)] += inv_c;
          }
        }
        if constexpr (L::has(kTargetSum)) {
          cs.v[L::at(kTargetDotHalf)] += t[i] * h;
          cs.v[L::at(kTargetSum)] += t[i];
        }
        if constexpr (L::has(kLabelLogit)) {
          if (j == y) cs.v[L::at(kLabelLogit)] = z[i];
        }
        if constexpr (L::has(kClassWeight)) {
          if (class_weight) cs.v[L::at(kClassWeight)] += t[i] * __ldg(p.weights + j);
        }
        if (cache_exp) z[i] = e;
      }
    }
    st = chunk == 0 ? cs : merge(st, cs);
  });
  const A thread_max = st.max;
  st = g.reduce(st, merge<A, M>, empty_stat<A, M>());
  if (!(st.nonfinite == A(0))) return finish(nan, nan, static_cast<double>(nan));

  const A m = st.max;
  const A half_m = A(0.5) * m;
  const int jhat = st.arg;  // lowest index on ties
  const A rest = st.v[L::at(kExpRest)];
  const LogSumExp<A> lse_and_inv = log_sum_exp_with<StdMath>(rest, st.at_max);
  const A lse = lse_and_inv.lse;
  const A inv_sum = lse_and_inv.inv_sum;
  // e_j = exp(z_j - m) from a slot value: exp(z - max_thread) cached, or z.
  const A cached_scale = exp(thread_max - m);
  auto expo = [&](A v) { return cache_exp ? v * cached_scale : exp(v - m); };
  auto prob = [&](A v) { return expo(v) * inv_sum; };
  auto smooth = [&](A tj) { return smooth_target(tj, eps, inv_c); };

  A target_sum = A(1);
  A ce = A(0);
  if constexpr (L::has(kHalfMean)) {
    A t_sum = A(1);
    A t_dot_half;
    if constexpr (L::has(kTargetSum)) {
      t_sum = st.v[L::at(kTargetSum)];
      t_dot_half = st.v[L::at(kTargetDotHalf)];
    } else {
      t_dot_half = half_shift(st.v[L::at(kLabelLogit)], half_m);
    }
    target_sum = smoothed_sum(t_sum, eps);
    ce = cross_entropy_half(
        target_sum, lse,
        smoothing ? smoothed_dot(t_dot_half, eps, st.v[L::at(kHalfMean)]) : t_dot_half);
  }

  if constexpr (M::kKind == Kind::kExpectedCost) {
    const A lam = p.ce_weight;
    const A expected = st.v[L::at(kCostSum)] * inv_sum;
    const A loss = expected + lam * ce;
    if (g.leader() && p.loss != nullptr) p.loss[row] = loss;
    if (out != nullptr) {
      walk.chunks([&](int chunk) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const int j0 = walk.first(chunk, s);
          A t[V], cost[V];
          walk.targets(j0, t);
          costs(j0, cost);
          store<V>(out, j0, 0, c, [&](int i) {
            return f * expected_cost_grad(prob(walk.slot(s)[i]), cost[i], expected, lam,
                                          smooth(t[i]), target_sum);
          });
        }
      });
    }
    return static_cast<double>(rs) * static_cast<double>(loss);
  } else {
    // Per-example weight from the unsmoothed target (DESIGN 2.1); a dense cost-matrix weight
    // needs jhat, so it is reduced here (with the focal sums when there are any).
    const bool dense_cost = M::kDense && p.weight_mode == WeightMode::kCost;
    A w = A(1);
    if constexpr (M::kDense) {
      if (class_weight) w = st.v[L::at(kClassWeight)];
    } else {
      if (class_weight) w = __ldg(p.weights + y);
      if (p.weight_mode == WeightMode::kCost) w = __ldg(p.weights + static_cast<int64_t>(y) * c + jhat);
    }

    if constexpr (M::kKind == Kind::kCrossEntropy) {
      if (dense_cost) {
        Sums<A, 1> r{};
        walk.chunks([&](int chunk) {
#pragma unroll
          for (int s = 0; s < S; ++s) {
            const int j0 = walk.first(chunk, s);
            A t[V];
            walk.targets(j0, t);
#pragma unroll
            for (int i = 0; i < V; ++i)
              if (walk.in_row(j0 + i))
                r.v[0] += t[i] * __ldg(p.weights + static_cast<int64_t>(j0 + i) * c + jhat);
          }
        });
        w = g.reduce(r, add<A, 1>, Sums<A, 1>{}).v[0];
      }
      const A loss = w * ce;
      if (g.leader() && p.loss != nullptr) p.loss[row] = loss;
      const A wf = w * f;
      const A k = wf * target_sum * inv_sum;
      if (out != nullptr) {
        if (cache_exp) {
          const A k_thread = k * cached_scale;
          walk.write(out, [&](int, A v, A tj) { return plain_grad(k_thread, v, wf * smooth(tj)); });
        } else {
          walk.write(out, [&](int, A v, A tj) { return plain_grad(k, exp(v - m), wf * smooth(tj)); });
        }
      }
      return static_cast<double>(rs) * static_cast<double>(loss);
    }

    // Focal: sum_k ts_k phi_k and sum_k ts_k g_k over the classes with ts_k != 0; with a
    // sparse unsmoothed label that is the label's class alone.
    const A gamma = p.focal_gamma;
    A phi_sum = A(0);  // halved: sum ts phi / 2
    A g_sum = A(0);
    if constexpr (L::has(kLabelLogit)) {
      if (sparse_focal_label_only) {
        const FocalTerms<A> terms =
            focal_terms(A(0.5) * lse - half_shift(st.v[L::at(kLabelLogit)], half_m), gamma);
        phi_sum = terms.half_phi;
        g_sum = terms.g;
      }
    }
    if (!sparse_focal_label_only) {
      Sums<A, 3> r{};
      walk.chunks([&](int chunk) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
          const int j0 = walk.first(chunk, s);
          A t[V];
          walk.targets(j0, t);
#pragma unroll
          for (int i = 0; i < V; ++i) {
            const int j = j0 + i;
            if (!walk.in_row(j)) continue;
            if (dense_cost) r.v[2] += t[i] * __ldg(p.weights + static_cast<int64_t>(j) * c + jhat);
            const A ts = smooth(t[i]);
            if (ts == A(0)) continue;
            const FocalTerms<A> terms =
                focal_terms(A(0.5) * lse - half_shift(walk.slot(s)[i], half_m), gamma);
            r.v[0] += ts * terms.half_phi;
            r.v[1] += ts * terms.g;
          }
        }
      });
      r = g.reduce(r, add<A, 3>, Sums<A, 3>{});
      phi_sum = r.v[0];
      g_sum = r.v[1];
      if (dense_cost) w = r.v[2];
    }
    const A loss = w * (A(2) * phi_sum);
    if (g.leader() && p.loss != nullptr) p.loss[row] = loss;
    const A wf = w * f;
    if (out != nullptr) {
      if (sparse_focal_label_only) {
        walk.write(out, [&](int j, A v, A) {
          return j == y ? focal_grad(wf, prob(v), A(1), g_sum, g_sum) : -wf * prob(v) * g_sum;
        });
      } else {
        walk.write(out, [&](int, A v, A tj) {
          const A ts = smooth(tj);
          const A gj =
              ts == A(0) ? A(0) : focal_terms(A(0.5) * lse - half_shift(v, half_m), gamma).g;
          return focal_grad(wf, prob(v), ts, gj, g_sum);
        });
      }
    }
    return static_cast<double>(rs) * static_cast<double>(loss);
  }
}

// How rows are dealt out: chunks of `rows` rows (a power of two dividing
// kReduceBlockRows), and where each chunk's sum of row_scale * loss goes, times `scale`
// (nullptr: nowhere). A block sum is scale * (its rows' sum), as on the CPU: a chunk that is
// a whole block applies the problem's scale itself, smaller ones leave it to
// block_sums_kernel.
struct Chunks {
  int64_t rows;
  int64_t count;
  double* partials;
  double scale;
};

// width: lanes per row for a WarpGroup; clusters: blocks per row for a BlockGroup (> 1 only
// in a cluster launch of that size).
template <typename M, typename T, typename A, typename Group>
__global__ void __launch_bounds__(Group::kMaxThreads, Group::kMinBlocks)
    softmax_kernel(const SoftmaxProblem<T, A> p, const Chunks chunks, int width, int clusters) {
  Group g(width, clusters);
  for (int64_t k = g.first_chunk(); k < chunks.count; k += g.chunk_stride()) {
    const int64_t row0 = k * chunks.rows;
    double partial = 0;
    for (int64_t r = g.first_row(); r < chunks.rows && row0 + r < p.n; r += g.row_stride())
      partial += softmax_row<M>(p, row0 + r, g);
    if (chunks.partials != nullptr) g.write_partial(partial, chunks.scale, chunks.partials + k);
  }
}

// block_sums[b] = scale * the partials [b * per_block, (b + 1) * per_block) added in a fixed
// order, a warp each.
__global__ void __launch_bounds__(kFlatBlock)
    block_sums_kernel(const double* partials, int64_t count, int64_t per_block, int64_t blocks,
                      double scale, double* block_sums) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; b < blocks;
       b += stride) {
    const int64_t end = std::min((b + 1) * per_block, count);
    double sum = 0;
    for (int64_t k = b * per_block + lane; k < end; k += 32) sum += partials[k];
    sum = warp_leader_sum(sum, 1);
    if (lane == 0) block_sums[b] = scale * sum;
  }
}

// ---------------------------------------------------------------------------------------
// Sigmoid: a warp per chunk of the flat [n, c] array (a piece of one reduction block's
// elements), its lanes taking the chunk's 16-byte vectors in turn.

struct ElementChunks {
  int64_t block_elements;  // c * kReduceBlockRows
  int64_t piece;           // elements per chunk
  int64_t pieces;          // chunks per reduction block
  int64_t count;
  double* partials;  // one per chunk, or nullptr; as Chunks
  double scale;
};

// Row and column of a flat element; columns advance one element at a time.
struct Position {
  int64_t row;
  int64_t col;
};

__device__ __forceinline__ void advance(Position& at, int64_t c) {
  if (++at.col == c) {
    at.col = 0;
    ++at.row;
  }
}

template <bool kFocal, typename T, typename A>
__global__ void __launch_bounds__(kFlatBlock)
    sigmoid_kernel(const SigmoidProblem<T, A> p, const ElementChunks chunks) {
  constexpr int V = kVec<T>;
  const int64_t total = p.n * p.c;
  const int head = misalignment(p.logits);
  const int lane = threadIdx.x & 31;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t k = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
       k < chunks.count; k += stride) {
    const int64_t block = k / chunks.pieces;
    const int64_t block_begin = block * chunks.block_elements;
    const int64_t begin = block_begin + (k - block * chunks.pieces) * chunks.piece;
    const int64_t end =
        std::min(std::min(begin + chunks.piece, block_begin + chunks.block_elements), total);
    double partial = 0;
    for (int64_t j0 = ((begin + head) / V + lane) * V - head; j0 < end; j0 += 32 * V) {
      A z[V], y[V], loss[V], grad[V];
      load_acc<V>(p.logits, j0, begin, end, z);
      load_acc<V>(p.labels, j0, begin, end, y);
      // Row and column of the first element, from its offset in the reduction block: a
      // 32-bit division wherever a block's elements fit 32 bits (a 64-bit one costs several
      // times more, once per vector).
      const int64_t local = std::max(j0, begin) - block_begin;
      Position at;
      if (chunks.block_elements <= UINT32_MAX) {
        const uint32_t l = static_cast<uint32_t>(local);
        const uint32_t cc = static_cast<uint32_t>(p.c);
        at = {block * kReduceBlockRows + l / cc, static_cast<int64_t>(l % cc)};
      } else {
        at = {block * kReduceBlockRows + local / p.c, local % p.c};
      }
      A scaled = A(0);  // sum of row_scale * loss over the vector
#pragma unroll
      for (int i = 0; i < V; ++i) {
        loss[i] = grad[i] = A(0);
        const int64_t e = j0 + i;
        if (e < begin || e >= end) continue;
        const A rs = p.row_scale != nullptr ? __ldg(p.row_scale + at.row) : A(1);
        if (y[i] < A(0) || y[i] > A(1)) {
          loss[i] = grad[i] = quiet_nan(A(0));
        } else {
          const SigmoidTerms<A> terms = sigmoid_terms_with<kFocal, StdMath>(
              z[i], smooth_binary_label(y[i], p.label_smoothing),
              class_value(p.pos_weight, p.pos_weight_size, at.col),
              class_value(p.neg_weight, p.neg_weight_size, at.col), p.focal_gamma);
          loss[i] = terms.loss;
          const A es = p.element_scale != nullptr ? __ldg(p.element_scale + e) : A(1);
          grad[i] = p.scale * rs * es * terms.grad;
        }
        scaled += rs * loss[i];
        advance(at, p.c);
      }
      if (p.loss != nullptr) store<V>(p.loss, j0, begin, end, [&](int i) { return loss[i]; });
      if (p.backprop != nullptr)
        store<V>(p.backprop, j0, begin, end, [&](int i) { return grad[i]; });
      partial += static_cast<double>(scaled);
    }
    if (chunks.partials != nullptr) {
      partial = warp_leader_sum(partial, 1);
      if (lane == 0) chunks.partials[k] = chunks.scale * partial;
    }
  }
}

// out = in * *scale; nothing at all when in == out and *scale == 1 (the reduced losses'
// usual upstream gradient), decided here so the host never waits for the scalar.
template <typename T, typename A>
__global__ void __launch_bounds__(kFlatBlock)
    scale_kernel(const T* in, const A* scale, T* out, int64_t count) {
  constexpr int V = kVec<T>;
  const A s = __ldg(scale);
  if (s == A(1) && in == out) return;
  const int head = misalignment(in);
  const int64_t vectors = (head + count + V - 1) / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors;
       v += stride) {
    const int64_t j0 = v * V - head;
    A x[V];
    load_acc<V>(in, j0, int64_t{0}, count, x);
    store<V>(out, j0, int64_t{0}, count, [&](int i) { return x[i] * s; });
  }
}

// ---------------------------------------------------------------------------------------
// Host side.

struct Device {
  int id = 0;
  int sms = 1;
  int major = 0;
};

cudaError_t current_device(Device* d) {
  cudaError_t status = cudaGetDevice(&d->id);
  if (status != cudaSuccess) return status;
  // Attribute queries cost a driver call; the answers never change for a device.
  constexpr int kCached = 64;
  static std::atomic<int> cached_sms[kCached];
  static std::atomic<int> cached_major[kCached];
  const bool cacheable = d->id >= 0 && d->id < kCached;
  if (cacheable) {
    d->sms = cached_sms[d->id].load(std::memory_order_acquire);  // published last
    if (d->sms > 0) {
      d->major = cached_major[d->id].load(std::memory_order_relaxed);
      return cudaSuccess;
    }
  }
  status = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, d->id);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&d->major, cudaDevAttrComputeCapabilityMajor, d->id);
  if (status == cudaSuccess && cacheable) {
    cached_major[d->id].store(d->major, std::memory_order_relaxed);
    cached_sms[d->id].store(d->sms, std::memory_order_release);
  }
  return status;
}

// A 1-D thread-block cluster of `clusters` blocks, as a launch attribute.
cudaLaunchAttribute cluster_attribute(int64_t clusters) {
  cudaLaunchAttribute cluster = {};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(clusters);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  return cluster;
}

template <typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, int64_t blocks, int threads, int clusters,
                   cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.stream = stream;
  cudaLaunchAttribute cluster = cluster_attribute(clusters);
  if (clusters > 1) {
    config.attrs = &cluster;
    config.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&config, kernel, args...);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int pow2_at_least(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

// A grid of at most a few waves: groups loop over chunks, so more blocks only add launch work.
int64_t grid_for(int64_t blocks, int threads, const Device& d) {
  const int64_t cap = static_cast<int64_t>(d.sms) * (2048 / threads) * 8;
  return blocks < cap ? blocks : cap;
}

// Chunks for groups of `threads` threads that take `min_rows` rows at a time: the largest
// that still gives about kTargetWarps warps work. It depends only on n and the group's
// shape, so block sums are the same on every run.
Chunks plan_chunks(int64_t n, int64_t threads, int64_t min_rows) {
  const int64_t target = std::max<int64_t>(1, kTargetWarps * 32 / threads);
  int64_t rows = kReduceBlockRows;
  while (rows > min_rows && ceil_div(n, rows) < target) rows /= 2;
  return {rows, ceil_div(n, rows), nullptr, 1.0};
}

// The partials' scratch comes from the stream-ordered pool; where a device has none,
// cudaMalloc and a cudaFree that waits for the device.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  cudaError_t allocate(size_t bytes) {
    cudaError_t status = cudaMallocAsync(&ptr_, bytes, stream_);
    if (status == cudaErrorNotSupported) {
      cudaGetLastError();
      pooled_ = false;
      status = cudaMalloc(&ptr_, bytes);
    }
    if (status != cudaSuccess) ptr_ = nullptr;
    return status;
  }
  double* get() const { return static_cast<double*>(ptr_); }
  ~Scratch() {
    if (ptr_ == nullptr) return;
    if (pooled_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaFree(ptr_);
    }
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  bool pooled_ = true;
};

// Points `partials` at block_sums when a chunk is a whole reduction block, else at scratch.
cudaError_t bind_partials(double* block_sums, int64_t per_block, int64_t count,
                          Scratch* scratch, double** partials) {
  *partials = nullptr;
  if (block_sums == nullptr) return cudaSuccess;
  if (per_block == 1) {
    *partials = block_sums;
    return cudaSuccess;
  }
  const cudaError_t status = scratch->allocate(static_cast<size_t>(count) * sizeof(double));
  *partials = scratch->get();
  return status;
}

cudaError_t finish_block_sums(const double* partials, int64_t count, int64_t per_block,
                              int64_t blocks, double scale, double* block_sums, const Device& d,
                              cudaStream_t stream) {
  if (block_sums == nullptr || per_block == 1) return cudaSuccess;
  return launch(block_sums_kernel, grid_for(ceil_div(blocks, kFlatBlock / 32), kFlatBlock, d),
                kFlatBlock, 1, stream, partials, count, per_block, blocks, scale, block_sums);
}

// How many clusters of this shape can run at once; 0 where clusters are unavailable: they
// need code built for sm_90+ (the kernel traps otherwise), a device that has them, and
// room for a cluster of this size (MIG or MPS can prevent it).
template <typename Kernel>
int64_t active_clusters(Kernel kernel, int threads, int clusters, const Device& d) {
  if (d.major < 9) return 0;
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess ||
      attributes.binaryVersion < 90)
    return 0;
  if (clusters > kPortableCluster &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
          cudaSuccess) {
    cudaGetLastError();  // a refusal only means "not this size"; don't leave it behind
    return 0;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(clusters));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  cudaLaunchAttribute cluster = cluster_attribute(clusters);
  config.attrs = &cluster;
  config.numAttrs = 1;
  int active = 0;
  if (cudaOccupancyMaxActiveClusters(&active, kernel, &config) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return active;
}

// The launch shape of a softmax problem: a kernel, its grid, and the chunks.
struct SoftmaxShape {
  int64_t blocks;
  int threads;
  int width;
  int clusters;
  Chunks chunks;
};

template <typename M, typename T, typename A>
cudaError_t softmax_mode(const SoftmaxProblem<T, A>& p, const Device& d, cudaStream_t stream) {
  auto* warp_kernel = softmax_kernel<M, T, A, WarpGroup>;
  auto* block_kernel = softmax_kernel<M, T, A, BlockGroup<kSlots<T>>>;
  auto* kernel = block_kernel;
  SoftmaxShape shape{};
  // Vectors a row can touch, over all offsets of its first element.
  const int64_t vectors = ceil_div(p.c + kVec<T> - 1, kVec<T>);
  const int64_t threads = ceil_div(vectors, kSlots<T>);
  if (vectors <= 32) {
    kernel = warp_kernel;
    shape.width = pow2_at_least(vectors);
    shape.threads = kRowBlock;
    shape.clusters = 1;
    shape.chunks = plan_chunks(p.n, 32, 32 / shape.width);
    shape.blocks = grid_for(ceil_div(shape.chunks.count, kRowBlock / 32), kRowBlock, d);
  } else if (threads <= kMaxBlock) {
    shape.threads = static_cast<int>(ceil_div(threads, 32) * 32);
    shape.clusters = 1;
    shape.chunks = plan_chunks(p.n, shape.threads, 1);
    shape.blocks = grid_for(shape.chunks.count, shape.threads, d);
  } else {
    // Beyond one block: a cluster holds the row in its blocks' registers, or walks longer
    // rows in chunks whose re-reads come from L2 (few rows are in flight per cluster).
    shape.threads = kMaxBlock;
    shape.clusters = 1;
    for (const int limit : {kMaxCluster, kPortableCluster}) {
      const int clusters = static_cast<int>(std::min<int64_t>(ceil_div(threads, kMaxBlock), limit));
      const int block = static_cast<int>(
          std::min<int64_t>(ceil_div(ceil_div(threads, clusters), 32) * 32, kMaxBlock));
      const int64_t active = active_clusters(block_kernel, block, clusters, d);
      if (active > 0) {
        shape.threads = block;
        shape.clusters = clusters;
        shape.chunks = plan_chunks(p.n, static_cast<int64_t>(block) * clusters, 1);
        shape.blocks = std::min<int64_t>(shape.chunks.count, 2 * active) * clusters;
        break;
      }
    }
    if (shape.clusters == 1) {
      shape.chunks = plan_chunks(p.n, kMaxBlock, 1);
      shape.blocks = grid_for(shape.chunks.count, kMaxBlock, d);
    }
  }
  const int64_t per_block = kReduceBlockRows / shape.chunks.rows;
  const int64_t blocks = ceil_div(p.n, kReduceBlockRows);
  Scratch scratch(stream);
  cudaError_t status =
      bind_partials(p.block_sums, per_block, shape.chunks.count, &scratch, &shape.chunks.partials);
  if (status != cudaSuccess) return status;
  const double scale = static_cast<double>(p.scale);
  shape.chunks.scale = per_block == 1 ? scale : 1.0;
  status = launch(kernel, shape.blocks, shape.threads, shape.clusters, stream, p, shape.chunks,
                  shape.width, shape.clusters);
  if (status != cudaSuccess) return status;
  return finish_block_sums(shape.chunks.partials, shape.chunks.count, per_block, blocks, scale,
                           p.block_sums, d, stream);
}

template <bool kFocal, typename T, typename A>
cudaError_t sigmoid_mode(const SigmoidProblem<T, A>& p, const Device& d, cudaStream_t stream) {
  constexpr int64_t V = kVec<T>;
  const int64_t blocks = ceil_div(p.n, kReduceBlockRows);
  const int64_t first_block = std::min<int64_t>(p.n, kReduceBlockRows) * p.c;
  // Pieces of at least a vector per lane, whole vectors, enough of them to fill the GPU.
  const int64_t most = std::max<int64_t>(1, first_block / (32 * V));
  const int64_t wanted = std::min(std::max<int64_t>(1, ceil_div(kTargetWarps, blocks)), most);
  ElementChunks chunks{};
  chunks.block_elements = kReduceBlockRows * p.c;
  chunks.piece = ceil_div(ceil_div(first_block, wanted), V) * V;
  chunks.pieces = ceil_div(first_block, chunks.piece);
  chunks.count = blocks * chunks.pieces;
  Scratch scratch(stream);
  cudaError_t status =
      bind_partials(p.block_sums, chunks.pieces, chunks.count, &scratch, &chunks.partials);
  if (status != cudaSuccess) return status;
  const double scale = static_cast<double>(p.scale);
  chunks.scale = chunks.pieces == 1 ? scale : 1.0;
  status = launch(sigmoid_kernel<kFocal, T, A>,
                  grid_for(ceil_div(chunks.count, kFlatBlock / 32), kFlatBlock, d), kFlatBlock, 1,
                  stream, p, chunks);
  if (status != cudaSuccess) return status;
  return finish_block_sums(chunks.partials, chunks.count, chunks.pieces, blocks, scale,
                           p.block_sums, d, stream);
}

}  // namespace

template <typename T, typename A>
cudaError_t softmax_rows(const SoftmaxProblem<T, A>& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.n < 0 || p.c < 1 || p.c > kMaxClasses || p.logits == nullptr) return cudaErrorInvalidValue;
  if (p.loss == nullptr && p.backprop == nullptr && p.block_sums == nullptr) return cudaSuccess;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;
  const bool dense = p.dense != nullptr;
  if (p.loss_kind == SoftmaxLoss::kExpectedCost)
    return dense ? softmax_mode<Mode<Kind::kExpectedCost, true>>(p, d, stream)
                 : softmax_mode<Mode<Kind::kExpectedCost, false>>(p, d, stream);
  if (p.focal_gamma != A(0))
    return dense ? softmax_mode<Mode<Kind::kFocal, true>>(p, d, stream)
                 : softmax_mode<Mode<Kind::kFocal, false>>(p, d, stream);
  return dense ? softmax_mode<Mode<Kind::kCrossEntropy, true>>(p, d, stream)
               : softmax_mode<Mode<Kind::kCrossEntropy, false>>(p, d, stream);
}

template <typename T, typename A>
cudaError_t sigmoid_elements(const SigmoidProblem<T, A>& p, cudaStream_t stream) {
  if (p.n == 0 || p.c == 0) return cudaSuccess;
  if (p.n < 0 || p.c < 0 || p.logits == nullptr || p.labels == nullptr)
    return cudaErrorInvalidValue;
  if (p.loss == nullptr && p.backprop == nullptr && p.block_sums == nullptr) return cudaSuccess;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;
  return p.focal_gamma != A(0) ? sigmoid_mode<true>(p, d, stream)
                               : sigmoid_mode<false>(p, d, stream);
}

template <typename T, typename A>
cudaError_t scale_by_device_scalar(const T* in, const A* scale, T* out, int64_t count,
                                   cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (count < 0 || in == nullptr || scale == nullptr || out == nullptr)
    return cudaErrorInvalidValue;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;
  const int64_t vectors = ceil_div(count + kVec<T> - 1, kVec<T>);
  return launch(scale_kernel<T, A>, grid_for(ceil_div(vectors, kFlatBlock), kFlatBlock, d),
                kFlatBlock, 1, stream, in, scale, out, count);
}

#define COSTXENT_INSTANTIATE(T, A)                                                        \
  template cudaError_t softmax_rows<T, A>(const SoftmaxProblem<T, A>&, cudaStream_t);     \
  template cudaError_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>&, cudaStream_t); \
  template cudaError_t scale_by_device_scalar<T, A>(const T*, const A*, T*, int64_t,      \
                                                    cudaStream_t);
COSTXENT_FOR_EACH_TYPE_PAIR(COSTXENT_INSTANTIATE)
#undef COSTXENT_INSTANTIATE

}  // namespace cuda
}  // namespace costxent
