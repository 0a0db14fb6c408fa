// costxent._core: the core kernels over DLPack arrays, with no TensorFlow. NumPy (or any
// CPU DLPack producer) runs the CPU kernels; CuPy / PyTorch / JAX arrays on a CUDA device
// run the CUDA kernels on the caller's stream. It is what tests and benchmarks use where
// TensorFlow is missing, so it validates everything and raises instead of crashing.
//
// Arrays are borrowed for the duration of a call: the DLPack capsule (which keeps the
// producer's memory alive) is held, never consumed, and its own destructor releases it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cc/core/cpu.h"
#include "cc/core/numeric.h"
#include "cc/core/problem.h"

#if COSTXENT_WITH_CUDA
#include "cc/core/cuda.h"
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

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t k = 0; k < shape.size(); ++k) {
    s += std::to_string(shape[k]);
    if (shape.size() == 1 || k + 1 < shape.size()) s += k + 1 < shape.size() ? ", " : ",";
  }
  return s + ")";
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
      throw py::value_error(name_ + " must have shape " + shape_string(expected) + " " + what +
                            ", got " + shape_string(shape()));
  }

  void require_dtype(const DLDataType& expected) const {
    if (t_.dtype.code != expected.code || t_.dtype.bits != expected.bits ||
        t_.dtype.lanes != expected.lanes)
      throw py::type_error(name_ + " must have dtype " + dtype_string(expected) + ", got " +
                           dtype_string(t_.dtype));
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
  throw py::type_error(a.name() + " must be float16, bfloat16, float32 or float64, got " +
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

template <typename A>
void require_finite(const Array& a) {
  if (a.place() != Place::kCpu) return;  // device memory: the Python layer checks
  const A* v = a.data<A>();
  for (int64_t k = 0; k < a.size(); ++k)
    if (!std::isfinite(v[k]))
      throw py::value_error(a.name() + " must be finite, got " + std::to_string(v[k]) +
                            " at flat index " + std::to_string(k));
}

void require_option(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

// ---------------------------------------------------------------------------------------
// Running a problem.

// Rows [0, n) split over a few threads; fn(begin, end) returns -1 or the first bad index
// of its range, and the first bad index overall is returned. Each row's result depends on
// that row only, so the split does not change any bit.
template <typename F>
int64_t run_cpu(int64_t n, double cycles_per_row, F fn) {
  const double total = cycles_per_row * static_cast<double>(n);
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min<int64_t>(
      {static_cast<int64_t>(std::min(hw, 8u)), std::max<int64_t>(1, n),
       std::max<int64_t>(1, static_cast<int64_t>(total / 2e6))});
  std::vector<int64_t> bad(threads, -1);
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { bad[t] = fn(n * t / threads, n * (t + 1) / threads); });
  bad[0] = fn(0, n / threads);
  for (auto& th : pool) th.join();
  for (int64_t b : bad)
    if (b >= 0) return b;
  return -1;
}

// out = in * scale[:, None] (per_row) or in * scale, as one problem like the others.
template <typename T, typename A>
struct ScaleProblem {
  const T* in;
  const A* scale;
  T* out;
  int64_t n;
  int64_t c;
  bool per_row;
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
  return cuda::scale_gradient(p.in, p.scale, p.out, p.n, p.c, p.per_row, stream);
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
  throw py::value_error(logits.name() + " is on " + logits.device_string() + " but " +
                        std::string(what) +
                        ": costxent._core was built without CUDA kernels (no nvcc at build "
                        "time)");
#endif
}

// The loss output and, unless compute_backprop is False, the backprop output of a loss
// function, wired into its problem. The Arrays keep the buffers borrowed during the run.
struct LossOutputs {
  std::unique_ptr<Array> loss;
  std::unique_ptr<Array> backprop;
  py::object loss_out;
  py::object backprop_out = py::none();
};

template <typename T, typename A, typename Problem>
LossOutputs loss_outputs(Problem& p, const std::vector<int64_t>& loss_shape,
                         const std::vector<int64_t>& shape, const py::object& loss_obj,
                         const py::object& backprop_obj, bool compute_backprop,
                         const Array& logits, int64_t stream) {
  LossOutputs o;
  o.loss_out = output<A>("loss", loss_obj, loss_shape, logits, stream, &o.loss);
  p.loss = o.loss->data<A>();
  if (compute_backprop) {
    o.backprop_out = output<T>("backprop", backprop_obj, shape, logits, stream, &o.backprop);
    p.backprop = o.backprop->data<T>();
  } else if (!backprop_obj.is_none()) {
    throw py::value_error("backprop was given but compute_backprop is False");
  }
  return o;
}

// Runs a loss problem on the logits' device. On the CPU, cpu_fn(begin, end) covers
// [0, total) and the first invalid index is returned; -1 when there is none (or on CUDA,
// where invalid labels give NaN rows instead).
template <typename Problem, typename F>
int64_t run_loss(const Array& logits, const char* what, const Problem& p, int64_t stream,
                 int64_t total, double cycles_per_unit, F cpu_fn) {
  if (logits.place() == Place::kCuda) {
    run_cuda(logits, what, p, stream);
    return -1;
  }
  py::gil_scoped_release release;
  return run_cpu(total, cycles_per_unit, cpu_fn);
}

std::vector<int64_t> logits_shape(const Array& logits, int64_t min_classes) {
  if (logits.ndim() != 2)
    throw py::value_error("logits must be 2-D [N, C], got shape " +
                          shape_string(logits.shape()));
  if (logits.dim(1) < min_classes)
    throw py::value_error("logits must have at least " + std::to_string(min_classes) +
                          " classes (C >= " + std::to_string(min_classes) + "), got shape " +
                          shape_string(logits.shape()));
  logits.require_contiguous();
  return logits.shape();
}

// ---------------------------------------------------------------------------------------
// softmax_loss

py::tuple softmax_loss(const py::object& logits_obj, const py::object& labels_obj,
                       const py::object& weights_obj, const std::string& loss_kind,
                       const std::string& weight_mode, double label_smoothing,
                       double focal_gamma, double ce_weight, const py::object& ignore_class,
                       const py::object& loss_obj, const py::object& backprop_obj,
                       bool compute_backprop, int64_t stream) {
  const Array logits("logits", logits_obj, stream);
  const std::vector<int64_t> shape = logits_shape(logits, 2);
  const int64_t n = shape[0];
  const int64_t c = shape[1];

  const Array labels("labels", labels_obj, stream);
  labels.require_same_device(logits);
  const bool sparse = labels.is(kDLInt, 32) || labels.is(kDLInt, 64);
  if (sparse) {
    if (labels.shape() != std::vector<int64_t>{n} && labels.shape() != std::vector<int64_t>{n, 1})
      throw py::value_error("sparse labels must have shape " + shape_string({n}) + " or " +
                            shape_string({n, 1}) + " (one class id per row of logits), got " +
                            shape_string(labels.shape()));
  } else {
    if (labels.dtype().code != kDLFloat && labels.dtype().code != kDLBfloat)
      throw py::type_error("labels must be int32 / int64 class ids or dense rows of the "
                           "logits' dtype, got " + dtype_string(labels.dtype()));
    labels.require_dtype(logits.dtype());
    labels.require_shape(shape, "(dense labels: the logits' shape)");
  }
  labels.require_contiguous();

  require_option(loss_kind == "cross_entropy" || loss_kind == "expected_cost",
                 "loss_kind must be 'cross_entropy' or 'expected_cost', got '" + loss_kind + "'");
  require_option(weight_mode == "none" || weight_mode == "class" || weight_mode == "cost",
                 "weight_mode must be 'none', 'class' or 'cost', got '" + weight_mode + "'");
  const bool expected = loss_kind == "expected_cost";
  WeightMode mode = weight_mode == "class"  ? WeightMode::kClass
                    : weight_mode == "cost" ? WeightMode::kCost
                                            : WeightMode::kNone;
  if (expected) {
    require_option(mode != WeightMode::kClass,
                   "expected_cost takes a cost matrix: weight_mode must be 'cost' (or 'none'), "
                   "got 'class'");
    mode = WeightMode::kCost;
  }
  require_option(std::isfinite(label_smoothing) && label_smoothing >= 0 && label_smoothing <= 1,
                 "label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  require_option(std::isfinite(focal_gamma) && focal_gamma >= 0,
                 "focal_gamma must be finite and >= 0, got " + std::to_string(focal_gamma));
  require_option(std::isfinite(ce_weight), "ce_weight must be finite, got " +
                                               std::to_string(ce_weight));
  require_option(!expected || focal_gamma == 0,
                 "focal_gamma applies to loss_kind='cross_entropy' only");
  require_option(expected || ce_weight == 0, "ce_weight applies to loss_kind='expected_cost' only");
  require_option(sparse || ignore_class.is_none(),
                 "ignore_class applies to sparse (integer) labels only");

  const auto weights = maybe_array("weights", weights_obj, stream);
  if (mode == WeightMode::kNone && weights != nullptr)
    throw py::value_error("weights were given but weight_mode is 'none'; pass weight_mode="
                          "'class' (shape (C,)) or 'cost' (shape (C, C))");
  if (mode != WeightMode::kNone && weights == nullptr)
    throw py::value_error(std::string(expected ? "expected_cost" : "weight_mode '" + weight_mode +
                                                                       "'") +
                          " needs weights of shape " +
                          shape_string(mode == WeightMode::kClass ? std::vector<int64_t>{c}
                                                                  : std::vector<int64_t>{c, c}));

  return with_float_type(logits, [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    SoftmaxProblem<T, A> p;
    p.n = n;
    p.c = c;
    p.logits = logits.data<T>();
    if (sparse) {
      if (labels.is(kDLInt, 32)) {
        p.labels32 = labels.data<int32_t>();
      } else {
        p.labels64 = labels.data<int64_t>();
      }
    } else {
      p.dense = labels.data<T>();
    }
    if (weights != nullptr) {
      weights->require_same_device(logits);
      weights->require_dtype(dl_type<A>());
      weights->require_shape(mode == WeightMode::kClass ? std::vector<int64_t>{c}
                                                        : std::vector<int64_t>{c, c},
                             mode == WeightMode::kClass
                                 ? "(class weights, one per class)"
                                 : "(cost matrix C x C, M[true, predicted])");
      weights->require_contiguous();
      require_finite<A>(*weights);
      p.weights = weights->data<A>();
    }
    p.loss_kind = expected ? SoftmaxLoss::kExpectedCost : SoftmaxLoss::kCrossEntropy;
    p.weight_mode = mode;
    p.label_smoothing = static_cast<A>(label_smoothing);
    p.focal_gamma = static_cast<A>(focal_gamma);
    p.ce_weight = static_cast<A>(ce_weight);
    if (!ignore_class.is_none()) {
      if (!py::isinstance<py::int_>(ignore_class))
        throw py::type_error("ignore_class must be an int or None, got " +
                             std::string(Py_TYPE(ignore_class.ptr())->tp_name));
      p.has_ignore_class = true;
      p.ignore_class = ignore_class.cast<int64_t>();
    }

    const LossOutputs out = loss_outputs<T, A>(p, {n}, shape, loss_obj, backprop_obj,
                                               compute_backprop, logits, stream);
    const int64_t bad =
        run_loss(logits, "softmax_loss", p, stream, n,
                 cpu::softmax_row_cycles(c, !sparse, focal_gamma != 0),
                 [&](int64_t begin, int64_t end) { return cpu::softmax_rows(p, begin, end); });
    if (bad >= 0)
      throw py::value_error("labels[" + std::to_string(bad) + "] = " +
                            std::to_string(label_at(p, bad)) + " is outside [0, " +
                            std::to_string(c) + ")" +
                            (p.has_ignore_class
                                 ? " and is not ignore_class " + std::to_string(p.ignore_class)
                                 : std::string()));
    return py::make_tuple(out.loss_out, out.backprop_out);
  });
}

// ---------------------------------------------------------------------------------------
// sigmoid_loss

// pos_weight / neg_weight: None (1), a Python number (CPU only), or an array of shape (),
// (1,) or (C,).
template <typename A>
struct ClassValues {
  std::unique_ptr<Array> array;
  A scalar = 1;
  const A* data = nullptr;
  int64_t size = 0;
};

template <typename A>
void class_values(const char* name, const py::object& obj, const Array& logits, int64_t c,
                  int64_t stream, ClassValues<A>* out) {
  if (obj.is_none()) return;
  if (py::isinstance<py::float_>(obj) || py::isinstance<py::int_>(obj)) {
    if (logits.place() == Place::kCuda)
      throw py::type_error(std::string(name) + " must be an array on " + logits.device_string() +
                           " (shape (), (1,) or (" + std::to_string(c) +
                           ",)) for logits on a CUDA device, got a Python number");
    out->scalar = obj.cast<A>();
    if (!std::isfinite(out->scalar))
      throw py::value_error(std::string(name) + " must be finite, got " +
                            std::to_string(out->scalar));
    out->data = &out->scalar;
    out->size = 1;
    return;
  }
  out->array = std::make_unique<Array>(name, obj, stream);
  const Array& a = *out->array;
  a.require_same_device(logits);
  a.require_dtype(dl_type<A>());
  if (!(a.ndim() == 0 || (a.ndim() == 1 && (a.dim(0) == 1 || a.dim(0) == c))))
    throw py::value_error(std::string(name) + " must have shape (), (1,) or (" +
                          std::to_string(c) + ",) (one per class), got " +
                          shape_string(a.shape()));
  a.require_contiguous();
  require_finite<A>(a);
  out->data = a.data<A>();
  out->size = a.size();
}

py::tuple sigmoid_loss(const py::object& logits_obj, const py::object& labels_obj,
                       const py::object& pos_weight, const py::object& neg_weight,
                       double label_smoothing, double focal_gamma, const py::object& loss_obj,
                       const py::object& backprop_obj, bool compute_backprop, int64_t stream) {
  const Array logits("logits", logits_obj, stream);
  const std::vector<int64_t> shape = logits_shape(logits, 1);
  const int64_t n = shape[0];
  const int64_t c = shape[1];
  const Array labels("labels", labels_obj, stream);
  labels.require_same_device(logits);
  labels.require_dtype(logits.dtype());
  labels.require_shape(shape, "(the logits' shape)");
  labels.require_contiguous();
  require_option(std::isfinite(label_smoothing) && label_smoothing >= 0 && label_smoothing <= 1,
                 "label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  require_option(std::isfinite(focal_gamma) && focal_gamma >= 0,
                 "focal_gamma must be finite and >= 0, got " + std::to_string(focal_gamma));

  return with_float_type(logits, [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    ClassValues<A> pos, neg;
    class_values<A>("pos_weight", pos_weight, logits, c, stream, &pos);
    class_values<A>("neg_weight", neg_weight, logits, c, stream, &neg);
    SigmoidProblem<T, A> p;
    p.n = n;
    p.c = c;
    p.logits = logits.data<T>();
    p.labels = labels.data<T>();
    p.pos_weight = pos.data;
    p.pos_weight_size = pos.size;
    p.neg_weight = neg.data;
    p.neg_weight_size = neg.size;
    p.label_smoothing = static_cast<A>(label_smoothing);
    p.focal_gamma = static_cast<A>(focal_gamma);

    const LossOutputs out = loss_outputs<T, A>(p, shape, shape, loss_obj, backprop_obj,
                                               compute_backprop, logits, stream);
    const int64_t bad =
        run_loss(logits, "sigmoid_loss", p, stream, n * c,
                 cpu::sigmoid_element_cycles(focal_gamma != 0),
                 [&](int64_t begin, int64_t end) { return cpu::sigmoid_elements(p, begin, end); });
    if (bad >= 0)
      throw py::value_error("labels[" + std::to_string(bad / c) + ", " +
                            std::to_string(bad % c) + "] = " +
                            std::to_string(to_acc(p.labels[bad])) + " is outside [0, 1]");
    return py::make_tuple(out.loss_out, out.backprop_out);
  });
}

// ---------------------------------------------------------------------------------------
// scale_gradient: out = grad * scale[:, None] (per_row) or grad * scale (element-wise).

py::object scale_gradient(const py::object& grad_obj, const py::object& scale_obj,
                          const py::object& out_obj, bool per_row, int64_t stream) {
  const Array grad("grad", grad_obj, stream);
  const std::vector<int64_t> shape = logits_shape(grad, 1);
  const int64_t n = shape[0];
  const int64_t c = shape[1];
  const Array scale("scale", scale_obj, stream);
  scale.require_same_device(grad);
  return with_float_type(grad, [&](auto tag) -> py::object {
    using T = typename decltype(tag)::type;
    using A = typename Acc<T>::type;
    scale.require_dtype(dl_type<A>());
    scale.require_shape(per_row ? std::vector<int64_t>{n} : shape,
                        per_row ? "(one per row of grad)" : "(grad's shape)");
    scale.require_contiguous();
    std::unique_ptr<Array> out;
    py::object result = output<T>("out", out_obj, shape, grad, stream, &out);
    const ScaleProblem<T, A> p{grad.data<T>(), scale.data<A>(), out->data<T>(), n, c, per_row};
    if (grad.place() == Place::kCuda) {
      run_cuda(grad, "scale_gradient", p, stream);
    } else {
      py::gil_scoped_release release;
      if (per_row) {
        run_cpu(n, static_cast<double>(c), [&](int64_t begin, int64_t end) {
          cpu::scale_rows(p.in, p.scale, p.out, c, begin, end);
          return int64_t{-1};
        });
      } else {
        run_cpu(n * c, 1.0, [&](int64_t begin, int64_t end) {
          cpu::scale_elements(p.in, p.scale, p.out, begin, end);
          return int64_t{-1};
        });
      }
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

}  // namespace
}  // namespace costxent

PYBIND11_MODULE(_core, m) {
  using namespace costxent;
  m.doc() =
      "costxent's fused loss + gradient kernels over DLPack arrays (NumPy on the CPU; CuPy, "
      "PyTorch or JAX on a CUDA device), without TensorFlow. Outputs are written into the "
      "arrays passed as loss= / backprop= (required on a CUDA device; new NumPy arrays on the "
      "CPU when omitted). stream is a cudaStream_t as an int (0: the legacy default stream).";
  m.def("softmax_loss", &softmax_loss, py::arg("logits"), py::arg("labels"),
        py::arg("weights") = py::none(), py::kw_only(), py::arg("loss_kind") = "cross_entropy",
        py::arg("weight_mode") = "none", py::arg("label_smoothing") = 0.0,
        py::arg("focal_gamma") = 0.0, py::arg("ce_weight") = 0.0,
        py::arg("ignore_class") = py::none(), py::arg("loss") = py::none(),
        py::arg("backprop") = py::none(), py::arg("compute_backprop") = true,
        py::arg("stream") = 0,
        "Softmax cross-entropy (weighted, focal, smoothed) or expected cost over rows of "
        "logits [N, C]; labels are int class ids [N] or dense rows [N, C]. Returns "
        "(loss [N], backprop [N, C] or None).");
  m.def("sigmoid_loss", &sigmoid_loss, py::arg("logits"), py::arg("labels"),
        py::arg("pos_weight") = py::none(), py::arg("neg_weight") = py::none(), py::kw_only(),
        py::arg("label_smoothing") = 0.0, py::arg("focal_gamma") = 0.0,
        py::arg("loss") = py::none(), py::arg("backprop") = py::none(),
        py::arg("compute_backprop") = true, py::arg("stream") = 0,
        "Element-wise weighted focal sigmoid cross-entropy over logits [N, C]. Returns "
        "(loss [N, C], backprop [N, C] or None).");
  m.def("scale_gradient", &scale_gradient, py::arg("grad"), py::arg("scale"),
        py::arg("out") = py::none(), py::kw_only(), py::arg("per_row") = true,
        py::arg("stream") = 0,
        "out = grad * scale[:, None] (per_row) or grad * scale; out may be grad.");
  m.def("has_cuda", &has_cuda, "Whether this build has the CUDA kernels.");
  m.def("cpu_instruction_set", &cpu::instruction_set,
        "The CPU kernels' instruction set chosen at load time.");
}
