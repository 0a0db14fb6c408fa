// costxent._core: the core kernels over DLPack arrays, with no TensorFlow. NumPy (or any
// CPU DLPack producer) runs the CPU kernels; CuPy / PyTorch / JAX arrays on a CUDA device
// run the CUDA kernels on the caller's stream. It is what tests and benchmarks use where
// TensorFlow is missing, so it raises instead of crashing: the arguments go through the
// same validation as the TensorFlow ops (cc/core/spec.h), and only what is particular to
// DLPack (devices, strides, writable outputs) is checked here.
//
// Arrays are borrowed for the duration of a call: the DLPack capsule (which keeps the
// producer's memory alive) is held, never consumed, and its own destructor releases it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/cuda_plan.h"
#include "cc/core/huge_pages.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"
#include "cc/core/reduction.h"
#include "cc/core/scale.h"
#include "cc/core/spec.h"

#if COSTXENT_WITH_CUDA
#include "cc/core/cuda.h"
#include "cc/core/cuda_reduce.h"
#endif
#if COSTXENT_WITH_XLA_FFI
#include "cc/xla/targets.h"
#endif

namespace py = pybind11;

namespace costxent {
namespace {

// ---------------------------------------------------------------------------------------
// DLPack ABI (dlpack.h, v1.0), declared here so the build needs no extra header.

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};

constexpr uint8_t kDLInt = 0;
constexpr uint8_t kDLFloat = 2;
constexpr uint8_t kDLBfloat = 4;
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr int32_t kDLCUDAHost = 3;
constexpr int32_t kDLCUDAManaged = 13;
constexpr uint64_t kDLReadOnly = 1;

enum class Place { kCpu, kCuda };

// [2, 3, 5], as the core's messages print shapes.
std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) {
    if (k > 0) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + "]";
}

std::string dtype_string(const DLDataType& d) {
  std::string base;
  switch (d.code) {
    case kDLInt: base = "int"; break;
    case 1: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case 5: base = "complex"; break;
    case 6: return "bool";
    default: base = "dtype" + std::to_string(d.code) + "_";
  }
  std::string s = base + std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

// A borrowed DLPack array, named for error messages.
class Array {
 public:
  Array(const char* name, const py::handle& obj, int64_t stream) : name_(name) {
    if (PyCapsule_CheckExact(obj.ptr())) {
      capsule_ = py::reinterpret_borrow<py::object>(obj);
    } else if (py::hasattr(obj, "__dlpack__")) {
      capsule_ = export_capsule(obj, stream);
    } else {
      throw py::type_error(name_ + " must be an array supporting DLPack (NumPy, CuPy, "
                           "PyTorch, JAX) or a DLPack capsule, got " +
                           Py_TYPE(obj.ptr())->tp_name);
    }
    PyObject* cap = capsule_.ptr();
    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
      auto* m = static_cast<DLManagedTensorVersioned*>(
          PyCapsule_GetPointer(cap, "dltensor_versioned"));
      if (m->version.major != 1)
        throw py::value_error(name_ + ": unsupported DLPack major version " +
                              std::to_string(m->version.major) + " (expected 1)");
      t_ = m->dl_tensor;
      read_only_ = (m->flags & kDLReadOnly) != 0;
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
      t_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"))->dl_tensor;
    } else {
      throw py::type_error(name_ + " is a capsule that is not an unconsumed DLPack tensor");
    }
    switch (t_.device.device_type) {
      case kDLCPU:
      case kDLCUDAHost:
        place_ = Place::kCpu;
        break;
      case kDLCUDA:
      case kDLCUDAManaged:
        place_ = Place::kCuda;
        break;
      default:
        throw py::value_error(name_ + " is on an unsupported device (DLPack device type " +
                              std::to_string(t_.device.device_type) +
                              "); expected the CPU or a CUDA device");
    }
  }

  const std::string& name() const { return name_; }
  Place place() const { return place_; }
  int device_id() const { return place_ == Place::kCpu ? 0 : t_.device.device_id; }
  std::string device_string() const {
    return place_ == Place::kCpu ? "cpu" : "cuda:" + std::to_string(t_.device.device_id);
  }
  const DLDataType& dtype() const { return t_.dtype; }
  std::vector<int64_t> shape() const { return {t_.shape, t_.shape + t_.ndim}; }
  int ndim() const { return t_.ndim; }
  int64_t dim(int k) const { return t_.shape[k]; }
  int64_t size() const {
    int64_t s = 1;
    for (int k = 0; k < t_.ndim; ++k) s *= t_.shape[k];
    return s;
  }
  template <typename U>
  U* data() const {
    return reinterpret_cast<U*>(static_cast<char*>(t_.data) + t_.byte_offset);
  }

  bool is(uint8_t code, uint8_t bits) const {
    return t_.dtype.code == code && t_.dtype.bits == bits && t_.dtype.lanes == 1;
  }

  void require_shape(const std::vector<int64_t>& expected, const std::string& what) const {
    if (shape() != expected)
      throw py::value_error(name_ + " must have shape " + shape_string(expected) +
                            (what.empty() ? "" : " " + what) + ", got shape " +
                            shape_string(shape()));
  }

  void require_dtype(const DLDataType& expected) const {
    if (t_.dtype.code != expected.code || t_.dtype.bits != expected.bits ||
        t_.dtype.lanes != expected.lanes)
      throw py::type_error(name_ + " must have dtype " + dtype_string(expected) +
                           ", got dtype " + dtype_string(t_.dtype));
  }

  // The kernels take row-major arrays; views at any offset are fine, other strides not.
  void require_contiguous() const {
    if (t_.strides == nullptr || size() == 0) return;
    int64_t expected = 1;
    for (int k = t_.ndim - 1; k >= 0; --k) {
      if (t_.shape[k] != 1 && t_.strides[k] != expected) {
        std::vector<int64_t> strides(t_.strides, t_.strides + t_.ndim);
        throw py::value_error(name_ + " must be C-contiguous (element strides " +
                              shape_string(contiguous_strides()) + " for shape " +
                              shape_string(shape()) + "; any offset is fine), got element "
                              "strides " + shape_string(strides) + "; pass a contiguous copy");
      }
      expected *= t_.shape[k];
    }
  }

  void require_writable() const {
    if (read_only_) throw py::value_error(name_ + " is read-only; outputs must be writable");
  }

  void require_same_device(const Array& other) const {
    if (place_ != other.place_ || device_id() != other.device_id())
      throw py::value_error(name_ + " is on " + device_string() + " but " + other.name_ +
                            " is on " + other.device_string() +
                            "; all arrays must be on one device");
  }

 private:
  py::object export_capsule(const py::handle& obj, int64_t stream) {
    // Where the data lives decides the stream argument: a CUDA producer makes `stream`
    // (1 = the legacy default stream, which DLPack spells 1, not 0) wait for its pending
    // work; CPU producers take no stream.
    bool cuda = false;
    if (py::hasattr(obj, "__dlpack_device__")) {
      const py::tuple dev = obj.attr("__dlpack_device__")();
      const int type = dev[0].cast<int>();
      cuda = type == kDLCUDA || type == kDLCUDAManaged;
    }
    py::dict kwargs;
    if (cuda) kwargs["stream"] = stream == 0 ? 1 : stream;
    // DLPack 1.0 capsules carry a read-only flag (NumPy refuses to export read-only arrays
    // without it); producers that predate the keyword get the legacy request.
    py::dict versioned = kwargs;
    versioned["max_version"] = py::make_tuple(1, 0);
    try {
      return obj.attr("__dlpack__")(**versioned);
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;
    }
    return obj.attr("__dlpack__")(**kwargs);
  }

  std::vector<int64_t> contiguous_strides() const {
    std::vector<int64_t> s(t_.ndim, 1);
    for (int k = t_.ndim - 2; k >= 0; --k) s[k] = s[k + 1] * t_.shape[k + 1];
    return s;
  }

  std::string name_;
  py::object capsule_;
  DLTensor t_{};
  bool read_only_ = false;
  Place place_ = Place::kCpu;
};

// An optional argument: None, or a borrowed array.
std::unique_ptr<Array> maybe_array(const char* name, const py::object& obj, int64_t stream) {
  if (obj.is_none()) return nullptr;
  return std::make_unique<Array>(name, obj, stream);
}

// ---------------------------------------------------------------------------------------
// The core spec: arrays described, the one validation run, its verdict raised.

DType core_dtype(const DLDataType& d) {
  if (d.lanes != 1) return DType::kOther;
  if (d.code == kDLFloat && d.bits == 16) return DType::kFloat16;
  if (d.code == kDLBfloat && d.bits == 16) return DType::kBFloat16;
  if (d.code == kDLFloat && d.bits == 32) return DType::kFloat32;
  if (d.code == kDLFloat && d.bits == 64) return DType::kFloat64;
  if (d.code == kDLInt && d.bits == 32) return DType::kInt32;
  if (d.code == kDLInt && d.bits == 64) return DType::kInt64;
  return DType::kOther;
}

ArgInfo arg_info(const Array* a) {
  ArgInfo info;
  if (a == nullptr) return info;
  info.present = true;
  info.dtype = core_dtype(a->dtype());
  info.shape = a->shape();
  return info;
}

void raise_if_error(const Status& s) {
  if (s.kind == ErrorKind::kType) throw py::type_error(s.message);
  if (s.kind == ErrorKind::kValue) throw py::value_error(s.message);
}

// The module's one mapping from option strings to the core's enums.
template <typename E>
E parse_choice(const char* name, const std::string& value,
               std::initializer_list<std::pair<const char*, E>> choices) {
  std::string names;
  for (const auto& choice : choices) {
    if (value == choice.first) return choice.second;
    names += std::string(names.empty() ? "'" : ", '") + choice.first + "'";
  }
  throw py::value_error(std::string(name) + " must be one of " + names + ", got '" + value + "'");
}

SoftmaxLoss parse_loss_kind(const std::string& value) {
  return parse_choice<SoftmaxLoss>("loss_kind", value,
                                   {{"cross_entropy", SoftmaxLoss::kCrossEntropy},
                                    {"expected_cost", SoftmaxLoss::kExpectedCost}});
}

Reduction parse_reduction(const std::string& value) {
  return parse_choice<Reduction>("reduction", value,
                                 {{"none", Reduction::kNone},
                                  {"sum", Reduction::kSum},
                                  {"sum_over_batch_size", Reduction::kSumOverBatchSize},
                                  {"mean_with_sample_weight", Reduction::kMeanWithSampleWeight}});
}

// Inputs the kernels read: on the logits' device and row-major (views at any offset are fine).
void require_input(const Array* a, const Array& logits) {
  if (a == nullptr) return;
  a->require_same_device(logits);
  a->require_contiguous();
}

void require_finite_scale(double scale) {
  if (!std::isfinite(scale))
    throw py::value_error("scale must be a finite number, got " + std::to_string(scale));
}

// ---------------------------------------------------------------------------------------
// Storage types.

template <typename T>
struct Tag {
  using type = T;
};

template <typename T>
DLDataType dl_type() {
  if (std::is_same<T, f16>::value) return {kDLFloat, 16, 1};
  if (std::is_same<T, bf16>::value) return {kDLBfloat, 16, 1};
  if (std::is_same<T, float>::value) return {kDLFloat, 32, 1};
  return {kDLFloat, 64, 1};
}

// f(Tag<T>{}) for the logits' storage type T.
template <typename F>
auto with_float_type(const Array& a, F f) {
  if (a.is(kDLFloat, 16)) return f(Tag<f16>{});
  if (a.is(kDLBfloat, 16)) return f(Tag<bf16>{});
  if (a.is(kDLFloat, 32)) return f(Tag<float>{});
  if (a.is(kDLFloat, 64)) return f(Tag<double>{});
  throw py::type_error(a.name() + " must be float16, bfloat16, float32 or float64, got dtype " +
                       dtype_string(a.dtype()));
}

// A new NumPy array for an omitted CPU output (NumPy has no bfloat16).
template <typename U>
py::object new_numpy(const std::vector<int64_t>& shape, const char* name) {
  const char* dtype = std::is_same<U, f16>::value      ? "float16"
                      : std::is_same<U, float>::value  ? "float32"
                      : std::is_same<U, double>::value ? "float64"
                                                       : nullptr;
  if (dtype == nullptr)
    throw py::type_error(std::string("pass ") + name +
                         "= for bfloat16 logits on the CPU (NumPy has no bfloat16 to "
                         "create it)");
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array(py::dtype(dtype), dims);
}

// The caller's output, checked, or (CPU only) a new one.
template <typename U>
py::object output(const char* name, const py::object& given, const std::vector<int64_t>& shape,
                  const Array& logits, int64_t stream, std::unique_ptr<Array>* borrowed) {
  py::object obj = given;
  if (obj.is_none()) {
    if (logits.place() == Place::kCuda)
      throw py::value_error(std::string(name) + " is required for arrays on a CUDA device: pass "
                            "a preallocated " + dtype_string(dl_type<U>()) + " array of shape " +
                            shape_string(shape) + " on " + logits.device_string());
    obj = new_numpy<U>(shape, name);
  }
  auto a = std::make_unique<Array>(name, obj, stream);
  a->require_same_device(logits);
  a->require_dtype(dl_type<U>());
  a->require_shape(shape, "");
  a->require_contiguous();
  a->require_writable();
  *borrowed = std::move(a);
  return obj;
}

// ---------------------------------------------------------------------------------------
// Running a problem.

// Units [0, total) split over a few threads at multiples of `grain` units (whole reduction
// blocks when the problem writes block sums); fn(begin, end) returns -1 or the first bad
// index of its range, and the first bad index overall is returned. Each unit's result
// depends on that unit only, so the split does not change any bit.
template <typename F>
int64_t run_cpu(int64_t total, double cycles_per_unit, int64_t grain, F fn) {
  const int64_t chunks = (total + grain - 1) / grain;
  const double cycles = cycles_per_unit * static_cast<double>(total);
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min<int64_t>(
      {static_cast<int64_t>(std::min(hw, 8u)), std::max<int64_t>(1, chunks),
       std::max<int64_t>(1, static_cast<int64_t>(cycles / 2e6))});
  const auto bound = [&](int64_t t) { return std::min(total, chunks * t / threads * grain); };
  std::vector<int64_t> bad(threads, -1);
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { bad[t] = fn(bound(t), bound(t + 1)); });
  bad[0] = fn(0, bound(1));
  for (auto& th : pool) th.join();
  for (int64_t b : bad)
    if (b >= 0) return b;
  return -1;
}

// out = in * *scale over count elements, as one problem like the others.
template <typename T, typename A>
struct ScaleProblem {
  const T* in;
  const A* scale;
  T* out;
  int64_t count;
};

#if COSTXENT_WITH_CUDA
template <typename T, typename A>
cudaError_t launch(const SoftmaxProblem<T, A>& p, cudaStream_t stream) {
  return cuda::softmax_rows(p, stream);
}
template <typename T, typename A>
cudaError_t launch(const SigmoidProblem<T, A>& p, cudaStream_t stream) {
  return cuda::sigmoid_elements(p, stream);
}
template <typename T, typename A>
cudaError_t launch(const ScaleProblem<T, A>& p, cudaStream_t stream) {
  return cuda::scale_by_device_scalar(p.in, p.scale, p.out, p.count, stream);
}

// Makes the arrays' device current for a launch and restores the caller's.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  static void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
      throw std::runtime_error(std::string("costxent: ") + what + " failed: " +
                               cudaGetErrorString(status));
  }

 private:
  int previous_ = 0;
};
#endif

[[noreturn]] void no_cuda(const Array& logits, const char* what) {
  throw py::value_error(logits.name() + " is on " + logits.device_string() + " but " +
                        std::string(what) +
                        ": costxent._core was built without CUDA kernels (no nvcc at build "
                        "time)");
}

// Enqueues the problem on `stream` of the arrays' CUDA device.
template <typename Problem>
void run_cuda(const Array& logits, const char* what, const Problem& p, int64_t stream) {
#if COSTXENT_WITH_CUDA
  DeviceScope scope(logits.device_id());
  cudaError_t status;
  {
    py::gil_scoped_release release;
    status = launch(p, reinterpret_cast<cudaStream_t>(stream));
  }
  DeviceScope::check(status, what);
#else
  (void)p;
  (void)stream;
  no_cuda(logits, what);
#endif
}

#if COSTXENT_WITH_CUDA
// Doubles in the memory of a CUDA device, from its stream-ordered pool, for a reduced call's
// divisor and block sums; freed on the stream once its work is done.
class DeviceDoubles {
 public:
  DeviceDoubles(int device, int64_t count, int64_t stream)
      : scope_(device), stream_(reinterpret_cast<cudaStream_t>(stream)) {
    const size_t bytes = sizeof(double) * static_cast<size_t>(std::max<int64_t>(count, 1));
    DeviceScope::check(cudaMallocAsync(reinterpret_cast<void**>(&data_), bytes, stream_),
                       "cudaMallocAsync");
  }
  DeviceDoubles(const DeviceDoubles&) = delete;
  DeviceDoubles& operator=(const DeviceDoubles&) = delete;
  ~DeviceDoubles() { cudaFreeAsync(data_, stream_); }

  double* data() const { return data_; }

  // Waits for the stream's work so far, then copies the first count values to the host.
  void copy_to(double* host, int64_t count) const {
    if (count == 0) return;
    cudaError_t status;
    {
      py::gil_scoped_release release;
      status = cudaMemcpyAsync(host, data_, sizeof(double) * static_cast<size_t>(count),
                               cudaMemcpyDeviceToHost, stream_);
      if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
    }
    DeviceScope::check(status, "copying a reduction to the host");
  }

 private:
  DeviceScope scope_;
  cudaStream_t stream_;
  double* data_ = nullptr;
};
#endif

// The block sums of a reduced call over n rows, written on the logits' device; total() adds
// them on the host in block order, so the scalar never depends on how rows were split.
class BlockSums {
 public:
  BlockSums(const Array& logits, int64_t n, int64_t stream)
      : host_(block_count(n), 0.0) {
    if (logits.place() != Place::kCuda) return;
#if COSTXENT_WITH_CUDA
    device_ = std::make_unique<DeviceDoubles>(logits.device_id(), size(), stream);
#else
    (void)stream;
    no_cuda(logits, "a reduced call");
#endif
  }

  double* data() {
#if COSTXENT_WITH_CUDA
    if (device_ != nullptr) return device_->data();
#endif
    return host_.data();
  }

  double total() {
#if COSTXENT_WITH_CUDA
    if (device_ != nullptr) device_->copy_to(host_.data(), size());
#endif
    return sum_in_order(host_.data(), size());
  }

 private:
  int64_t size() const { return static_cast<int64_t>(host_.size()); }

  std::vector<double> host_;
#if COSTXENT_WITH_CUDA
  std::unique_ptr<DeviceDoubles> device_;
#endif
};

// The outputs of a loss call, wired into its problem; the Arrays keep the buffers borrowed
// during the run. A per-example call writes loss (shape loss_shape); a reduced one writes
// block sums instead and returns their sum.
struct LossOutputs {
  std::unique_ptr<Array> loss;
  std::unique_ptr<Array> backprop;
  py::object loss_out = py::none();
  py::object backprop_out = py::none();
  std::unique_ptr<BlockSums> block_sums;

  py::tuple result() {
    if (block_sums == nullptr) return py::make_tuple(loss_out, backprop_out);
    return py::make_tuple(block_sums->total(), backprop_out);
  }
};

template <typename T, typename A, typename Problem>
LossOutputs loss_outputs(Problem& p, bool reduced, const std::vector<int64_t>& loss_shape,
                         const std::vector<int64_t>& shape, const py::object& loss_obj,
                         const py::object& backprop_obj, bool compute_backprop,
                         const Array& logits, int64_t stream) {
  LossOutputs o;
  if (reduced) {
    if (!loss_obj.is_none())
      throw py::value_error("loss= is the per-example output; a reduced call (reduction= other "
                            "than 'none') returns its scalar loss instead");
    o.block_sums = std::make_unique<BlockSums>(logits, p.n, stream);
    p.block_sums = o.block_sums->data();
  } else {
    o.loss_out = output<A>("loss", loss_obj, loss_shape, logits, stream, &o.loss);
    p.loss = o.loss->data<A>();
  }
  if (compute_backprop) {
    o.backprop_out = output<T>("backprop", backprop_obj, shape, logits, stream, &o.backprop);
    p.backprop = o.backprop->data<T>();
  } else if (!backprop_obj.is_none()) {
    throw py::value_error("backprop was given but compute_backprop is False");
  }
  return o;
}

// Runs a loss problem on the logits' device. On the CPU, cpu_fn(begin, end) covers
// [0, total) in pieces of whole `grain`s and the first invalid index is returned; -1 when
// there is none (or on CUDA, where invalid labels give NaN rows instead).
template <typename Problem, typename F>
int64_t run_loss(const Array& logits, const char* what, const Problem& p, int64_t stream,
                 int64_t total, double cycles_per_unit, int64_t grain, F cpu_fn) {
  if (logits.place() == Place::kCuda) {
    run_cuda(logits, what, p, stream);
    return -1;
  }
  advise_output_pages(p);  // a fresh torch / NumPy output
  py::gil_scoped_release release;
  return run_cpu(total, cycles_per_unit, grain, cpu_fn);
}

// The divisor of a reduction (cc/core/reduction.h), read where the labels and weights live:
// on the CPU block by block in order (the TF op's bits), on CUDA on the device, which this
// call then waits for.
template <typename A>
double keras_divisor(const Array& logits, const DivisorInput<A>& d, int64_t stream) {
  if (!d.needs_data()) return d.without_data();
  if (logits.place() == Place::kCuda) {
#if COSTXENT_WITH_CUDA
    const DeviceDoubles sum(logits.device_id(), 1, stream);
    DeviceScope::check(cuda::kept_weight_sum(d.n, d.weights_read(), d.labels32, d.labels64,
                                             d.has_ignore_class, d.ignore_class, sum.data(),
                                             reinterpret_cast<cudaStream_t>(stream)),
                       "the divisor of a reduction");
    double divisor = 0;
    sum.copy_to(&divisor, 1);
    return divisor;
#else
    (void)stream;
    no_cuda(logits, "a reduced call");
#endif
  }
  return blocked_divisor(d, [&](const auto& fn) { fn(0, d.n); });
}

// ---------------------------------------------------------------------------------------
// softmax_loss

// Values per row of the state a per-example forward on the logits' device saves (the CUDA
// kernels save none: their backward recomputes).
int64_t softmax_row_state_size(const Array& logits, const SoftmaxSpec& spec) {
  if (logits.place() == Place::kCuda) return 0;
  return cpu::softmax_row_state_size(spec.c, spec.focal_gamma != 0);
}

py::tuple softmax_loss(const py::object& logits_obj, const py::object& labels_obj,
                       const py::object& weights_obj, const std::string& loss_kind,
                       double label_smoothing, double focal_gamma, double ce_weight,
                       const py::object& ignore_class, const py::object& row_scale_obj,
                       double scale, const std::string& reduction, const py::object& loss_obj,
                       const py::object& backprop_obj, bool compute_backprop,
                       const py::object& save_state_obj, const py::object& saved_state_obj,
                       int64_t stream) {
  const Array logits("logits", logits_obj, stream);
  const Array labels("labels", labels_obj, stream);
  const auto weights = maybe_array("weights", weights_obj, stream);
  const auto row_scale = maybe_array("row_scale", row_scale_obj, stream);
  const auto saved_state = maybe_array("saved_state", saved_state_obj, stream);

  SoftmaxSpec spec;
  spec.loss_kind = parse_loss_kind(loss_kind);
  spec.reduction = parse_reduction(reduction);
  spec.logits = arg_info(&logits);
  spec.labels = arg_info(&labels);
  spec.weights = arg_info(weights.get());
  spec.row_scale = arg_info(row_scale.get());
  spec.row_state = arg_info(saved_state.get());
  spec.label_smoothing = label_smoothing;
  spec.focal_gamma = focal_gamma;
  spec.ce_weight = ce_weight;
  if (!ignore_class.is_none()) {
    if (!py::isinstance<py::int_>(ignore_class) || py::isinstance<py::bool_>(ignore_class))
      throw py::type_error("ignore_class must be an int or None, got " +
                           std::string(Py_TYPE(ignore_class.ptr())->tp_name));
    spec.has_ignore_class = true;
    spec.ignore_class = ignore_class.cast<int64_t>();
  }
  raise_if_error(validate_softmax(&spec));
  require_finite_scale(scale);
  const bool reduced = spec.reduction != Reduction::kNone;
  if (saved_state != nullptr && !compute_backprop)
    throw py::value_error("saved_state is read by a backward: compute_backprop must be True");
  if (saved_state != nullptr && !loss_obj.is_none())
    throw py::value_error("a call given saved_state computes no loss (the forward wrote it): "
                          "loss= must be None");
  if (!save_state_obj.is_none() && (compute_backprop || reduced))
    throw py::value_error("save_state is written by a per-example forward: compute_backprop "
                          "must be False and reduction 'none'");
  logits.require_contiguous();
  for (const Array* a : std::initializer_list<const Array*>{&labels, weights.get(),
                                                            row_scale.get(), saved_state.get()})
    require_input(a, logits);

  return with_float_type(logits, [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    SoftmaxProblem<T, A> p;
    p.n = spec.n;
    p.c = spec.c;
    p.logits = logits.data<T>();
    if (!spec.sparse) {
      p.dense = labels.data<T>();
    } else if (spec.labels.dtype == DType::kInt32) {
      p.labels32 = labels.data<int32_t>();
    } else {
      p.labels64 = labels.data<int64_t>();
    }
    p.loss_kind = spec.loss_kind;
    p.weight_mode = spec.weight_mode;
    if (spec.weight_mode != WeightMode::kNone) {
      p.weights = weights->data<A>();
      if (weights->place() == Place::kCpu)  // device memory: the Python layer checks
        raise_if_error(validate_softmax_weights(spec, p.weights, weights->size()));
    }
    p.label_smoothing = static_cast<A>(spec.label_smoothing);
    p.focal_gamma = static_cast<A>(spec.focal_gamma);
    p.ce_weight = static_cast<A>(spec.ce_weight);
    p.has_ignore_class = spec.has_ignore_class;
    p.ignore_class = spec.ignore_class;
    if (row_scale != nullptr) p.row_scale = row_scale->data<A>();
    p.scale = static_cast<A>(
        reduced ? reduced_scale(scale,
                                keras_divisor(logits, divisor_input(p, spec.reduction), stream), 1.0)
                : scale);

    const std::vector<int64_t>& shape = spec.logits.shape;
    LossOutputs out = loss_outputs<T, A>(
        p, reduced, std::vector<int64_t>(shape.begin(), shape.end() - 1), shape, loss_obj,
        backprop_obj, compute_backprop, logits, stream);
    const int64_t state_size = softmax_row_state_size(logits, spec);
    std::unique_ptr<Array> save_state;
    if (!save_state_obj.is_none()) {
      output<A>("save_state", save_state_obj, {p.n, state_size}, logits, stream, &save_state);
      if (state_size > 0) p.row_state_out = save_state->data<A>();
    }
    if (saved_state != nullptr) {
      p.loss = nullptr;
      out.loss_out = py::none();
      if (spec.row_state.shape.back() > 0) p.row_state_in = saved_state->data<A>();
    }
    const int64_t bad = run_loss(
        logits, "softmax_loss", p, stream, p.n,
        cpu::softmax_row_cycles(p.c, !spec.sparse, spec.focal_gamma != 0),
        reduced ? kReduceBlockRows : 1,
        [&](int64_t begin, int64_t end) { return cpu::softmax_rows(p, begin, end); });
    if (bad >= 0) throw py::value_error(invalid_label_message(spec, bad, label_at(p, bad)));
    return out.result();
  });
}

// ---------------------------------------------------------------------------------------
// sigmoid_loss

// pos_weight / neg_weight: None (1), a Python number (CPU only), or an array of shape (),
// [1] or [C]. A number or a 0-d array is described to the spec as its one value, [1].
struct ClassWeight {
  const char* name;
  std::unique_ptr<Array> array;
  bool is_number = false;
  double number = 1;
  ArgInfo info;

  ClassWeight(const char* name, const py::object& obj, const Array& logits, int64_t stream)
      : name(name) {
    if (obj.is_none()) return;
    if (py::isinstance<py::float_>(obj) || py::isinstance<py::int_>(obj)) {
      if (logits.place() == Place::kCuda)
        throw py::type_error(std::string(name) + " must be an array on " +
                             logits.device_string() +
                             " for logits on a CUDA device, got a Python number");
      is_number = true;
      number = obj.cast<double>();
      info.present = true;
      info.dtype = core_dtype(logits.dtype()) == DType::kFloat64 ? DType::kFloat64
                                                                 : DType::kFloat32;
      info.shape = {1};
      return;
    }
    array = std::make_unique<Array>(name, obj, stream);
    info = arg_info(array.get());
    if (info.shape.empty()) info.shape = {1};
  }

  // The values as the kernels read them, checked where they live in host memory.
  template <typename A>
  const A* values(A* scalar) const {
    if (!info.present) return nullptr;
    const A* v = scalar;
    if (is_number) {
      *scalar = static_cast<A>(number);
    } else {
      v = array->data<A>();
      if (array->place() != Place::kCpu) return v;  // device memory: the Python layer checks
    }
    raise_if_error(validate_sigmoid_weight(name, v, size()));
    return v;
  }
  int64_t size() const { return is_number ? 1 : array == nullptr ? 0 : array->size(); }
};

py::tuple sigmoid_loss(const py::object& logits_obj, const py::object& labels_obj,
                       const py::object& pos_weight_obj, const py::object& neg_weight_obj,
                       double label_smoothing, double focal_gamma,
                       const py::object& element_scale_obj, const py::object& row_scale_obj,
                       double scale, const std::string& reduction, const py::object& loss_obj,
                       const py::object& backprop_obj, bool compute_backprop, int64_t stream) {
  const Array logits("logits", logits_obj, stream);
  const Array labels("labels", labels_obj, stream);
  const ClassWeight pos("pos_weight", pos_weight_obj, logits, stream);
  const ClassWeight neg("neg_weight", neg_weight_obj, logits, stream);
  const auto element_scale = maybe_array("element_scale", element_scale_obj, stream);
  const auto row_scale = maybe_array("row_scale", row_scale_obj, stream);

  SigmoidSpec spec;
  spec.reduction = parse_reduction(reduction);
  spec.logits = arg_info(&logits);
  spec.labels = arg_info(&labels);
  spec.pos_weight = pos.info;
  spec.neg_weight = neg.info;
  spec.element_scale = arg_info(element_scale.get());
  spec.row_scale = arg_info(row_scale.get());
  spec.label_smoothing = label_smoothing;
  spec.focal_gamma = focal_gamma;
  raise_if_error(validate_sigmoid(&spec));
  require_finite_scale(scale);
  const bool reduced = spec.reduction != Reduction::kNone;
  logits.require_contiguous();
  for (const Array* a : std::initializer_list<const Array*>{
           &labels, pos.array.get(), neg.array.get(), element_scale.get(), row_scale.get()})
    require_input(a, logits);

  return with_float_type(logits, [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    A pos_number = 1, neg_number = 1;
    SigmoidProblem<T, A> p;
    p.n = spec.n;
    p.c = spec.c;
    p.logits = logits.data<T>();
    p.labels = labels.data<T>();
    p.pos_weight = pos.values(&pos_number);
    p.pos_weight_size = pos.size();
    p.neg_weight = neg.values(&neg_number);
    p.neg_weight_size = neg.size();
    p.label_smoothing = static_cast<A>(spec.label_smoothing);
    p.focal_gamma = static_cast<A>(spec.focal_gamma);
    if (element_scale != nullptr) p.element_scale = element_scale->data<A>();
    if (row_scale != nullptr) p.row_scale = row_scale->data<A>();
    // A reduced call follows keras.losses.BinaryCrossentropy: the per-example loss is the
    // mean over the last axis, so the divisor carries a factor C.
    p.scale = static_cast<A>(
        reduced ? reduced_scale(scale,
                                keras_divisor(logits, divisor_input(p, spec.reduction), stream),
                                static_cast<double>(p.c))
                : scale);

    LossOutputs out =
        loss_outputs<T, A>(p, reduced, spec.logits.shape, spec.logits.shape, loss_obj,
                           backprop_obj, compute_backprop, logits, stream);
    const int64_t bad = run_loss(
        logits, "sigmoid_loss", p, stream, p.n * p.c,
        cpu::sigmoid_element_cycles(p.focal_gamma != 0), reduced ? kReduceBlockRows * p.c : 1,
        [&](int64_t begin, int64_t end) { return cpu::sigmoid_elements(p, begin, end); });
    if (bad >= 0)
      throw py::value_error(
          invalid_sigmoid_label_message(spec, bad, static_cast<double>(to_acc(p.labels[bad]))));
    return out.result();
  });
}

// ---------------------------------------------------------------------------------------
// scale_gradient: out = grad * scale, scale a scalar on grad's device (the upstream gradient
// of a reduced loss); nothing is written when out is grad and scale is 1.

py::object scale_gradient(const py::object& grad_obj, const py::object& scale_obj,
                          const py::object& out_obj, int64_t stream) {
  const Array grad("grad", grad_obj, stream);
  grad.require_contiguous();
  const Array scale("scale", scale_obj, stream);
  scale.require_same_device(grad);
  if (scale.size() != 1 || scale.ndim() > 1)
    throw py::value_error("scale must be a scalar (shape [] or [1]), got shape " +
                          shape_string(scale.shape()));
  return with_float_type(grad, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    scale.require_dtype(dl_type<A>());
    std::unique_ptr<Array> out;
    py::object result = output<T>("out", out_obj, grad.shape(), grad, stream, &out);
    const ScaleProblem<T, A> p{grad.data<T>(), scale.data<A>(), out->data<T>(), grad.size()};
    if (grad.place() == Place::kCuda) {
      run_cuda(grad, "scale_gradient", p, stream);
    } else if (!(p.in == p.out && *p.scale == A(1))) {
      py::gil_scoped_release release;
      run_cpu(p.count, 1.0, 1, [&](int64_t begin, int64_t end) {
        scale_span(p.in, *p.scale, p.out, begin, end);
        return int64_t{-1};
      });
    }
    return result;
  });
}

bool has_cuda() {
#if COSTXENT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The CUDA planner's answer for one row shape; pure host code, so it needs no GPU.
py::dict launch_plan(const py::object& dtype, int64_t classes, int max_cluster) {
  const std::string name = py::isinstance<py::str>(dtype)
                               ? dtype.cast<std::string>()
                               : py::module_::import("numpy").attr("dtype")(dtype).attr("name")
                                     .cast<std::string>();
  int bytes = 0;
  if (name == "float16" || name == "bfloat16") bytes = 2;
  if (name == "float32") bytes = 4;
  if (name == "float64") bytes = 8;
  if (bytes == 0)
    throw py::type_error("dtype must be float16, bfloat16, float32 or float64, got " + name);
  if (classes < 1 || classes > cuda::kMaxClasses)
    throw py::value_error("classes must be in [1, " + std::to_string(cuda::kMaxClasses) +
                          "], got " + std::to_string(classes));
  if (max_cluster < 1 || max_cluster > cuda::kMaxCluster)
    throw py::value_error("max_cluster must be in [1, " + std::to_string(cuda::kMaxCluster) +
                          "], got " + std::to_string(max_cluster));
  const cuda::SoftmaxPlan plan = cuda::plan_softmax(
      bytes, classes, [&](const cuda::SoftmaxPlan& p) { return p.clusters <= max_cluster; });
  py::dict out;
  out["regime"] = cuda::regime_name(plan.regime);
  out["threads"] = plan.threads;
  out["width"] = plan.width;
  out["clusters"] = plan.clusters;
  out["slots"] = plan.slots;
  out["vectors"] = plan.vectors;
  return out;
}

#if COSTXENT_WITH_XLA_FFI
// {platform: {target name: capsule of its handler}}, as jax.ffi.register_ffi_target takes
// them: "cpu" always, "CUDA" in CUDA builds.
py::dict xla_ffi_targets() {
  auto by_target = [](const xla_ffi::Handlers& handlers) {
    py::dict targets;
    for (const char* name : xla_ffi::kSoftmaxTargets)
      targets[name] = py::capsule(reinterpret_cast<void*>(handlers.softmax));
    for (const char* name : xla_ffi::kSigmoidTargets)
      targets[name] = py::capsule(reinterpret_cast<void*>(handlers.sigmoid));
    return targets;
  };
  py::dict platforms;
  platforms["cpu"] = by_target(xla_ffi::host_handlers());
#if COSTXENT_WITH_CUDA
  platforms["CUDA"] = by_target(xla_ffi::cuda_handlers());
#endif
  return platforms;
}
#endif

}  // namespace
}  // namespace costxent

PYBIND11_MODULE(_core, m) {
  using namespace costxent;
  m.doc() =
      "costxent's fused loss + gradient kernels over DLPack arrays (NumPy on the CPU; CuPy, "
      "PyTorch or JAX on a CUDA device), without TensorFlow. Arguments are checked by the "
      "same validation as the TensorFlow ops (cc/core/spec.h): a wrong dtype raises "
      "TypeError, anything else ValueError. Per-example outputs are written into the arrays "
      "passed as loss= / backprop= (required on a CUDA device; new NumPy arrays on the CPU "
      "when omitted). stream is a cudaStream_t as an int (0: the legacy default stream).";
  m.def("softmax_loss", &softmax_loss, py::arg("logits"), py::arg("labels"),
        py::arg("weights") = py::none(), py::kw_only(), py::arg("loss_kind") = "cross_entropy",
        py::arg("label_smoothing") = 0.0, py::arg("focal_gamma") = 0.0,
        py::arg("ce_weight") = 0.0, py::arg("ignore_class") = py::none(),
        py::arg("row_scale") = py::none(), py::arg("scale") = 1.0,
        py::arg("reduction") = "none", py::arg("loss") = py::none(),
        py::arg("backprop") = py::none(), py::arg("compute_backprop") = true,
        py::arg("save_state") = py::none(), py::arg("saved_state") = py::none(),
        py::arg("stream") = 0,
        "Softmax cross-entropy (weighted, focal, smoothed; loss_kind='cross_entropy') or "
        "expected cost (loss_kind='expected_cost') over logits [..., C].\n\n"
        "labels: int32/int64 class ids of shape logits.shape[:-1] (or [..., 1]), or dense rows "
        "of the logits' shape and dtype. weights (float32; float64 for float64 logits): None, "
        "class weights [C] or a cost matrix [C, C] indexed M[true, predicted], told apart by "
        "rank; expected_cost requires the matrix.\n\n"
        "reduction='none' returns (loss of shape logits.shape[:-1], backprop of the logits' "
        "shape or None) with backprop row i = "
        "row_scale[i] * scale * d loss_i / d logits_i (row_scale: an upstream gradient of the "
        "leading shape; None: 1). Any other reduction ('sum', 'sum_over_batch_size', "
        "'mean_with_sample_weight', as Keras) takes row_scale as sample_weight, masks rows "
        "labelled ignore_class, divides by its divisor (0 gives 0) and returns (loss: float, "
        "the reduced loss times scale, backprop of it or None). On a CUDA device a reduced "
        "call waits for its divisor and its block sums.\n\n"
        "A per-example forward (compute_backprop=False) given save_state, an array of shape "
        "[rows, softmax_row_state_size(...)], fills it with each row's state (max, 1 / exp sum, "
        "example weight or expected cost, target sum); its backward, given it as saved_state, "
        "reads the logits once in one pass and returns (None, backprop).");
  m.def("sigmoid_loss", &sigmoid_loss, py::arg("logits"), py::arg("labels"),
        py::arg("pos_weight") = py::none(), py::arg("neg_weight") = py::none(), py::kw_only(),
        py::arg("label_smoothing") = 0.0, py::arg("focal_gamma") = 0.0,
        py::arg("element_scale") = py::none(), py::arg("row_scale") = py::none(),
        py::arg("scale") = 1.0, py::arg("reduction") = "none", py::arg("loss") = py::none(),
        py::arg("backprop") = py::none(), py::arg("compute_backprop") = true,
        py::arg("stream") = 0,
        "Element-wise weighted focal sigmoid cross-entropy over logits [..., C]; labels of the "
        "logits' shape and dtype; pos_weight / neg_weight None, a number or [C].\n\n"
        "backprop[i, j] = element_scale[i, j] * row_scale[i] * scale * d loss_ij / d logits_ij "
        "(element_scale: an upstream gradient of the logits' shape; row_scale: sample weights "
        "of the leading shape; None: 1). reduction='none' returns (loss [..., C], backprop or "
        "None); any other reduction follows keras.losses.BinaryCrossentropy (the per-example "
        "loss is the mean over the last axis, row_scale is sample_weight) and returns "
        "(loss: float, the reduced loss times scale, backprop of it or None).");
  m.def("scale_gradient", &scale_gradient, py::arg("grad"), py::arg("scale"),
        py::arg("out") = py::none(), py::kw_only(), py::arg("stream") = 0,
        "out = grad * scale: the backward of a reduced loss, scale its upstream gradient (a "
        "scalar array of shape [] or [1] in the accumulation dtype, on grad's device). out may "
        "be grad; then nothing is written when scale is 1 (decided on the device, without a "
        "sync). Per-example upstream gradients go into the loss call as row_scale / "
        "element_scale instead.");
  m.def(
      "softmax_row_state_size",
      [](int64_t classes, double focal_gamma) {
        return cpu::softmax_row_state_size(classes, focal_gamma != 0);
      },
      py::arg("classes"), py::arg("focal_gamma") = 0.0,
      "Values per row of the state a CPU per-example softmax forward saves for its backward: "
      "4 for rows of more than 32 classes that are not focal, else 0 (the backward "
      "recomputes). The CUDA kernels save none.");
  m.def("launch_plan", &launch_plan, py::arg("dtype"), py::arg("classes"),
        py::arg("max_cluster") = static_cast<int>(cuda::kMaxCluster),
        "How the CUDA softmax kernels hold rows of `classes` classes of `dtype` (a name or "
        "anything numpy.dtype takes): a dict of regime ('thread', 'warp', 'block', "
        "'cluster' or 'chunked'), threads per block, width (threads per row inside a warp; 0 "
        "for block-wide rows), clusters (blocks per row), slots (16-byte vectors per thread) "
        "and vectors (the most a row touches). max_cluster is the largest cluster the device "
        "runs (16 on H100/H200, 1 without clusters); a launch uses the same planner. Needs "
        "no GPU.");
  m.def("has_cuda", &has_cuda, "Whether this build has the CUDA kernels.");
#if COSTXENT_WITH_XLA_FFI
  m.def("xla_ffi_targets", &xla_ffi_targets,
        "The typed XLA FFI handlers of the fused ops, the ones TensorFlow's XLA runs, for "
        "jax.ffi: {platform: {target name: PyCapsule}}, platform 'cpu' and (CUDA builds) "
        "'CUDA'. Absent when the build had no XLA FFI headers.");
  m.def("xla_ffi_api_version",
        [] { return py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR); },
        "(major, minor) of the XLA FFI API the handlers were compiled against: an XLA whose "
        "major differs, or whose minor is lower, refuses them.");
#endif
  m.def("cpu_instruction_set", &cpu::instruction_set,
        "The CPU kernels' instruction set chosen at load time.");
}
