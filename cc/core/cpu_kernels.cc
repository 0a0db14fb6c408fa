// CPU kernels, compiled once per instruction set (COSTXENT_CPU_ISA names the namespace).
//
// The softmax row algorithm (row_algorithm.h, shared with CUDA) runs over two walkers:
//   - RowWalk walks one row, or two side by side (C <= kPairClasses), in chunks of kLanes
//     classes (C > kPlainTileClasses, focal C > kSmallClasses): a chunk's lanes are classes,
//     row reductions are horizontal, per-row values are broadcast;
//   - TileWalk walks kLanes rows at once (the other rows): the tile is transposed to
//     [class][row], a chunk is one class of every row, lanes are rows, so row reductions
//     are plain lane-wise sums and every per-row step (the log included) is one vector op.
// Sums run in a fixed order (long rows in float blocks of kSumBlock chunks added in
// double), so results are bitwise reproducible and a row's result never depends on how rows
// were split between calls or paired (row_math.h's rounded() keeps FMA fusion alike). No
// standard-library template is instantiated here: an AVX2 copy of one could be chosen by the
// linker for the baseline build.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cc/core/cpu.h"
#include "cc/core/cpu_isa.h"
#include "cc/core/cpu_simd.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/row_algorithm.h"
#include "cc/core/row_math.h"

COSTXENT_DECLARE_CPU_ISA(COSTXENT_CPU_ISA)
#if defined(COSTXENT_CPU_FORWARD_ISA)
COSTXENT_DECLARE_CPU_ISA(COSTXENT_CPU_FORWARD_ISA)
#endif

namespace costxent {
namespace cpu {
namespace COSTXENT_CPU_ISA {
namespace {

// Chunks summed in float before a sum moves into its double accumulator: 64 terms per lane.
constexpr int64_t kSumBlock = 64;

// Running sums of a walker's chunks, kSlots lanes each (chunks take turns: shorter
// dependency chains and float sums of a quarter of the terms), added pairwise at the end.
// A RowWalk lane sums at most kSumBlock terms in float: longer rows flush their lanes into
// double every kSumBlock chunks. TileWalk's lanes are rows, each slot summing at most
// kSmallClasses / kSlots terms.
constexpr int kSlots = 4;

template <typename F>
CX_INLINE F fold(const F (&slots)[kSlots]) {
  return (slots[0] + slots[1]) + (slots[2] + slots[3]);
}
template <typename F>
CX_INLINE F fold(const F (&slots)[1]) {
  return slots[0];
}

template <typename P, int N>
struct RowSums {
  typename P::F lane[N][kSlots];
  typename P::W wide[N];
  CX_INLINE RowSums() {
    for (int i = 0; i < N; ++i) {
      for (int k = 0; k < kSlots; ++k) lane[i][k] = 0;
      wide[i] = 0;
    }
  }
  CX_INLINE void flush() {
    for (int i = 0; i < N; ++i) {
      wide[i] = wide[i] + P::widen(fold(lane[i]));
      for (int k = 0; k < kSlots; ++k) lane[i][k] = 0;
    }
  }
};

template <typename P, int N, int kSlotCount = kSlots>
struct TileSums {
  typename P::F lane[N][kSlotCount];
  CX_INLINE TileSums() {
    for (int i = 0; i < N; ++i) {
      for (int k = 0; k < kSlotCount; ++k) lane[i][k] = 0;
    }
  }
};

template <bool kFull_>
struct Whole {
  static constexpr bool kFull = kFull_;
};

// kSlot: which of the kSlots accumulators of a max or a sum the chunk feeds. A partial
// chunk (kFull false) holds classes [j0, j0 + count); a streamed one is written with
// streaming stores.
template <bool kFull_, int kSlot_ = 0>
struct RowChunk {
  static constexpr bool kFull = kFull_;
  static constexpr int kSlot = kSlot_;
  int64_t j0;
  int64_t count = 0;
  bool streamed = false;
};

// A float32 gradient is written with streaming stores where the whole output has at least
// kStreamBytes (smaller ones stay in cache for the op that reads them next: written then
// read back by 2 threads here, streaming took 1.07x the time of ordinary stores at 8 MiB,
// 0.83x at 16 MiB, 0.75x at 64) and a row at least kStreamRowBytes. Measured here, sparse
// labels, streamed / ordinary time: float32 C = 128 1.15-1.42, 300 1.07-1.10, 500 0.97,
// 1000 0.86-0.93, 2000 0.82, 10000 0.84-0.87; bfloat16, whose rows cost their arithmetic
// more than their bytes, C = 2000 1.02, 10000 1.05.
constexpr int64_t kStreamBytes = int64_t{16} << 20;
constexpr int64_t kStreamRowBytes = 2048;
constexpr int64_t kLineBytes = 64;

template <typename T, typename A>
constexpr bool kStreamsType = Packs<A>::kStreams && std::is_same_v<T, float>;

// Whether a call streams its gradient (every shard decides alike).
template <typename T, typename A>
bool streams_backprop(const SoftmaxProblem<T, A>& p) {
  const int64_t row_bytes = p.c * static_cast<int64_t>(sizeof(T));
  return kStreamsType<T, A> && p.backprop != nullptr && row_bytes >= kStreamRowBytes &&
         p.n * row_bytes >= kStreamBytes;
}

// Elements of T from p to the next cache-line boundary (0 if on one).
template <typename T>
CX_INLINE int64_t to_line_boundary(const T* p) {
  const auto at = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % kLineBytes);
  return (kLineBytes - at) % kLineBytes / static_cast<int64_t>(sizeof(T));
}

// Whether `at` elements of T into a stream is a multiple of 64 bytes: a loop that steps by
// vectors requests one line per 64 bytes it moves on (every vector of 16 floats, every
// other one of 16 bfloat16s, every eighth double).
template <typename T>
CX_INLINE bool line_step(int64_t at) {
  return at * static_cast<int64_t>(sizeof(T)) % kLineBytes == 0;
}

// One cache line at p into L1, for reading or with intent to write.
CX_INLINE void prefetch_line(const void* p, bool write) {
  if (write) {
    __builtin_prefetch(p, 1, 3);
  } else {
    __builtin_prefetch(p, 0, 3);
  }
}

// Lines [data, data + count). A tile transposed by blocks reads and writes each of its rows
// in pieces, 16 short streams the hardware prefetchers do not follow: the next tile is
// requested while this one is computed.
template <typename U>
CX_INLINE void prefetch(const U* data, int64_t count, bool write) {
  const char* from = reinterpret_cast<const char*>(data);
  const int64_t bytes = count * static_cast<int64_t>(sizeof(U));
  for (int64_t at = 0; at < bytes; at += kLineBytes) prefetch_line(from + at, write);
}

// kRows (1 or 2) consecutive rows of C classes, in chunks of kLanes, a chunk holding the same
// classes of each row: the row algorithm's values are P::F (a pack, or Two packs), per-row
// values broadcast. keep() rows are scratch of C rounded up to whole chunks (`stride`). A
// row starts a new stream the hardware prefetchers pick up late (each 4 KiB page restarts
// them): with fetch_next set, summing requests the lines of the rows `lead` rows ahead.
// With stream set (one row only), each() (the write pass) streams the row's whole cache
// lines: its chunks start at the row's first line boundary, and the lines it shares with
// the neighbouring rows are written with ordinary stores (half-line streaming, tried with
// bfloat16 at C = 100, took 2.5x the time of ordinary stores). Two rows abandon together
// when either is not finite (`abandoned`): the caller walks them again one at a time.
template <typename T, typename A, int kRows = 1>
struct RowWalk {
  using S = Packs<A>;  // one row's packs
  using P = RowPacks<A, kRows>;
  using F = typename P::F;
  using I = typename P::I;
  static constexpr int W = S::kLanes;
  static constexpr int kSlots = ::costxent::cpu::COSTXENT_CPU_ISA::kSlots;

  int64_t c;
  int64_t stride;
  const T* z;
  const T* t;
  T* out;
  A* keep_rows[2];
  bool fetch_next;
  bool stream;
  bool abandoned = false;
  int64_t lead = kRows;  // rows ahead of this one that fetch_next requests
  // The rows' RowStates, kRowStateSize apart: read by a resuming backward, written by a
  // forward (each nullptr when not).
  const A* state_in = nullptr;
  A* state_out = nullptr;
  static constexpr bool kHasState = true;

  // The F (or I) of fn(r), r = 0 .. kRows - 1.
  template <typename Fn>
  static CX_INLINE auto rows(Fn&& fn) {
    if constexpr (kRows == 1) {
      return fn(0);
    } else {
      return Two<decltype(fn(0))>{fn(0), fn(1)};
    }
  }

  template <typename Fn>
  CX_INLINE void each(Fn&& fn) const {
    if (kRows > 1 || !stream) {
      span(0, c, false, fn);
      return;
    }
    constexpr int64_t kLine = kLineBytes / static_cast<int64_t>(sizeof(T));
    static_assert(kLine % W == 0, "a line is whole chunks");
    const int64_t to_line = to_line_boundary(out);
    const int64_t head = to_line < c ? to_line : c;
    const int64_t lines_end = head + (c - head) / kLine * kLine;
    span(0, head, false, fn);
    span(head, lines_end, true, fn);
    span(lines_end, c, false, fn);
  }
  // Chunks [from, to): whole ones, streamed if `streamed`, then a partial one.
  template <typename Fn>
  CX_INLINE void span(int64_t from, int64_t to, bool streamed, Fn& fn) const {
    int64_t j = from;
    for (; j + W <= to; j += W) fn(RowChunk<true>{j, W, streamed});
    if (j < to) fn(RowChunk<false>{j, to - j});
  }
  // Chunks [j, stop) (whole ones), kSlots at a time taking turns at the accumulators.
  template <typename Fn>
  CX_INLINE int64_t each_slot_until(int64_t j, int64_t stop, Fn&& fn) const {
    for (; j + kSlots * W <= stop; j += kSlots * W) {
      fn(RowChunk<true, 0>{j});
      fn(RowChunk<true, 1>{j + W});
      fn(RowChunk<true, 2>{j + 2 * W});
      fn(RowChunk<true, 3>{j + 3 * W});
    }
    for (; j + W <= stop; j += W) fn(RowChunk<true>{j});
    return j;
  }
  template <typename Fn>
  CX_INLINE void each_slot(Fn&& fn) const {
    const int64_t j = each_slot_until(0, c, fn);
    if (j < c) fn(RowChunk<false>{j, c - j});
  }
  template <typename Sums, typename Fn>
  CX_INLINE void each_sum(Sums& s, Fn&& fn) const {
    auto chunk = [&](const auto& ch) {
      if (fetch_next && line_step<T>(ch.j0)) ahead(ch.j0);
      fn(ch, s);
    };
    if constexpr (kRows == 1) {
      if (long_row()) {
        int64_t j = 0;
        while (j + W <= c) {
          const int64_t stop = j + kSumBlock * W < c ? j + kSumBlock * W : c;
          j = each_slot_until(j, stop, chunk);
          s.flush();
        }
        if (j < c) {
          chunk(RowChunk<false>{j, c - j});
          s.flush();
        }
        return;
      }
    }
    each_slot(chunk);
  }
  // Rows of more than kSumBlock chunks sum in double blocks (one row at a time only).
  CX_INLINE bool long_row() const { return kRows == 1 && c > kSumBlock * W; }
  // The lines at chunk j0's offset of the rows `lead` rows ahead: logits, dense targets, and
  // a gradient that is not streamed.
  CX_INLINE void ahead(int64_t j0) const {
    for (int64_t r = lead; r < lead + kRows; ++r) {
      const int64_t at = r * c + j0;
      prefetch_line(z + at, false);
      if (t != nullptr) prefetch_line(t + at, false);
      if (out != nullptr && !stream) prefetch_line(out + at, true);
    }
  }
  template <int N, unsigned>
  CX_INLINE auto sums() const {
    if constexpr (kRows == 1) {
      return RowSums<P, N>{};
    } else {
      return TileSums<P, N>{};
    }
  }
  template <typename Sums, typename C>
  CX_INLINE void add(Sums& s, int i, const C& ch, F v) const {
    F& lane = s.lane[i][C::kSlot];
    if constexpr (C::kFull) {
      lane += v;
    } else {
      for (int r = 0; r < kRows; ++r)
        part(lane, r) = ::costxent::cpu::COSTXENT_CPU_ISA::add_where(
            S::first_lanes(ch.count), part(lane, r), part(v, r));
    }
  }
  template <typename Sums, typename C, typename M>
  CX_INLINE void add_where(Sums& s, int i, const C& ch, M m, F v) const {
    F& lane = s.lane[i][C::kSlot];
    for (int r = 0; r < kRows; ++r) {
      auto mr = part(m, r);
      if constexpr (!C::kFull) mr = mr & S::first_lanes(ch.count);
      part(lane, r) = ::costxent::cpu::COSTXENT_CPU_ISA::add_where(mr, part(lane, r), part(v, r));
    }
  }
  // A row's sums are complete after its chunks: total() reads them horizontally.
  template <typename Sums>
  CX_INLINE void reduce(const Sums&) const {}
  template <typename Sums>
  CX_INLINE F total(const Sums& s, int i) const {
    if constexpr (kRows == 1) {
      if (long_row()) return F(static_cast<A>(S::sum_wide(s.wide[i])));
    }
    const F lanes = fold(s.lane[i]);
    return rows([&](int r) { return S::reduce_add(part(lanes, r)); });
  }
  // Across the lanes; the argmax is the lowest index holding the max.
  CX_INLINE Extremes<F, I> extremes(F max_lanes, F min_lanes, I arg_lanes, bool with_arg) const {
    const F m = rows([&](int r) { return S::reduce_max(part(max_lanes, r)); });
    const I arg = rows([&](int r) {
      using IS = typename S::I;
      return with_arg ? S::reduce_min(select(part(max_lanes, r) == part(m, r), part(arg_lanes, r),
                                             IS(INT32_MAX)))
                      : IS(0);
    });
    return {m, rows([&](int r) { return S::reduce_min(part(min_lanes, r)); }), arg};
  }

  template <typename C>
  CX_INLINE F z_at(const C& ch) const {
    return rows([&](int r) {
      const T* zr = z + r * c;
      if constexpr (C::kFull) {
        return S::load(zr + ch.j0);
      } else {
        return S::load_first(zr + ch.j0, ch.count, zr[ch.j0]);  // neutral for max and min
      }
    });
  }
  template <typename C>
  CX_INLINE F t_at(const C& ch) const {
    return rows([&](int r) {
      const T* tr = t + r * c;
      if constexpr (C::kFull) {
        return S::load(tr + ch.j0);
      } else {
        return S::load_first(tr + ch.j0, ch.count, T{});
      }
    });
  }
  template <typename C>
  static CX_INLINE typename S::I classes(const C& ch) {
    return typename S::I(static_cast<int32_t>(ch.j0)) + S::iota();
  }
  template <typename C>
  CX_INLINE I cls(const C& ch) const {
    const typename S::I j = classes(ch);
    return rows([&](int) { return j; });
  }
  template <typename C>
  CX_INLINE void keep(int slot, const C& ch, F v) const {
    for (int r = 0; r < kRows; ++r) S::store(keep_rows[slot] + r * stride + ch.j0, part(v, r));
  }
  template <typename C, typename Recompute>
  CX_INLINE F kept(int slot, const C& ch, Recompute&&) const {
    return rows([&](int r) { return values_at(keep_rows[slot] + r * stride, ch); });
  }
  template <typename C>
  CX_INLINE void write(const C& ch, F v) const {
    for (int r = 0; r < kRows; ++r) write_row(out + r * c, ch, part(v, r));
  }
  template <typename C>
  CX_INLINE void write_row(T* row, const C& ch, typename S::F v) const {
    if constexpr (C::kFull) {
      if constexpr (kStreamsType<T, A>) {
        if (ch.streamed) {
          S::store_stream(row + ch.j0, v);
          return;
        }
      }
      S::store(row + ch.j0, v);
    } else {
      S::store_first(row + ch.j0, v, ch.count);
    }
  }
  // `on` at class y, `off` elsewhere, with no per-chunk vector compare: a streamed chunk in
  // one store (its line is written once, so y's chunk selects), others as off with y's
  // element patched.
  template <typename C>
  CX_INLINE void write_onehot(const C& ch, I y, F off, F on) const {
    for (int r = 0; r < kRows; ++r) {
      T* row = out + r * c;
      const auto yr = part(y, r);
      const int64_t at = S::lane0(yr) - ch.j0;
      const bool holds_y = at >= 0 && at < (C::kFull ? W : ch.count);
      if (ch.streamed) {
        write_row(row, ch,
                  holds_y ? select(classes(ch) == yr, part(on, r), part(off, r)) : part(off, r));
        continue;
      }
      write_row(row, ch, part(off, r));
      if (holds_y) row[ch.j0 + at] = from_acc<T>(S::lane(part(on, r), at));
    }
  }
  // values[j] for the chunk's classes j.
  template <typename C>
  static CX_INLINE typename S::F values_at(const A* values, const C& ch) {
    if constexpr (C::kFull) {
      return S::load(values + ch.j0);
    } else {
      return S::load_first(values + ch.j0, ch.count, A(0));
    }
  }
  // table[j] and table[row * c + j] for the chunk's classes j.
  template <typename C>
  CX_INLINE F class_values(const A* table, const C& ch) const {
    const typename S::F v = values_at(table, ch);
    return rows([&](int) { return v; });
  }
  template <typename C>
  CX_INLINE F row_table(const A* table, I row, const C& ch) const {
    return rows([&](int r) {
      return values_at(table + static_cast<int64_t>(S::lane0(part(row, r))) * c, ch);
    });
  }
  // table[j * c + col] for the chunk's classes j where t_j != 0, else 0: a column of a
  // cost matrix is one cache line per class, read only for the classes a target holds.
  template <typename C>
  CX_INLINE F column(const A* table, I col, const C& ch, F t) const {
    return rows([&](int r) {
      const auto held = !(part(t, r) == typename S::F(0));
      if (!any(held)) return typename S::F(0);
      A buf[W];
      const A* base = table + S::lane0(part(col, r));
      for (int l = 0; l < W; ++l) buf[l] = lane_set(held, l) ? base[(ch.j0 + l) * c] : A(0);
      return S::load(buf);
    });
  }
  // table[row * c + col] and z_y, broadcast.
  CX_INLINE F lookup(const A* table, I row, I col) const {
    return rows([&](int r) {
      return typename S::F(
          table[static_cast<int64_t>(S::lane0(part(row, r))) * c + S::lane0(part(col, r))]);
    });
  }
  CX_INLINE F row_value(I y) const {
    return rows([&](int r) { return typename S::F(to_acc(z[r * c + S::lane0(part(y, r))])); });
  }
  // Expected costs c_j = sum_k t_k M[k, j] of a dense row, over the classes with t_k != 0.
  CX_INLINE void prepare_dense_costs(const A* m) const {
    for (int r = 0; r < kRows; ++r) {
      A* costs = keep_rows[1] + r * stride;
      const T* tr = t + r * c;
      for (int64_t j = 0; j < c; ++j) costs[j] = 0;
      for (int64_t k = 0; k < c; ++k) {
        const A tk = to_acc(tr[k]);
        if (tk == A(0)) continue;
        const A* mk = m + k * c;
        for (int64_t j = 0; j < c; ++j) costs[j] += tk * mk[j];
      }
    }
  }
  template <typename C>
  CX_INLINE F dense_cost(const A*, const C& ch) const {
    return kept(1, ch, 0);
  }
  CX_INLINE bool resumes() const { return state_in != nullptr; }
  CX_INLINE RowState<F> load_state() const {
    auto field = [&](int k) {
      return rows([&](int r) { return typename S::F(state_in[r * kRowStateSize + k]); });
    };
    return {field(0), field(1), field(2), field(3)};
  }
  CX_INLINE void save_state(const RowState<F>& s) const {
    if (state_out == nullptr) return;
    for (int r = 0; r < kRows; ++r) {
      A* to = state_out + r * kRowStateSize;
      to[0] = S::lane0(part(s.max, r));
      to[1] = S::lane0(part(s.inv_sum, r));
      to[2] = S::lane0(part(s.value, r));
      to[3] = S::lane0(part(s.target_sum, r));
    }
  }
  // A row whose max or min is not finite is NaN throughout: written now, skipping the other
  // passes (a NaN elsewhere surfaces in pass 2's sums), and so is its state. Two rows leave
  // it to the caller.
  CX_INLINE bool abandon(F m, F low, bool backprop) {
    bool finite = true;
    for (int r = 0; r < kRows; ++r)
      finite = finite && S::lane0(part(m, r)) < A(INFINITY) &&
               S::lane0(part(low, r)) > A(-INFINITY);
    if (finite) return false;
    if (kRows > 1) return abandoned = true;
    if (backprop) {
      const T nan = from_acc<T>(quiet_nan(A(0)));
      for (int64_t j = 0; j < c; ++j) out[j] = nan;
    }
    if (state_out != nullptr) {
      for (int64_t k = 0; k < kRowStateSize; ++k) state_out[k] = quiet_nan(A(0));
    }
    return true;
  }
};

template <int kSlot_ = 0>
struct TileChunk {
  static constexpr bool kFull = true;
  static constexpr int kSlot = kSlot_;
  int64_t j;
};

// kLanes consecutive rows (fewer at the end: the missing rows are zero padding) of
// C <= kSmallClasses classes, transposed to [class][row] on load and back on store. Which rows
// walk in tiles: cpu_isa.h walks_tiles().

// A tile's class count: a constant for the few values the kernels specialise, else a member.
template <int kC>
struct Classes {
  static constexpr int64_t c = kC;
  CX_INLINE explicit Classes(int64_t) {}
};
template <>
struct Classes<0> {
  int64_t c;
  CX_INLINE explicit Classes(int64_t classes) : c(classes) {}
};

template <typename T, typename A, int kC>
struct TileWalk : Classes<kC> {
  using Classes<kC>::c;
  using P = Packs<A>;
  using F = typename P::F;
  using I = typename P::I;
  static constexpr int W = P::kLanes;
  // A tile of fewer classes than there are accumulators (2 or 3, known at compile time) has
  // one: the others would stay -inf and 0 and still be folded in, 10 of the about 120
  // arithmetic vector instructions of a C = 2 tile. One accumulator, new / old time, float32:
  // C = 2 0.92-0.95, C = 3 0.96-0.97.
  static constexpr int kAllSlots = ::costxent::cpu::COSTXENT_CPU_ISA::kSlots;
  static constexpr int kSlots = kC > 0 && kC < kAllSlots ? 1 : kAllSlots;

  // A tile is transposed in registers: up to kShuffleClasses classes by two-source shuffles
  // of its vectors (a shuffled vector takes lane l from pair q of source vectors where
  // take[q] is set, pair 0 elsewhere), beyond by W x W block transposes of row vectors.
  static constexpr int64_t kShuffleClasses = 8;
  static_assert(kSmallClasses % W == 0, "block transposes fill whole blocks");
  static constexpr int kPairs = (kShuffleClasses + 1) / 2;
  struct Shuffle {
    I index[kPairs];
    Mask take[kPairs];
  };

  bool shuffled;
  A zt[kSmallClasses][W];
  A tt[kSmallClasses][W];
  A keep_rows[2][kSmallClasses][W];
  A out_t[kSmallClasses][W];
  Shuffle to_classes[kShuffleClasses];
  Shuffle to_rows[kShuffleClasses];

  CX_INLINE explicit TileWalk(int64_t classes)
      : Classes<kC>(classes), shuffled(classes <= kShuffleClasses) {
    if (!shuffled) return;
    // Class j's lane r is flat element r c + j; flat chunk v's lane l is class (vW + l) % c
    // of row (vW + l) / c.
    for (int64_t o = 0; o < c; ++o) {
      plan(&to_classes[o], [&](int l) { return o + l * c; });
      plan(&to_rows[o], [&](int l) { return ((o * W + l) % c) * W + (o * W + l) / c; });
    }
  }
  // source(l): the flat index (vector * W + lane) that lane l takes.
  template <typename Source>
  static CX_INLINE void plan(Shuffle* sh, Source source) {
    for (int q = 0; q < kPairs; ++q) {
      int32_t index[W];
      int32_t take[W];
      for (int l = 0; l < W; ++l) {
        const int64_t f = source(l);
        take[l] = f / W / 2 == q ? -1 : 0;
        index[l] = static_cast<int32_t>(f % (2 * W));
      }
      sh->index[q] = load_int(index);
      sh->take[q] = mask_of(load_int(take).v);
    }
  }
  CX_INLINE F shuffle(const F* vectors, const Shuffle& sh) const {
    F r = Float(__builtin_shuffle(vectors[0].v, vectors[1].v, sh.index[0].v));
    for (int q = 1; q < kPairs && 2 * q < c; ++q) {
      const F& b = vectors[2 * q + 1 < c ? 2 * q + 1 : 2 * q];
      r = select(sh.take[q], Float(__builtin_shuffle(vectors[2 * q].v, b.v, sh.index[q].v)), r);
    }
    return r;
  }

  // Rows [0, rows) of src into [class][row] (A) form.
  CX_INLINE void transpose_in(const T* src, int64_t rows, A (*dst)[W]) const {
    if (shuffled) {
      const int64_t count = rows * c;
      F v[kShuffleClasses];
      for (int64_t k = 0; k < c; ++k) {
        const int64_t at = k * W;
        v[k] = at + W <= count ? P::load(src + at)
               : at < count    ? P::load_first(src + at, count - at, T{})
                               : F(0);
      }
      for (int64_t j = 0; j < c; ++j) P::store(dst[j], shuffle(v, to_classes[j]));
      return;
    }
    for (int64_t j0 = 0; j0 < c; j0 += W) {
      const int64_t n = c - j0 < W ? c - j0 : W;
      F v[W];
      for (int r = 0; r < W; ++r) {
        const T* row = src + r * c + j0;
        v[r] = r >= rows ? F(0) : n == W ? P::load(row) : P::load_first(row, n, T{});
      }
      transpose(v);
      // All W (kSmallClasses is a whole number of blocks): a copy of n would become memcpy.
      for (int j = 0; j < W; ++j) P::store(dst[j0 + j], v[j]);
    }
  }
  CX_INLINE void load(const T* z, const T* t, int64_t rows) {
    transpose_in(z, rows, zt);
    if (t != nullptr) transpose_in(t, rows, tt);
  }
  // The gradient written by write(), back to rows [0, rows) of dst.
  CX_INLINE void store(T* dst, int64_t rows) const {
    if (shuffled) {
      const int64_t count = rows * c;
      F classes[kShuffleClasses];
      for (int64_t j = 0; j < c; ++j) classes[j] = P::load(out_t[j]);
      for (int64_t v = 0; v * W < count; ++v) {
        const F g = shuffle(classes, to_rows[v]);
        if (v * W + W <= count) {
          P::store(dst + v * W, g);
        } else {
          P::store_first(dst + v * W, g, count - v * W);
        }
      }
      return;
    }
    for (int64_t j0 = 0; j0 < c; j0 += W) {
      const int64_t n = c - j0 < W ? c - j0 : W;
      F v[W];
      for (int j = 0; j < W; ++j) v[j] = j < n ? P::load(out_t[j0 + j]) : F(0);
      transpose(v);
      for (int64_t r = 0; r < rows; ++r) {
        if (n == W) {
          P::store(dst + r * c + j0, v[r]);
        } else {
          P::store_first(dst + r * c + j0, v[r], n);
        }
      }
    }
  }

  template <typename Fn>
  CX_INLINE void each(Fn&& fn) const {
    for (int64_t j = 0; j < c; ++j) fn(TileChunk<>{j});
  }
  template <typename Fn>
  CX_INLINE void each_slot(Fn&& fn) const {
    if constexpr (kSlots == 1) {
      each(fn);
      return;
    }
    int64_t j = 0;
    for (; j + kSlots <= c; j += kSlots) {
      fn(TileChunk<0>{j});
      fn(TileChunk<1>{j + 1});
      fn(TileChunk<2>{j + 2});
      fn(TileChunk<3>{j + 3});
    }
    for (; j < c; ++j) fn(TileChunk<>{j});
  }
  template <typename S, typename Fn>
  CX_INLINE void each_sum(S& s, Fn&& fn) const {
    each_slot([&](const auto& ch) { fn(ch, s); });
  }
  template <int N, unsigned>
  CX_INLINE TileSums<P, N, kSlots> sums() const {
    return {};
  }
  template <typename S, typename C>
  CX_INLINE void add(S& s, int i, const C&, F v) const {
    s.lane[i][C::kSlot] += v;
  }
  template <typename S, typename C>
  CX_INLINE void add_where(S& s, int i, const C&, Mask m, F v) const {
    F& lane = s.lane[i][C::kSlot];
    lane = ::costxent::cpu::COSTXENT_CPU_ISA::add_where(m, lane, v);
  }
  // Lanes are rows: every lane's sums and extremes are its row's already.
  template <int N>
  CX_INLINE void reduce(const TileSums<P, N, kSlots>&) const {}
  template <int N>
  CX_INLINE F total(const TileSums<P, N, kSlots>& s, int i) const {
    return fold(s.lane[i]);
  }
  CX_INLINE Extremes<F, I> extremes(F max_lanes, F min_lanes, I arg_lanes, bool) const {
    return {max_lanes, min_lanes, arg_lanes};
  }

  template <typename C>
  CX_INLINE F z_at(const C& ch) const { return P::load(zt[ch.j]); }
  template <typename C>
  CX_INLINE F t_at(const C& ch) const { return P::load(tt[ch.j]); }
  template <typename C>
  CX_INLINE I cls(const C& ch) const { return I(static_cast<int32_t>(ch.j)); }
  template <typename C>
  CX_INLINE void keep(int slot, const C& ch, F v) { P::store(keep_rows[slot][ch.j], v); }
  template <typename C, typename Recompute>
  CX_INLINE F kept(int slot, const C& ch, Recompute&&) const {
    return P::load(keep_rows[slot][ch.j]);
  }
  template <typename C>
  CX_INLINE void write(const C& ch, F v) { P::store(out_t[ch.j], v); }
  template <typename C>
  CX_INLINE void write_onehot(const C& ch, I y, F off, F on) {
    write(ch, select(cls(ch) == y, on, off));
  }
  template <typename C>
  CX_INLINE F class_values(const A* table, const C& ch) const { return F(table[ch.j]); }
  template <typename C>
  CX_INLINE F row_table(const A* table, I row, const C& ch) const {
    return P::gather(table, row * I(static_cast<int32_t>(c)) + I(static_cast<int32_t>(ch.j)));
  }
  template <typename C>
  CX_INLINE F column(const A* table, I col, const C& ch, F t) const {
    return P::gather_where(table + ch.j * c, col, !(t == F(0)));
  }
  CX_INLINE F lookup(const A* table, I row, I col) const {
    return P::gather(table, row * I(static_cast<int32_t>(c)) + col);
  }
  // z_y per row: a select per class for few classes, a gather otherwise.
  CX_INLINE F row_value(I y) const {
    if (c > 8) return P::gather(&zt[0][0], y * I(W) + P::iota());
    F r = 0;
    for (int64_t j = 0; j < c; ++j) r = select(y == I(static_cast<int32_t>(j)), P::load(zt[j]), r);
    return r;
  }
  CX_INLINE void prepare_dense_costs(const A*) const {}
  template <typename C>
  CX_INLINE F dense_cost(const A* m, const C& ch) const {
    F cost = 0;
    for (int64_t k = 0; k < c; ++k) cost += P::load(tt[k]) * F(m[k * c + ch.j]);
    return cost;
  }
  CX_INLINE bool abandon(F, F, bool) const { return false; }
  static constexpr bool kHasState = false;
};

// block_sums of one call: block b = scale * sum over its rows of row_scale * loss, in double,
// rows in order (TileWalk: lane-wise across its tiles, lanes added at the end).
template <typename A>
struct BlockSums {
  using P = Packs<A>;
  double* out;
  double scale;
  int64_t block = -1;
  typename P::W lanes = 0;
  double serial = 0;

  CX_INLINE void enter(int64_t row) {
    const int64_t b = row / kReduceBlockRows;
    if (b == block) return;
    flush();
    block = b;
    lanes = 0;
    serial = 0;
  }
  CX_INLINE void add(int64_t row, double value) {
    if (out == nullptr) return;
    enter(row);
    serial += value;
  }
  // rows [row0, row0 + rows) of a tile, lane l holding row row0 + l.
  CX_INLINE void add_tile(int64_t row0, int64_t rows, typename P::F row_scale,
                          typename P::F loss) {
    if (out == nullptr) return;
    if (row0 / kReduceBlockRows != (row0 + rows - 1) / kReduceBlockRows) {
      A rs[P::kLanes];
      A l[P::kLanes];
      P::store(rs, row_scale);
      P::store(l, loss);
      for (int64_t r = 0; r < rows; ++r)
        add(row0 + r, static_cast<double>(rs[r]) * static_cast<double>(l[r]));
      return;
    }
    enter(row0);
    const auto valid = P::first_lanes(rows);
    lanes = lanes + P::widen(select(valid, row_scale, typename P::F(0))) *
                        P::widen(select(valid, loss, typename P::F(0)));
  }
  CX_INLINE void flush() {
    if (out != nullptr && block >= 0) out[block] = scale * (P::sum_wide(lanes) + serial);
  }
};

// How many rows ahead a walk of `rows` rows requests lines: the next rows, or as many as
// kLeadBytes take, since one row of 100 floats is computed in less time than its lines take
// to come from memory. Requesting 2 KiB ahead rather than the next rows, new / old time:
// float32 C = 100 0.92 (loss only 0.95), C = 200 0.95, bfloat16 C = 100 0.99; 4 KiB ahead
// gained nothing more (0.97-1.02).
constexpr int64_t kLeadBytes = 2048;
CX_INLINE int64_t lead_rows(int64_t row_bytes, int64_t rows) {
  const int64_t ahead = (kLeadBytes + row_bytes - 1) / row_bytes;
  return ahead > rows ? ahead : rows;
}

// A row's RowState in a problem's [n, kRowStateSize] state (nullptr: none).
template <typename A>
CX_INLINE A* state_row(A* state, int64_t row) {
  return state != nullptr ? state + row * kRowStateSize : nullptr;
}

// The lone-row loop inlines everything it calls: GCC otherwise compiles a chunk lambda that
// each() calls for up to three spans out of line, and the walker's fields then live in
// memory (float32 C = 1000: 1.25x the time). The pair loop's each() has one span: flattened,
// its dense cost-matrix rows took 1.47x the time (C = 100), but sparse rows with a cost
// matrix, whose argmax made GCC leave the exp pass out of line, gained (new / old, float32
// C = 100: cost matrix 0.87-0.89 with the gradient, 0.84 the loss alone; expected cost 0.75;
// C = 256 0.89-0.94; plain and class weights 0.97-1.02), so only those are flattened.
#define CX_FLATTEN __attribute__((flatten))

// Rows [begin, end) one at a time, their weighted losses added to sums.
template <typename Mode, typename T, typename A>
CX_FLATTEN int64_t rows_by_row(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end, A* scratch,
                    bool stream, BlockSums<A>& sums) {
  using P = Packs<A>;
  using F = typename P::F;
  using I = typename P::I;
  const int64_t c = p.c;
  const RowOptions<A> o = row_options(p);
  const int64_t stride = (c + P::kLanes - 1) / P::kLanes * P::kLanes;
  RowWalk<T, A> walk{c, stride, nullptr, nullptr, nullptr, {scratch, scratch + stride}, false,
                     stream};
  walk.lead = lead_rows(c * static_cast<int64_t>(sizeof(T)), 1);
  const bool backprop = p.backprop != nullptr;
  for (int64_t row = begin; row < end; ++row) {
    int64_t y = 0;
    if constexpr (Mode::kSparse) {
      y = label_at(p, row);
      const LabelKind kind = classify_label(p, y);
      if (kind == LabelKind::kIgnored) {
        if (p.loss != nullptr) p.loss[row] = 0;
        if (backprop) {
          T* out = p.backprop + row * c;
          for (int64_t j = 0; j < c; ++j) out[j] = T{};
        }
        if (p.row_state_out != nullptr) {
          for (int64_t k = 0; k < kRowStateSize; ++k) p.row_state_out[row * kRowStateSize + k] = 0;
        }
        sums.add(row, 0.0);
        continue;
      }
      if (kind == LabelKind::kInvalid) return row;
    }
    walk.z = p.logits + row * c;
    walk.t = Mode::kSparse ? nullptr : p.dense + row * c;
    walk.out = backprop ? p.backprop + row * c : nullptr;
    walk.state_in = state_row(p.row_state_in, row);
    walk.state_out = state_row(p.row_state_out, row);
    walk.fetch_next = row + walk.lead < end;
    const A rs = p.row_scale != nullptr ? p.row_scale[row] : A(1);
    const A loss = P::lane0(softmax_row<Mode>(walk, o, F(rs * p.scale),
                                              I(static_cast<int32_t>(y)), backprop));
    if (p.loss != nullptr) p.loss[row] = loss;
    sums.add(row, static_cast<double>(rs) * static_cast<double>(loss));
  }
  return -1;
}

// Rows of at most kPairClasses classes walk in pairs (not focal ones, whose per-class work
// is long enough to overlap rows by itself). A row of 100 classes took about 200 cycles, half
// of them its one chain of reductions and a log; paired, new / old time: loss only float32
// C = 100 0.79-0.82; loss and gradient float32 C = 65-256 0.83-0.95, bfloat16 C = 100 0.88,
// 200 0.88. Paired rows are never streamed.
constexpr int64_t kPairClasses = 256;
static_assert(kPairClasses * 4 < kStreamRowBytes, "paired rows are shorter than streamed ones");

template <typename Mode, typename A>
constexpr bool kPairs = Packs<A>::kLanes > 1 && !Mode::kFocal;

// Rows [begin, end) two at a time; a row whose label is not a class, a pair with a row that
// is not finite, and an odd last row go through rows_by_row.
template <typename Mode, typename T, typename A>
int64_t rows_by_pair(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end, A* scratch,
                     BlockSums<A>& sums) {
  using P = Packs<A>;
  using F = typename P::F;
  using I = typename P::I;
  using P2 = RowPacks<A, 2>;
  const int64_t c = p.c;
  const RowOptions<A> o = row_options(p);
  const int64_t stride = (c + P::kLanes - 1) / P::kLanes * P::kLanes;
  RowWalk<T, A, 2> walk{c, stride, nullptr, nullptr, nullptr, {scratch, scratch + 2 * stride},
                        false, false};
  walk.lead = lead_rows(c * static_cast<int64_t>(sizeof(T)), 2);
  const bool backprop = p.backprop != nullptr;
  int64_t row = begin;
  while (row + 1 < end) {
    int64_t y[2] = {0, 0};
    bool classes = true;
    if constexpr (Mode::kSparse) {
      for (int r = 0; r < 2; ++r) {
        y[r] = label_at(p, row + r);
        classes = classes && classify_label(p, y[r]) == LabelKind::kClass;
      }
    }
    if (classes) {
      walk.z = p.logits + row * c;
      walk.t = Mode::kSparse ? nullptr : p.dense + row * c;
      walk.out = backprop ? p.backprop + row * c : nullptr;
      walk.state_in = state_row(p.row_state_in, row);
      walk.state_out = state_row(p.row_state_out, row);
      walk.fetch_next = row + walk.lead + 1 < end;
      walk.abandoned = false;
      A rs[2];
      for (int r = 0; r < 2; ++r) rs[r] = p.row_scale != nullptr ? p.row_scale[row + r] : A(1);
      const typename P2::F loss = softmax_row<Mode>(
          walk, o, typename P2::F(F(rs[0] * p.scale), F(rs[1] * p.scale)),
          typename P2::I(I(static_cast<int32_t>(y[0])), I(static_cast<int32_t>(y[1]))),
          backprop);
      if (!walk.abandoned) {
        for (int r = 0; r < 2; ++r) {
          const A l = P::lane0(loss.r[r]);
          if (p.loss != nullptr) p.loss[row + r] = l;
          sums.add(row + r, static_cast<double>(rs[r]) * static_cast<double>(l));
        }
        row += 2;
        continue;
      }
    }
    const int64_t bad = rows_by_row<Mode>(p, row, row + 1, scratch, false, sums);
    if (bad >= 0) return bad;
    ++row;
  }
  return row < end ? rows_by_row<Mode>(p, row, end, scratch, false, sums) : -1;
}

// rows_by_pair with everything it calls inlined, for sparse labels (CX_FLATTEN).
template <typename Mode, typename T, typename A>
CX_FLATTEN int64_t rows_by_pair_inlined(const SoftmaxProblem<T, A>& p, int64_t begin,
                                        int64_t end, A* scratch, BlockSums<A>& sums) {
  return rows_by_pair<Mode>(p, begin, end, scratch, sums);
}

// A tile's sparse labels, rows [row0, row0 + rows) in lanes [0, rows): y (0 where ignored or
// past rows) and the ignored lanes. Returns the first invalid row, or -1.
template <typename T, typename A>
CX_INLINE int64_t tile_labels(const SoftmaxProblem<T, A>& p, int64_t row0, int64_t rows, Int* y,
                              Mask* ignored) {
  // int32 lanes: int64 labels saturate (an out-of-range one stays invalid), ignore_class is
  // compared at full width.
  vi v = {};
  vi skip = {};
  if (p.labels32 != nullptr) {
    if (rows == kLanes) {
      memcpy(&v, p.labels32 + row0, sizeof v);
    } else {
      for (int64_t r = 0; r < rows; ++r) v[r] = p.labels32[row0 + r];
    }
    if (p.has_ignore_class && p.ignore_class == static_cast<int32_t>(p.ignore_class))
      skip = v == static_cast<int32_t>(p.ignore_class);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t label = p.labels64[row0 + r];
      v[r] = static_cast<int32_t>(label < INT32_MIN ? INT32_MIN : label > INT32_MAX ? INT32_MAX : label);
      skip[r] = -static_cast<int32_t>(p.has_ignore_class && label == p.ignore_class);
    }
  }
  const vi bad = ((v < 0) | (v >= static_cast<int32_t>(p.c))) & ~skip;
  if (any(mask_of(bad))) {
    for (int r = 0;; ++r) {
      if (bad[r] != 0) return row0 + r;
    }
  }
  *y = Int(skip ? vi{} : v);
  *ignored = mask_of(skip);
  return -1;
}

template <typename Mode, int kC, typename T, typename A>
int64_t rows_by_tile(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end) {
  using P = Packs<A>;
  using F = typename P::F;
  using I = typename P::I;
  constexpr int W = P::kLanes;
  const int64_t c = p.c;
  const RowOptions<A> o = row_options(p);
  TileWalk<T, A, kC> walk(c);
  BlockSums<A> sums{p.block_sums, static_cast<double>(p.scale)};
  const bool backprop = p.backprop != nullptr;
  for (int64_t row0 = begin; row0 < end; row0 += W) {
    const int64_t rows = end - row0 < W ? end - row0 : W;
    I y = 0;
    Mask ignored = mask_of(vi{});
    if constexpr (Mode::kSparse) {
      const int64_t bad = tile_labels(p, row0, rows, &y, &ignored);
      if (bad >= 0) return bad;
    }
    if (!walk.shuffled && row0 + 2 * W <= end) {
      const int64_t next = (row0 + W) * c;
      prefetch(p.logits + next, W * c, false);
      if (!Mode::kSparse) prefetch(p.dense + next, W * c, false);
      if (backprop) prefetch(p.backprop + next, W * c, true);
    }
    walk.load(p.logits + row0 * c, Mode::kSparse ? nullptr : p.dense + row0 * c, rows);
    F rs = 1;
    if (p.row_scale != nullptr) {
      rs = rows == W ? P::load(p.row_scale + row0) : P::load_first(p.row_scale + row0, rows, A(0));
    }
    F loss = softmax_row<Mode>(walk, o, rs * F(p.scale), y, backprop);
    const bool any_ignored = any(ignored);
    if (any_ignored) loss = select(ignored, F(0), loss);
    if (p.loss != nullptr) {
      if (rows == W) {
        P::store(p.loss + row0, loss);
      } else {
        P::store_first(p.loss + row0, loss, rows);
      }
    }
    sums.add_tile(row0, rows, rs, loss);
    if (!backprop) continue;
    walk.store(p.backprop + row0 * c, rows);
    if (!any_ignored) continue;
    for (int64_t r = 0; r < rows; ++r) {
      if (!lane_set(ignored, static_cast<int>(r))) continue;
      T* out = p.backprop + (row0 + r) * c;
      for (int64_t j = 0; j < c; ++j) out[j] = T{};
    }
  }
  sums.flush();
  return -1;
}

// One-lane (float64) problems walk every row alone. Tiles of 2, 3 or 4 classes (binary and
// the other usual small problems), focal ones aside, know C at compile time, so every class
// loop unrolls (float32 and bfloat16, the types that train; 10-15% per call).
template <typename Mode, typename T, typename A>
int64_t softmax_mode(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end, A* scratch,
                     bool stream) {
  if constexpr (Packs<A>::kLanes > 1) {
    if constexpr (!Mode::kFocal && !std::is_same_v<T, f16>) {
      switch (p.c) {
        case 2:
          return rows_by_tile<Mode, 2>(p, begin, end);
        case 3:
          return rows_by_tile<Mode, 3>(p, begin, end);
        case 4:
          return rows_by_tile<Mode, 4>(p, begin, end);
        default:
          break;
      }
    }
    if (walks_tiles(p.c, Mode::kFocal)) return rows_by_tile<Mode, 0>(p, begin, end);
  }
  BlockSums<A> sums{p.block_sums, static_cast<double>(p.scale)};
  const int64_t bad = [&] {
    if constexpr (kPairs<Mode, A>) {
      if (p.c <= kPairClasses) {
        if constexpr (Mode::kSparse) {
          return rows_by_pair_inlined<Mode>(p, begin, end, scratch, sums);
        }
        return rows_by_pair<Mode>(p, begin, end, scratch, sums);
      }
    }
    return rows_by_row<Mode>(p, begin, end, scratch, stream, sums);
  }();
  sums.flush();
  return bad;
}

// How far ahead of a stretch's element the sigmoid loop requests lines: one page, since
// each 4 KiB page restarts the hardware prefetchers.
constexpr int64_t kSigmoidLeadBytes = 4096;

// Whether a sigmoid label lies outside [0, 1] (a NaN does not: it gives a NaN loss), for a
// label or a pack of them.
template <typename V>
CX_INLINE auto outside_unit_interval(V label) {
  return (label < V(0)) | (label > V(1));
}

// Sigmoid elements [k, k + count) of rows whose first element is class first_class: the
// per-class values and each position's row come from the period arrays at first_class. The
// options are template parameters, so the loop's one branch is the prefetch's. wide gets
// the stretch's sum of row_scale * loss. Returns whether a label lies outside [0, 1]: the
// check rides on the loop's own label loads (a pass of its own waited on every label line).
template <bool kBackprop, bool kFocal, typename T, typename A>
CX_INLINE bool sigmoid_stretch(const SigmoidProblem<T, A>& p, int64_t k, int64_t count,
                               const A* pos, const A* neg, const A* row_of,
                               typename Packs<A>::W& wide) {
  using P = Packs<A>;
  using F = typename P::F;
  constexpr int W = P::kLanes;
  const F eps = p.label_smoothing;
  const F gamma = p.focal_gamma;
  const F scale = p.scale;
  const A* row_scale = p.row_scale != nullptr ? p.row_scale + k / p.c : nullptr;
  F sum_lanes = 0;
  auto bad = P::first_lanes(0);
  auto body = [&](int64_t i, auto whole) {
    constexpr bool kFull = decltype(whole)::kFull;
    auto load = [&](const auto* ptr, auto pad) -> F {
      if constexpr (kFull) {
        return P::load(ptr + i);
      } else {
        return P::load_first(ptr + i, count - i, pad);
      }
    };
    auto store = [&](auto* ptr, F v) {
      if constexpr (kFull) {
        P::store(ptr + i, v);
      } else {
        P::store_first(ptr + i, v, count - i);
      }
    };
    constexpr int64_t kLead = kSigmoidLeadBytes / static_cast<int64_t>(sizeof(T));
    if (kFull && line_step<T>(i) && k + i + kLead < p.n * p.c) {
      prefetch_line(p.logits + k + i + kLead, false);
      prefetch_line(p.labels + k + i + kLead, false);
      if constexpr (kBackprop) prefetch_line(p.backprop + k + i + kLead, true);
    }
    const F z = load(p.logits + k, T{});
    const F label = load(p.labels + k, T{});
    bad = bad | outside_unit_interval(label);
    const F y = smooth_binary_label(label, eps);
    const SigmoidTerms<F> s = sigmoid_terms_with<kFocal, typename P::Math>(
        z, y, load(pos, A(0)), load(neg, A(0)), gamma);
    if (p.loss != nullptr) store(p.loss + k, s.loss);
    const F rs = row_scale != nullptr ? P::gather(row_scale, P::to_index(load(row_of, A(0))))
                                      : F(1);
    if (p.block_sums != nullptr) {
      if constexpr (kFull) {
        sum_lanes += rs * s.loss;
      } else {
        sum_lanes = add_where(P::first_lanes(count - i), sum_lanes, rs * s.loss);
      }
    }
    if constexpr (kBackprop) {
      F factor = scale * rs;
      if (p.element_scale != nullptr) factor = factor * load(p.element_scale + k, A(0));
      store(p.backprop + k, factor * s.grad);
    }
  };
  int64_t i = 0;
  while (i + W <= count) {
    const int64_t stop = i + kSumBlock * W;
    for (; i + W <= count && i < stop; i += W) body(i, Whole<true>{});
    wide = wide + P::widen(sum_lanes);
    sum_lanes = 0;
  }
  if (i < count) {
    body(i, Whole<false>{});
    wide = wide + P::widen(sum_lanes);
  }
  return any(bad);
}

// The first label at or after k outside [0, 1]; the caller's stretch from k holds one.
template <typename T>
int64_t first_invalid_label(const T* labels, int64_t k) {
  for (int64_t i = k;; ++i) {
    if (outside_unit_interval(to_acc(labels[i]))) return i;
  }
}

template <bool kBackprop, bool kFocal, typename T, typename A>
int64_t sigmoid_range(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end, const A* pos,
                      const A* neg, const A* row_of, int64_t period) {
  using P = Packs<A>;
  BlockSums<A> sums{p.block_sums, static_cast<double>(p.scale)};
  const int64_t block_elements = kReduceBlockRows * p.c;
  for (int64_t k = begin; k < end;) {
    // Stretches start at any class and end at a row boundary, a block boundary or at end, so
    // the weights' index is the loop's counter. A stretch holding an invalid label is
    // computed anyway (the call fails, its outputs are not used) and its first one reported.
    const int64_t first_class = k % p.c;
    const int64_t block_end = (k / block_elements + 1) * block_elements;
    int64_t count = period - first_class;
    if (end - k < count) count = end - k;
    if (block_end - k < count) count = block_end - k;
    typename P::W wide = 0;
    if (sigmoid_stretch<kBackprop, kFocal>(p, k, count, pos + first_class, neg + first_class,
                                           row_of + first_class, wide))
      return first_invalid_label(p.labels, k);
    sums.add(k / p.c, P::sum_wide(wide));
    k += count;
  }
  sums.flush();
  return -1;
}

}  // namespace

template <typename T, typename A>
int64_t softmax_rows(const SoftmaxProblem<T, A>& given, int64_t begin, int64_t end,
                     A* scratch) {
  SoftmaxProblem<T, A> p = given;
  if (softmax_row_state_size(p.c, p.focal_gamma != A(0)) == 0) {
    p.row_state_in = nullptr;
    p.row_state_out = nullptr;
  }
  const bool stream = streams_backprop(p);
  const int64_t bad = with_row_mode(p, [&](auto mode) {
    return softmax_mode<decltype(mode)>(p, begin, end, scratch, stream);
  });
  if (stream) stream_fence();
  return bad;
}

template <typename T, typename A>
int64_t sigmoid_elements(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end, A* scratch) {
  // Per-class weights (broadcast from a scalar, or 1) and each position's row, repeated
  // over a whole number of rows at least kSigmoidMinSegment long, so that a stretch of the
  // loop spans many short rows.
  const int64_t period = sigmoid_weight_period(p.c);
  A* pos = scratch;
  A* neg = scratch + period;
  A* row_of = scratch + 2 * period;
  for (int64_t j = 0; j < period; ++j) {
    pos[j] = class_value(p.pos_weight, p.pos_weight_size, j % p.c);
    neg[j] = class_value(p.neg_weight, p.neg_weight_size, j % p.c);
    row_of[j] = static_cast<A>(j / p.c);
  }
  const bool backprop = p.backprop != nullptr;
  const bool focal = p.focal_gamma != A(0);
  if (backprop && focal) return sigmoid_range<true, true>(p, begin, end, pos, neg, row_of, period);
  if (backprop) return sigmoid_range<true, false>(p, begin, end, pos, neg, row_of, period);
  if (focal) return sigmoid_range<false, true>(p, begin, end, pos, neg, row_of, period);
  return sigmoid_range<false, false>(p, begin, end, pos, neg, row_of, period);
}

template <typename T, typename A>
void scale_rows(const T* in, const A* scale, T* out, int64_t c, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const A s = scale[row];
    const T* src = in + row * c;
    T* dst = out + row * c;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) dst[j] = from_acc<T>(to_acc(src[j]) * s);
  }
}

template <typename T, typename A>
void scale_elements(const T* in, const A* scale, T* out, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t k = begin; k < end; ++k) out[k] = from_acc<T>(to_acc(in[k]) * scale[k]);
}

#define COSTXENT_INSTANTIATE(T, A)                                                         \
  template int64_t softmax_rows<T, A>(const SoftmaxProblem<T, A>&, int64_t, int64_t, A*); \
  template int64_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>&, int64_t, int64_t, A*); \
  template void scale_rows<T, A>(const T*, const A*, T*, int64_t, int64_t, int64_t);      \
  template void scale_elements<T, A>(const T*, const A*, T*, int64_t, int64_t);
#if defined(COSTXENT_CPU_FORWARD_ISA)
// A build that differs only for bfloat16 (AVX512-BF16's conversion): the other types run
// COSTXENT_CPU_FORWARD_ISA's kernels.
COSTXENT_INSTANTIATE(bf16, float)
#define COSTXENT_FORWARD(T, A)                                                              \
  template <>                                                                               \
  int64_t softmax_rows<T, A>(const SoftmaxProblem<T, A>& p, int64_t begin, int64_t end,      \
                             A* scratch) {                                                  \
    return COSTXENT_CPU_FORWARD_ISA::softmax_rows<T, A>(p, begin, end, scratch);             \
  }                                                                                         \
  template <>                                                                               \
  int64_t sigmoid_elements<T, A>(const SigmoidProblem<T, A>& p, int64_t begin, int64_t end,  \
                                 A* scratch) {                                              \
    return COSTXENT_CPU_FORWARD_ISA::sigmoid_elements<T, A>(p, begin, end, scratch);         \
  }                                                                                         \
  template <>                                                                               \
  void scale_rows<T, A>(const T* in, const A* scale, T* out, int64_t c, int64_t begin,       \
                        int64_t end) {                                                      \
    COSTXENT_CPU_FORWARD_ISA::scale_rows<T, A>(in, scale, out, c, begin, end);               \
  }                                                                                         \
  template <>                                                                               \
  void scale_elements<T, A>(const T* in, const A* scale, T* out, int64_t begin, int64_t end) { \
    COSTXENT_CPU_FORWARD_ISA::scale_elements<T, A>(in, scale, out, begin, end);              \
  }
COSTXENT_FORWARD(f16, float)
COSTXENT_FORWARD(float, float)
COSTXENT_FORWARD(double, double)
#undef COSTXENT_FORWARD
#else
COSTXENT_FOR_EACH_TYPE_PAIR(COSTXENT_INSTANTIATE)
#endif
#undef COSTXENT_INSTANTIATE

}  // namespace COSTXENT_CPU_ISA
}  // namespace cpu
}  // namespace costxent
