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
// Each element is read and written only by the thread that owns it, and every gradient
// write comes after the group's last reduction over the row, so backprop may alias logits.
// Reductions are fixed butterfly / in-order trees with no atomics: results are bitwise
// reproducible, and every thread of a group gets the same bits.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
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

// Slots per thread of a block group: 8 row values, which keeps a 1024-thread block within
// 64 registers (a warp group, for rows of up to 32 vectors, has one slot per thread).
template <typename T>
constexpr int kSlots = kVec<T> >= 8 ? 1 : 8 / kVec<T>;

constexpr int kRowBlock = 256;  // block size when a block holds several row groups
constexpr int kMaxBlock = 1024;
constexpr int kPortableCluster = 8;
constexpr int kMaxCluster = 16;  // Hopper's non-portable limit
constexpr int kFlatBlock = 256;
constexpr int kSlotBytes = 48;  // the largest value reduced at once (five doubles)
// Indices inside a row are 32-bit (offsets into arrays are 64-bit); a row's span of
// vectors may reach this far past c.
constexpr int64_t kMaxClasses = INT32_MAX - 64;

// ---------------------------------------------------------------------------------------
// Vector access. `row` is any array of c elements; [j0, j0 + N) is one slot of it.

template <typename U, int N>
struct alignas(16) Pack {
  U v[N];
};

// Index is int inside a softmax row, int64_t over a flat array.
template <int N, typename Index, typename U>
__device__ __forceinline__ bool whole_aligned(const U* row, Index j0, Index c) {
  return j0 >= 0 && j0 + N <= c && reinterpret_cast<uintptr_t>(row + j0) % 16 == 0;
}

// Elements outside [0, c) read as zero bits (0.0 in every storage type).
template <int N, typename Index, typename U>
__device__ __forceinline__ Pack<U, N> load(const U* row, Index j0, Index c) {
  if (whole_aligned<N>(row, j0, c)) return *reinterpret_cast<const Pack<U, N>*>(row + j0);
  Pack<U, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const Index j = j0 + i;
    if (j >= 0 && j < c) {
      pk.v[i] = row[j];
    } else {
      memset(&pk.v[i], 0, sizeof(U));
    }
  }
  return pk;
}

template <int N, typename Index, typename U, typename A>
__device__ __forceinline__ void load_acc(const U* row, Index j0, Index c, A (&out)[N]) {
  const Pack<U, N> pk = load<N>(row, j0, c);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_acc(pk.v[i]);
}

// row[j0 + i] = value(i) for the i with j0 + i in [0, c). value(i) is evaluated for every
// i (one code path for whole and partial vectors), so it must not read outside the row.
template <int N, typename Index, typename U, typename F>
__device__ __forceinline__ void store(U* row, Index j0, Index c, F value) {
  Pack<U, N> pk;
#pragma unroll
  for (int i = 0; i < N; ++i) pk.v[i] = from_acc<U>(value(i));
  if (whole_aligned<N>(row, j0, c)) {
    *reinterpret_cast<Pack<U, N>*>(row + j0) = pk;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const Index j = j0 + i;
      if (j >= 0 && j < c) row[j] = pk.v[i];
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
template <typename V, typename F>
__device__ __forceinline__ V butterfly(V v, int lanes, unsigned mask, F combine) {
  for (int o = lanes / 2; o > 0; o /= 2) v = combine(v, shfl_xor(v, o, mask));
  return v;
}

// Row groups share an interface: size() threads, this thread's rank() (0 is the leader(),
// which writes the loss), the group's lanes() within one warp and their mask(), index() /
// count() to walk rows, reduce(), finish().
// reduce's combine must be commutative: a butterfly step on lanes l and l^o computes f(a, b)
// and f(b, a), and commutativity is what gives both lanes the same bits.

// `width` lanes of one warp (a power of two up to 32); several rows per warp.
class WarpGroup {
 public:
  static constexpr int kSlotsPerThread = 1;
  static constexpr bool kChunked = false;  // the launcher makes the slots cover the row

  __device__ WarpGroup(int width, int) : width_(width) {
    const int lane = threadIdx.x & 31;
    mask_ = width == 32 ? 0xffffffffu : ((1u << width) - 1u) << (lane & ~(width - 1));
  }
  __device__ int size() const { return width_; }
  __device__ int rank() const { return static_cast<int>(threadIdx.x) & (width_ - 1); }
  __device__ bool leader() const { return rank() == 0; }
  __device__ int lanes() const { return width_; }
  __device__ unsigned mask() const { return mask_; }
  __device__ int64_t index() const {
    return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / width_;
  }
  __device__ int64_t count() const {
    return static_cast<int64_t>(gridDim.x) * blockDim.x / width_;
  }
  template <typename V, typename F>
  __device__ V reduce(V v, F combine) const {
    return butterfly(v, width_, mask_, combine);
  }
  __device__ void finish() const {}

 private:
  int width_;
  unsigned mask_;
};

// Per-warp partials, in two alternating sets: the barrier of the next reduction separates
// one reduction's reads from the writes of the one after.
__shared__ alignas(16) unsigned char block_partials[2][32][kSlotBytes];
__shared__ alignas(16) unsigned char cluster_partials[2][kSlotBytes];

// A whole block (blockDim.x a multiple of 32) times `clusters` blocks; one row at a time.
template <int S>
class BlockGroup {
 public:
  static constexpr int kSlotsPerThread = S;
  static constexpr bool kChunked = true;

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
  __device__ int64_t index() const { return blockIdx.x / clusters_; }
  __device__ int64_t count() const { return gridDim.x / clusters_; }

  template <typename V, typename F>
  __device__ V reduce(V v, F combine) {
    static_assert(sizeof(V) <= kSlotBytes, "enlarge kSlotBytes");
    v = butterfly(v, 32, 0xffffffffu, combine);
    if ((threadIdx.x & 31) == 0)
      *reinterpret_cast<V*>(block_partials[parity_][threadIdx.x / 32]) = v;
    __syncthreads();
    v = *reinterpret_cast<const V*>(block_partials[parity_][0]);
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
      v = combine(v, *reinterpret_cast<const V*>(block_partials[parity_][w]));
    if (clusters_ > 1) v = across_cluster(v, combine);
    parity_ ^= 1;
    return v;
  }

  // Before exit: a block's shared memory must outlive its cluster peers' reads of it.
  __device__ void finish() const {
    if (clusters_ > 1) cluster_sync();
  }

 private:
  __device__ static void cluster_sync() {
#if defined(COSTXENT_CLUSTERS)
    cooperative_groups::this_cluster().sync();
#else
    __trap();  // the launcher only asks for clusters where this code was built for them
#endif
  }

  template <typename V, typename F>
  __device__ V across_cluster(V v, F combine) {
#if defined(COSTXENT_CLUSTERS)
    auto cluster = cooperative_groups::this_cluster();
    V* mine = reinterpret_cast<V*>(cluster_partials[parity_]);
    if (threadIdx.x == 0) *mine = v;
    cluster.sync();
    v = *cluster.map_shared_rank(mine, 0);
    for (int b = 1; b < clusters_; ++b) v = combine(v, *cluster.map_shared_rank(mine, b));
    return v;
#else
    __trap();
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

// Row maximum, its lowest index, and a sum of (z - z) that is NaN iff some z is not finite.
template <typename A>
struct MaxStat {
  A max;
  A nonfinite;
  int arg;
};

template <typename A>
__device__ __forceinline__ MaxStat<A> combine_max(const MaxStat<A>& a, const MaxStat<A>& b) {
  const bool take_b = b.max > a.max || (b.max == a.max && b.arg < a.arg);
  return {take_b ? b.max : a.max, a.nonfinite + b.nonfinite, take_b ? b.arg : a.arg};
}

// ---------------------------------------------------------------------------------------
// A row as the group sees it: this thread's slots, chunk by chunk.

template <typename T, typename A, typename Group>
class RowWalker {
 public:
  static constexpr int V = kVec<T>;
  static constexpr int S = Group::kSlotsPerThread;

  // dense: the row of dense labels, or nullptr for a sparse label y.
  __device__ RowWalker(const T* z, const T* dense, int y, int c, const Group& g)
      : row_(z), dense_(dense), y_(y), c_(c), group_size_(g.size()), rank_(g.rank()) {
    head_ = misalignment(z);
    if (Group::kChunked) {
      const int vectors = (head_ + c + V - 1) / V;
      const int per_chunk = group_size_ * S;
      chunks_ = (vectors + per_chunk - 1) / per_chunk;
    }
  }

  // f(j0, z[V], t[V]) for each slot [j0, j0 + V): the logits and the unsmoothed targets
  // (dense labels are loaded only when with_t), zero outside the row. Every thread of the
  // group makes the same calls.
  template <typename F>
  __device__ void slots(bool with_t, F f) {
    for (int chunk = 0; chunk < chunks_; ++chunk) {
      if (chunk != loaded_) {
#pragma unroll
        for (int s = 0; s < S; ++s) load_acc<V>(row_, first(chunk, s), c_, values_[s]);
        loaded_ = chunk;
      }
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int j0 = first(chunk, s);
        A t[V];
        if (dense_ == nullptr) {
#pragma unroll
          for (int i = 0; i < V; ++i) t[i] = j0 + i == y_ ? A(1) : A(0);
        } else if (with_t) {
          load_acc<V>(dense_, j0, c_, t);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) t[i] = A(0);
        }
        f(j0, values_[s], t);
      }
    }
  }

  // f(j, z_j, t_j) for each element of the row this thread owns.
  template <typename F>
  __device__ void each(bool with_t, F f) {
    slots(with_t, [&](int j0, const A(&z)[V], const A(&t)[V]) {
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (in_row(j0 + i)) f(j0 + i, z[i], t[i]);
    });
  }

  // out_j = f(z_j, t_j).
  template <typename F>
  __device__ void write(T* out, F f) {
    slots(true, [&](int j0, const A(&z)[V], const A(&t)[V]) {
      store<V>(out, j0, c_, [&](int i) { return f(z[i], t[i]); });
    });
  }

  // out_j = value, without reading the row.
  __device__ void fill(T* out, A value) const {
    for (int chunk = 0; chunk < chunks_; ++chunk)
#pragma unroll
      for (int s = 0; s < S; ++s) store<V>(out, first(chunk, s), c_, [&](int) { return value; });
  }

  __device__ bool in_row(int j) const { return j >= 0 && j < c_; }
  __device__ const T* dense() const { return dense_; }

 private:
  // Slot s of a chunk: vector (chunk * S + s) * group_size + rank of the row's span, which
  // starts head_ elements before the row so that vectors fall on 16-byte boundaries.
  __device__ int first(int chunk, int s) const {
    return ((chunk * S + s) * group_size_ + rank_) * V - head_;
  }

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
// passes over a scratch row replaced by passes over the group's slots.
template <typename T, typename A, typename Group>
__device__ void softmax_row(const SoftmaxProblem<T, A>& p, int64_t row, Group& g) {
  constexpr int V = kVec<T>;
  const int c = static_cast<int>(p.c);
  const bool sparse = p.dense == nullptr;
  const int64_t label = sparse ? label_at(p, row) : -1;
  const bool ignored = sparse && p.has_ignore_class && label == p.ignore_class;
  const bool bad_label = sparse && !ignored && (label < 0 || label >= c);
  const int y = ignored || bad_label ? -1 : static_cast<int>(label);
  const int64_t offset = row * p.c;
  RowWalker<T, A, Group> walk(p.logits + offset, sparse ? nullptr : p.dense + offset, y, c, g);
  T* out = p.backprop != nullptr ? p.backprop + offset : nullptr;
  auto finish = [&](A value) {
    if (g.leader()) p.loss[row] = value;
    if (out != nullptr) walk.fill(out, value);
  };
  if (ignored) return finish(A(0));
  if (bad_label) return finish(quiet_nan(A(0)));

  MaxStat<A> top{-INFINITY, A(0), c};
  walk.each(false, [&](int j, A zj, A) {
    if (zj > top.max) {
      top.max = zj;
      top.arg = j;
    }
    top.nonfinite += zj - zj;
  });
  top = g.reduce(top, combine_max<A>);
  if (!(top.nonfinite == A(0))) return finish(quiet_nan(A(0)));
  const A m = top.max;
  const int jhat = top.arg;  // lowest index on ties

  // exp sums, sum zs, and the unsmoothed target's sum t, sum t zs, sum t weight.
  const bool cross_entropy = p.loss_kind == SoftmaxLoss::kCrossEntropy;
  const bool dense_weight = cross_entropy && !sparse && p.weight_mode != WeightMode::kNone;
  Sums<A, 5> r{};
  walk.each(!sparse, [&](int j, A zj, A tj) {
    const A zs = zj - m;
    r.v[0] += exp(zs);
    r.v[1] += zs;
    r.v[2] += tj;
    r.v[3] += tj * zs;
    if (dense_weight)
      r.v[4] += tj * __ldg(p.weight_mode == WeightMode::kClass
                               ? p.weights + j
                               : p.weights + static_cast<int64_t>(j) * c + jhat);
  });
  r = g.reduce(r, add<A, 5>);
  const A eps = p.label_smoothing;
  const A inv_c = A(1) / static_cast<A>(c);
  const A lse = log(r.v[0]);
  const A inv_sum = A(1) / r.v[0];
  const A target_sum = (A(1) - eps) * r.v[2] + eps;
  const A target_dot_zs = (A(1) - eps) * r.v[3] + eps * inv_c * r.v[1];
  const A ce = shifted_cross_entropy(target_sum, lse, target_dot_zs);
  auto prob = [&](A zj) { return exp(zj - m) * inv_sum; };
  auto smooth = [&](A tj) { return smooth_target(tj, eps, inv_c); };

  if (!cross_entropy) {
    const A lam = p.ce_weight;
    const A* cost_row = sparse ? p.weights + static_cast<int64_t>(y) * c : p.weights;
    auto costs = [&](int j0, A(&cost)[V]) {
      if (sparse) {
#pragma unroll
        for (int i = 0; i < V; ++i) cost[i] = walk.in_row(j0 + i) ? __ldg(cost_row + j0 + i) : A(0);
      } else {
        dense_costs<T, A, V>(g, walk.dense(), p.weights, c, j0, cost);
      }
    };
    Sums<A, 1> e{};
    walk.slots(false, [&](int j0, const A(&z)[V], const A(&)[V]) {
      A cost[V];
      costs(j0, cost);
#pragma unroll
      for (int i = 0; i < V; ++i)
        if (walk.in_row(j0 + i)) e.v[0] += cost[i] * exp(z[i] - m);
    });
    const A expected = g.reduce(e, add<A, 1>).v[0] * inv_sum;
    if (g.leader()) p.loss[row] = expected + lam * ce;
    if (out == nullptr) return;
    walk.slots(true, [&](int j0, const A(&z)[V], const A(&t)[V]) {
      A cost[V];
      costs(j0, cost);
      store<V>(out, j0, c, [&](int i) {
        return expected_cost_grad(prob(z[i]), cost[i], expected, lam, smooth(t[i]), target_sum);
      });
    });
    return;
  }

  // Per-example weight from the unsmoothed target (DESIGN 2.1).
  A w = 1;
  if (p.weight_mode != WeightMode::kNone)
    w = !sparse ? r.v[4]
                : __ldg(p.weight_mode == WeightMode::kClass
                            ? p.weights + y
                            : p.weights + static_cast<int64_t>(y) * c + jhat);

  const A gamma = p.focal_gamma;
  if (gamma == A(0)) {
    if (g.leader()) p.loss[row] = w * ce;
    if (out == nullptr) return;
    walk.write(out, [&](A zj, A tj) { return plain_grad(w, prob(zj), smooth(tj), target_sum); });
    return;
  }

  // Focal: sum_k ts_k phi_k and sum_k ts_k g_k over the classes with ts_k != 0.
  Sums<A, 2> f{};
  walk.each(!sparse, [&](int, A zj, A tj) {
    const A ts = smooth(tj);
    if (ts == A(0)) return;
    const FocalTerms<A> terms = focal_terms(zj - m - lse, gamma);
    f.v[0] += ts * terms.phi;
    f.v[1] += ts * terms.g;
  });
  f = g.reduce(f, add<A, 2>);
  if (g.leader()) p.loss[row] = w * f.v[0];
  if (out == nullptr) return;
  const A sum_ts_g = f.v[1];
  walk.write(out, [&](A zj, A tj) {
    const A ts = smooth(tj);
    const A gj = ts == A(0) ? A(0) : focal_terms(zj - m - lse, gamma).g;
    return focal_grad(w, prob(zj), ts, gj, sum_ts_g);
  });
}

// width: lanes per row for a WarpGroup; clusters: blocks per row for a BlockGroup (> 1 only
// in a cluster launch of that size).
template <typename T, typename A, typename Group>
__global__ void __launch_bounds__(kMaxBlock)
    softmax_kernel(const SoftmaxProblem<T, A> p, int width, int clusters) {
  Group g(width, clusters);
  for (int64_t row = g.index(); row < p.n; row += g.count()) softmax_row(p, row, g);
  g.finish();
}

// f(j0) for each 16-byte vector [j0, j0 + V) of a flat array of `total` elements whose
// first element lies `head` elements past a 16-byte boundary.
template <int V, typename F>
__device__ __forceinline__ void each_flat_vector(int64_t total, int head, F f) {
  const int64_t vectors = (head + total + V - 1) / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors;
       v += stride)
    f(v * V - head);
}

// Column of the first element of [j0, j0 + V) inside the array, and its row.
struct Position {
  int64_t row;
  int64_t col;
};

__device__ __forceinline__ Position position_of(int64_t j0, int64_t c) {
  const int64_t k = j0 < 0 ? 0 : j0;
  return {k / c, k % c};
}

__device__ __forceinline__ void advance(Position& at, int64_t c) {
  if (++at.col == c) {
    at.col = 0;
    ++at.row;
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kFlatBlock) sigmoid_kernel(const SigmoidProblem<T, A> p) {
  constexpr int V = kVec<T>;
  const int64_t total = p.n * p.c;
  each_flat_vector<V>(total, misalignment(p.logits), [&](int64_t j0) {
    A z[V], y[V], loss[V] = {}, grad[V] = {};
    load_acc<V>(p.logits, j0, total, z);
    load_acc<V>(p.labels, j0, total, y);
    Position at = position_of(j0, p.c);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (j0 + i < 0 || j0 + i >= total) continue;
      if (y[i] < A(0) || y[i] > A(1)) {
        loss[i] = grad[i] = quiet_nan(A(0));
      } else {
        const SigmoidTerms<A> terms = sigmoid_terms(
            z[i], smooth_binary_label(y[i], p.label_smoothing),
            class_value(p.pos_weight, p.pos_weight_size, at.col),
            class_value(p.neg_weight, p.neg_weight_size, at.col), p.focal_gamma);
        loss[i] = terms.loss;
        grad[i] = terms.grad;
      }
      advance(at, p.c);
    }
    store<V>(p.loss, j0, total, [&](int i) { return loss[i]; });
    if (p.backprop != nullptr) store<V>(p.backprop, j0, total, [&](int i) { return grad[i]; });
  });
}

template <typename T, typename A>
__global__ void __launch_bounds__(kFlatBlock)
    scale_kernel(const T* in, const A* scale, T* out, int64_t n, int64_t c, bool per_row) {
  constexpr int V = kVec<T>;
  const int64_t total = n * c;
  each_flat_vector<V>(total, misalignment(in), [&](int64_t j0) {
    A v[V];
    load_acc<V>(in, j0, total, v);
    Position at = position_of(j0, c);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (j0 + i < 0 || j0 + i >= total) continue;
      v[i] *= __ldg(scale + (per_row ? at.row : j0 + i));
      advance(at, c);
    }
    store<V>(out, j0, total, [&](int i) { return v[i]; });
  });
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

// A grid of at most a few waves: groups loop over rows, so more blocks only add launch work.
int64_t grid_for(int64_t blocks, int threads, const Device& d) {
  const int64_t cap = static_cast<int64_t>(d.sms) * (2048 / threads) * 8;
  return blocks < cap ? blocks : cap;
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

}  // namespace

template <typename T, typename A>
cudaError_t softmax_rows(const SoftmaxProblem<T, A>& p, cudaStream_t stream) {
  if (p.n == 0) return cudaSuccess;
  if (p.n < 0 || p.c < 1 || p.c > kMaxClasses || p.logits == nullptr || p.loss == nullptr)
    return cudaErrorInvalidValue;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;

  // Vectors a row can touch, over all offsets of its first element.
  const int64_t vectors = ceil_div(p.c + kVec<T> - 1, kVec<T>);
  if (vectors <= 32) {
    const int width = pow2_at_least(vectors);
    return launch(softmax_kernel<T, A, WarpGroup>,
                  grid_for(ceil_div(p.n, kRowBlock / width), kRowBlock, d), kRowBlock, 1, stream,
                  p, width, 1);
  }
  auto* kernel = softmax_kernel<T, A, BlockGroup<kSlots<T>>>;
  const int64_t threads = ceil_div(vectors, kSlots<T>);
  if (threads <= kMaxBlock) {
    const int block = static_cast<int>(ceil_div(threads, 32) * 32);
    return launch(kernel, grid_for(p.n, block, d), block, 1, stream, p, 0, 1);
  }
  // Beyond one block: a cluster holds the row in its blocks' registers, or walks longer
  // rows in chunks whose re-reads come from L2 (few rows are in flight per cluster).
  for (const int limit : {kMaxCluster, kPortableCluster}) {
    const int clusters = static_cast<int>(std::min<int64_t>(ceil_div(threads, kMaxBlock), limit));
    const int block =
        static_cast<int>(std::min<int64_t>(ceil_div(ceil_div(threads, clusters), 32) * 32, kMaxBlock));
    const int64_t active = active_clusters(kernel, block, clusters, d);
    if (active > 0) {
      const int64_t groups = std::min<int64_t>(p.n, 2 * active);
      return launch(kernel, groups * clusters, block, clusters, stream, p, 0, clusters);
    }
  }
  return launch(kernel, grid_for(p.n, kMaxBlock, d), kMaxBlock, 1, stream, p, 0, 1);
}

template <typename T, typename A>
cudaError_t sigmoid_elements(const SigmoidProblem<T, A>& p, cudaStream_t stream) {
  if (p.n == 0 || p.c == 0) return cudaSuccess;
  if (p.n < 0 || p.c < 0 || p.logits == nullptr || p.labels == nullptr || p.loss == nullptr)
    return cudaErrorInvalidValue;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;
  const int64_t vectors = ceil_div(p.n * p.c + kVec<T> - 1, kVec<T>);
  return launch(sigmoid_kernel<T, A>, grid_for(ceil_div(vectors, kFlatBlock), kFlatBlock, d),
                kFlatBlock, 1, stream, p);
}

template <typename T, typename A>
cudaError_t scale_gradient(const T* in, const A* scale, T* out, int64_t n, int64_t c,
                           bool per_row, cudaStream_t stream) {
  if (n == 0 || c == 0) return cudaSuccess;
  if (n < 0 || c < 0 || in == nullptr || scale == nullptr || out == nullptr)
    return cudaErrorInvalidValue;
  Device d;
  const cudaError_t status = current_device(&d);
  if (status != cudaSuccess) return status;
  const int64_t vectors = ceil_div(n * c + kVec<T> - 1, kVec<T>);
  return launch(scale_kernel<T, A>, grid_for(ceil_div(vectors, kFlatBlock), kFlatBlock, d),
                kFlatBlock, 1, stream, in, scale, out, n, c, per_row);
}

#define COSTXENT_INSTANTIATE(T, A)                                                          \
  template cudaError_t softmax_rows<T, A>(const SoftmaxProblem<T, A>&, cudaStream_t);       \
  template cudaError_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>&, cudaStream_t);   \
  template cudaError_t scale_gradient<T, A>(const T*, const A*, T*, int64_t, int64_t, bool, \
                                            cudaStream_t);
COSTXENT_FOR_EACH_TYPE_PAIR(COSTXENT_INSTANTIATE)
#undef COSTXENT_INSTANTIATE

}  // namespace cuda
}  // namespace costxent
