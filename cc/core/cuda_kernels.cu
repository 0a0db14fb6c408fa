// CUDA implementation of the core kernels (cuda.h). The softmax row algorithm is
// row_algorithm.h's, the one the CPU kernels run; this file only decides which threads own
// which elements, and how they reduce.
//
// Softmax rows are held by a *group* of threads, as cuda_plan.h plans them by C: a thread
// (C <= 8: 32 rows a warp), a power-of-two slice of a warp, a whole block, or a cluster of
// blocks joined through distributed shared memory (sm_90). Every thread owns S slots of one
// 16-byte vector each, anchored on the 16-byte boundaries of the logits, so full vectors
// load and store with one instruction whatever the row's offset; the partial vectors at the
// ends of a row go element by element. When the group's slots cover the row it stays in
// registers, is read from memory once and exp(z - max) is computed once per element; rows
// longer than that are walked in chunks, once per pass, re-reading from L2.
//
// The algorithm reduces twice per row (three times for focal rows with smoothing or dense
// labels): the max, min, argmax and z_y in one step, then every sum of the loss in one
// step. Each reduction is a fixed tree - a butterfly over the group's lanes, one over the
// block's warps, one over the cluster's blocks - with no atomics, so results are bitwise
// reproducible and every thread of a group gets the same bits.
//
// Each element is read and written only by the thread that owns it, and every gradient
// write comes after the group's last reduction over the row, so backprop may alias logits.
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
#include "cc/core/cuda_plan.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/row_algorithm.h"
#include "cc/core/row_math.h"

namespace costxent {
namespace cuda {
namespace {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define COSTXENT_CLUSTERS 1
#endif

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = vector_elements(static_cast<int>(sizeof(T)));

constexpr int kFlatBlock = 256;
constexpr int kSlotBytes = 80;  // the largest value reduced at once (Sums of 7 doubles)
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

// `width` lanes of one warp (a power of two up to 32; 1: a thread per row), S slots each; a
// chunk per warp, whose 32 / width groups take consecutive rows.
template <int S>
class WarpGroup {
 public:
  static constexpr int kSlotsPerThread = S;
  static constexpr bool kChunked = false;  // the planner makes the slots cover the row
  static constexpr int kMaxThreads = kRowBlock;
  // At most 128 registers (512 threads an SM): at 64 the row's values, their exps and the
  // gradient of a thread-per-row spilled (ptxas, sm_90).
  static constexpr int kMinBlocks = 2;

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
__device__ __forceinline__ Sums<A, N> add_sums(const Sums<A, N>& a, const Sums<A, N>& b) {
  Sums<A, N> out;
#pragma unroll
  for (int k = 0; k < N; ++k) out.v[k] = a.v[k] + b.v[k];
  return out;
}

// ---------------------------------------------------------------------------------------
// The softmax row: row_algorithm.h's softmax_row over a walker of this thread's share.

// A thread's lanes are scalars; row_math.h's StdMath is CUDA's accurate device functions.
template <typename A>
struct ThreadPacks {
  using F = A;
  using I = int;
  using Math = StdMath;
};

// One element of this thread's slots: slot s, element i of its vector (compile-time
// constants once the visits unroll, so the register arrays stay in registers), its class j.
struct Element {
  static constexpr int kSlot = 0;
  int s;
  int i;
  int j;
  bool valid;  // j in [0, c): the padding of a vector that sticks out of the row is not
};

// Sums of a pass: only the fields in the mask kLive are stored and reduced.
template <typename A, int N, unsigned kLive>
struct LiveSums {
  // The live fields below `field`.
  static constexpr int at(int field) {
    int k = 0;
    for (int f = 0; f < field; ++f) k += (kLive >> f) & 1u;
    return k;
  }
  static constexpr int kCount = at(N);
  Sums<A, kCount> s;
};

__device__ __forceinline__ int bit_order(float x) { return __float_as_int(x); }
__device__ __forceinline__ long long bit_order(double x) { return __double_as_longlong(x); }

template <typename A>
struct RowExtremes {
  A max;
  A min;
  A label_logit;  // z_y of a sparse label: one thread's z_y, the others' 0
  int arg;
};

// Commutative to the bit (butterfly lanes combine in both orders): ties of the max go to
// the lower index, then to the larger bit pattern (+0 over -0).
template <typename A>
__device__ __forceinline__ RowExtremes<A> combine_extremes(const RowExtremes<A>& a,
                                                            const RowExtremes<A>& b) {
  const bool take_b =
      b.max > a.max ||
      (b.max == a.max && (b.arg < a.arg || (b.arg == a.arg && bit_order(b.max) > bit_order(a.max))));
  RowExtremes<A> r;
  r.max = take_b ? b.max : a.max;
  r.arg = take_b ? b.arg : a.arg;
  r.min = a.min < b.min ? a.min : b.min;
  r.label_logit = a.label_logit + b.label_logit;
  return r;
}

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

// A row held by a group (WarpGroup, BlockGroup): this thread's slots of it, in registers. A
// row longer than the group's slots (Group::kChunked, the kChunked regime) is visited chunk
// by chunk, each pass loading its chunks again, and keeps nothing between passes.
template <typename T, typename A, typename Group, bool kDense>
class GroupWalk {
 public:
  using P = ThreadPacks<A>;
  using F = A;
  using I = int;
  static constexpr int kSlots = 1;
  static constexpr bool kHasState = false;  // the backward recomputes its rows
  static constexpr int V = kVec<T>;
  static constexpr int S = Group::kSlotsPerThread;

  __device__ GroupWalk(const T* z, const T* t, T* out, int y, int c, Group& g)
      : z_(z), t_(t), out_(out), y_(y), c_(c), g_(g), head_(misalignment(z)) {
    if (Group::kChunked) {
      const int64_t vectors = (head_ + c + V - 1) / V;
      const int64_t per_chunk = static_cast<int64_t>(g.size()) * S;
      chunks_ = static_cast<int>((vectors + per_chunk - 1) / per_chunk);
    }
  }
  __device__ bool resident() const { return !Group::kChunked || chunks_ == 1; }

  // Passes 1-3 read; each() is the write pass: its elements' write()s are stored a vector
  // at a time (one rounding to T each).
  template <typename Fn>
  __device__ void each_slot(Fn&& fn) {
    visit(fn, false);
  }
  template <typename Sum, typename Fn>
  __device__ void each_sum(Sum& s, Fn&& fn) {
    visit([&](const Element& e) { fn(e, s); }, false);
  }
  template <typename Fn>
  __device__ void each(Fn&& fn) {
    visit(fn, true);
  }

  __device__ A z_at(const Element& e) const { return z_regs_[e.s][e.i]; }
  __device__ A t_at(const Element& e) const { return t_regs_[e.s][e.i]; }
  __device__ int cls(const Element& e) const { return e.valid ? e.j : 0; }

  template <int N, unsigned kLive>
  __device__ LiveSums<A, N, kLive> sums() const {
    return {};
  }
  template <int N, unsigned kLive>
  __device__ void add(LiveSums<A, N, kLive>& s, int field, const Element& e, A v) const {
    if (e.valid) s.s.v[LiveSums<A, N, kLive>::at(field)] += v;
  }
  template <int N, unsigned kLive>
  __device__ void add_where(LiveSums<A, N, kLive>& s, int field, const Element& e, bool m,
                            A v) const {
    if (e.valid && m) s.s.v[LiveSums<A, N, kLive>::at(field)] += v;
  }
  template <int N, unsigned kLive>
  __device__ void reduce(LiveSums<A, N, kLive>& s) {
    constexpr int K = LiveSums<A, N, kLive>::kCount;
    s.s = g_.reduce(s.s, add_sums<A, K>, Sums<A, K>{});
  }
  template <int N, unsigned kLive>
  __device__ A total(const LiveSums<A, N, kLive>& s, int field) const {
    return s.s.v[LiveSums<A, N, kLive>::at(field)];
  }
  // One reduction for the max, the min, the argmax and z_y.
  __device__ Extremes<A, int> extremes(A max, A min, int arg, bool) {
    const RowExtremes<A> r =
        g_.reduce(RowExtremes<A>{max, min, label_local_, arg}, combine_extremes<A>,
                  RowExtremes<A>{-INFINITY, INFINITY, A(0), INT_MAX});
    label_logit_ = r.label_logit;
    return {r.max, r.min, r.arg};
  }

  __device__ void keep(int slot, const Element& e, A v) {
    if (resident()) kept_[slot][e.s][e.i] = v;
  }
  template <typename Recompute>
  __device__ A kept(int slot, const Element& e, Recompute&& recompute) const {
    return resident() ? kept_[slot][e.s][e.i] : recompute();
  }

  __device__ void write(const Element& e, A v) { out_regs_[e.s][e.i] = v; }
  __device__ void write_onehot(const Element& e, int y, A off, A on) {
    write(e, e.j == y ? on : off);
  }
  // out_j = value for this thread's elements, without reading the row.
  __device__ void fill(A value) const {
    for (int chunk = 0; chunk < chunks_; ++chunk)
#pragma unroll
      for (int s = 0; s < S; ++s) store<V>(out_, first(chunk, s), int64_t{0}, int64_t{c_}, [&](int) { return value; });
  }
  __device__ bool abandon(A max, A min, bool backprop) const {
    if (max < A(INFINITY) && min > A(-INFINITY)) return false;
    if (backprop) fill(quiet_nan(A(0)));
    return true;
  }

  __device__ A class_values(const A* table, const Element& e) const {
    return e.valid ? __ldg(table + e.j) : A(0);
  }
  __device__ A row_table(const A* table, int row, const Element& e) const {
    return e.valid ? __ldg(table + static_cast<int64_t>(row) * c_ + e.j) : A(0);
  }
  __device__ A column(const A* table, int col, const Element& e, A t) const {
    return e.valid && t != A(0) ? __ldg(table + static_cast<int64_t>(e.j) * c_ + col) : A(0);
  }
  __device__ A lookup(const A* table, int row, int col) const {
    return __ldg(table + static_cast<int64_t>(row) * c_ + col);
  }
  __device__ A row_value(int) const { return label_logit_; }
  // c_j = sum_k t_k M[k, j] (DESIGN 2.2, dense labels): a resident row's, per slot, now; a
  // chunked row's one element at a time in dense_cost.
  __device__ void prepare_dense_costs(const A* m) {
    if (!resident()) return;
#pragma unroll
    for (int s = 0; s < S; ++s) dense_costs<T, A, V>(g_, t_, m, c_, slot_first(0, s), costs_[s]);
  }
  __device__ A dense_cost(const A* m, const Element& e) const {
    if (resident()) return costs_[e.s][e.i];
    A cost = A(0);
    if (!e.valid) return cost;
    for (int k = 0; k < c_; ++k) {
      const A tk = to_acc(t_[k]);
      if (tk != A(0)) cost += tk * __ldg(m + static_cast<int64_t>(k) * c_ + e.j);
    }
    return cost;
  }

 private:
  // Slot s of a chunk: vector (chunk * S + s) * group size + rank of the row's span, which
  // starts head_ elements before the row so that vectors fall on 16-byte boundaries.
  __device__ int64_t first(int chunk, int s) const {
    return ((static_cast<int64_t>(chunk) * S + s) * g_.size() + g_.rank()) * V - head_;
  }
  __device__ int slot_first(int chunk, int s) const {
    const int64_t j0 = first(chunk, s);
    return j0 < c_ ? static_cast<int>(j0) : c_;  // past the row: any index >= c
  }

  // This thread's vectors of a chunk into registers; the padding reads as z_0 (neutral for
  // the max and the min, and class 0 by cls()), read in pass 1, before any gradient write.
  __device__ void load(int chunk) {
    if (chunk == loaded_) return;
    if (loaded_ < 0) pad_ = to_acc(z_[0]);
    loaded_ = chunk;
    const A pad = pad_;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t j0 = first(chunk, s);
      load_acc<V>(z_, j0, int64_t{0}, int64_t{c_}, z_regs_[s]);
      if constexpr (kDense) load_acc<V>(t_, j0, int64_t{0}, int64_t{c_}, t_regs_[s]);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int64_t j = j0 + i;
        if (j < 0 || j >= c_) z_regs_[s][i] = pad;
        if (!kDense && j == y_) label_local_ = z_regs_[s][i];
      }
    }
  }

  template <typename Fn>
  __device__ void visit(Fn&& fn, bool writes) {
    for (int chunk = 0; chunk < chunks_; ++chunk) {
      load(chunk);
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int64_t j0 = first(chunk, s);
        if (j0 + V <= 0 || j0 >= c_) continue;  // the vector is all padding
        const int j = static_cast<int>(j0);  // in (-V, c)
#pragma unroll
        for (int i = 0; i < V; ++i) fn(Element{s, i, j + i, j + i >= 0 && j + i < c_});
        if (writes) store<V>(out_, j0, int64_t{0}, int64_t{c_}, [&](int i) { return out_regs_[s][i]; });
      }
    }
  }

  const T* z_;
  const T* t_;
  T* out_;
  int y_;
  int c_;
  Group& g_;
  int head_;
  int chunks_ = 1;
  int loaded_ = -1;
  A pad_ = A(0);
  A label_local_ = A(0);  // z_y where this thread holds y
  A label_logit_ = A(0);  // z_y, after extremes()
  A z_regs_[S][V];
  A t_regs_[kDense ? S : 1][kDense ? V : 1];
  A kept_[2][S][V];
  A out_regs_[S][V];
  A costs_[kDense ? S : 1][kDense ? V : 1];
};

// One softmax row (DESIGN 2.1, 2.2) by the group: writes the loss and the gradient scaled
// by row_scale * scale; returns row_scale * loss in double (0 for an ignored row) for the
// block sums, in every thread of the group.
template <typename M, typename T, typename A, typename Group>
__device__ double group_row(const SoftmaxProblem<T, A>& p, const RowOptions<A>& o, int64_t row,
                            Group& g) {
  const int c = static_cast<int>(p.c);
  const int64_t offset = row * p.c;
  T* out = p.backprop != nullptr ? p.backprop + offset : nullptr;
  int y = -1;
  if constexpr (M::kSparse) {
    const int64_t label = label_at(p, row);
    const LabelKind kind = classify_label(p, label);
    if (kind != LabelKind::kClass) {
      const A value = kind == LabelKind::kIgnored ? A(0) : quiet_nan(A(0));
      GroupWalk<T, A, Group, false> walk(p.logits + offset, nullptr, out, -1, c, g);
      if (g.leader() && p.loss != nullptr) p.loss[row] = value;
      if (out != nullptr) walk.fill(value);
      return static_cast<double>(value);
    }
    y = static_cast<int>(label);
  }
  GroupWalk<T, A, Group, !M::kSparse> walk(p.logits + offset,
                                            M::kSparse ? nullptr : p.dense + offset, out, y, c, g);
  const A rs = p.row_scale != nullptr ? __ldg(p.row_scale + row) : A(1);
  const A loss = softmax_row<M>(walk, o, rs * p.scale, y, out != nullptr);
  if (g.leader() && p.loss != nullptr) p.loss[row] = loss;
  return static_cast<double>(rs) * static_cast<double>(loss);
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
// in a cluster launch of that size). Launch bounds per group: see kMaxThreads, kMinBlocks.
template <typename M, typename T, typename A, typename Group>
__global__ void __launch_bounds__(Group::kMaxThreads, Group::kMinBlocks)
    softmax_kernel(const SoftmaxProblem<T, A> p, const Chunks chunks, int width, int clusters) {
  Group g(width, clusters);
  const RowOptions<A> o = row_options(p);
  for (int64_t k = g.first_chunk(); k < chunks.count; k += g.chunk_stride()) {
    const int64_t row0 = k * chunks.rows;
    double partial = 0;
    for (int64_t r = g.first_row(); r < chunks.rows && row0 + r < p.n; r += g.row_stride())
      partial += group_row<M>(p, o, row0 + r, g);
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

// The kernel of a plan's regime.
template <typename M, typename T, typename A>
auto* kernel_for(Regime regime) {
  constexpr int kBytes = static_cast<int>(sizeof(T));
  if (regime == Regime::kThread) return softmax_kernel<M, T, A, WarpGroup<thread_slots(kBytes)>>;
  if (regime == Regime::kWarp) return softmax_kernel<M, T, A, WarpGroup<1>>;
  return softmax_kernel<M, T, A, BlockGroup<block_slots(kBytes)>>;
}

template <typename M, typename T, typename A>
cudaError_t softmax_mode(const SoftmaxProblem<T, A>& p, const Device& d, cudaStream_t stream) {
  auto* block_kernel = kernel_for<M, T, A>(Regime::kBlock);
  int64_t active = 0;
  const SoftmaxPlan plan =
      plan_softmax(static_cast<int>(sizeof(T)), p.c, [&](const SoftmaxPlan& shape) {
        active = active_clusters(block_kernel, shape.threads, shape.clusters, d);
        return active > 0;
      });
  auto* kernel = kernel_for<M, T, A>(plan.regime);
  Chunks chunks{};
  int64_t blocks = 0;
  if (plan.width > 0) {
    chunks = plan_chunks(p.n, 32, 32 / plan.width);
    blocks = grid_for(ceil_div(chunks.count, plan.threads / 32), plan.threads, d);
  } else if (plan.clusters > 1) {
    // Few rows are in flight per cluster: two clusters an SM group's worth at most.
    chunks = plan_chunks(p.n, static_cast<int64_t>(plan.threads) * plan.clusters, 1);
    blocks = std::min<int64_t>(chunks.count, 2 * active) * plan.clusters;
  } else {
    chunks = plan_chunks(p.n, plan.threads, 1);
    blocks = grid_for(chunks.count, plan.threads, d);
  }
  const int64_t per_block = kReduceBlockRows / chunks.rows;
  const int64_t sum_blocks = ceil_div(p.n, kReduceBlockRows);
  Scratch scratch(stream);
  cudaError_t status =
      bind_partials(p.block_sums, per_block, chunks.count, &scratch, &chunks.partials);
  if (status != cudaSuccess) return status;
  const double scale = static_cast<double>(p.scale);
  chunks.scale = per_block == 1 ? scale : 1.0;
  status = launch(kernel, blocks, plan.threads, plan.clusters, stream, p, chunks, plan.width,
                  plan.clusters);
  if (status != cudaSuccess) return status;
  return finish_block_sums(chunks.partials, chunks.count, per_block, sum_blocks, scale,
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
  return with_row_mode(p, [&](auto mode) { return softmax_mode<decltype(mode)>(p, d, stream); });
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
