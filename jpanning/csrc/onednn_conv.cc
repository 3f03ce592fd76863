// oneDNN convolutions for XLA:CPU, called through XLA's FFI (jax.ffi): the forward pass and
// both gradients of a 2-D NHWC/HWIO float32 convolution without dilation or groups.
//
// jpanning.onednn defines three JAX primitives on these targets (forward, input gradient,
// kernel gradient) whose derivative and transpose rules are each other, so reverse mode,
// forward mode and higher derivatives all run here. Activations are read and written in
// XLA's row-major NHWC layout (oneDNN's `nhwc`); the kernel arrives as HWIO and is
// reordered into the blocked layout oneDNN picks for the primitive (and back, for the
// kernel gradient). Primitives are built once per shape and kept; execution state
// (stream, scratchpad, blocked kernel) is per calling thread, so concurrent calls from
// XLA's threads do not share buffers.
//
// Build: scripts/build_onednn.sh (g++ against jaxlib's FFI headers and oneDNN 3.x from PyPI's
// wheels or Debian's libdnnl-dev 2.x).

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

// oneDNN 2.x (Debian's libdnnl-dev) builds a primitive descriptor from an operation
// descriptor; 3.x (PyPI's wheels) constructs it directly. Only Build() differs.
#if DNNL_VERSION_MAJOR != 2 && DNNL_VERSION_MAJOR != 3
#error "jpanning's oneDNN convolution is written for the oneDNN 2.x and 3.x APIs"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum class Op { kForward, kInputGrad, kKernelGrad };

// Everything that decides a primitive: the op, the shapes and the window.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

struct Geometry {
  int64_t n, h, w, c;     // input NHWC
  int64_t kh, kw, o;      // kernel HWIO (in = c)
  int64_t oh, ow;         // output spatial size
  int64_t sh, sw;         // strides
  int64_t pt, pb, pl, pr; // padding: top, bottom, left, right
};

struct Entry {
  dnnl::primitive prim;
  memory::desc kernel_md;   // the layout the primitive reads or writes the kernel in
  bool reorder_kernel;      // whether that differs from HWIO
  dnnl::reorder kernel_reorder;  // HWIO -> kernel_md (forward, input grad) or back
  size_t scratch_bytes;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A 64-byte aligned buffer that only grows, one per thread and use.
struct Scratch {
  void* ptr = nullptr;
  size_t size = 0;
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(ptr);
      size = (bytes + 63) / 64 * 64;
      ptr = std::aligned_alloc(64, size);
      if (ptr == nullptr) size = 0;
    }
    return ptr;
  }
  ~Scratch() { std::free(ptr); }
};

memory::desc Md(memory::dims dims, tag t) {
  return memory::desc(dims, memory::data_type::f32, t);
}

std::shared_ptr<Entry> Build(Op op, const Geometry& g) {
  auto& eng = Engine();
  memory::dims src{g.n, g.c, g.h, g.w}, dst{g.n, g.o, g.oh, g.ow}, wei{g.o, g.c, g.kh, g.kw};
  memory::dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  auto src_md = Md(src, tag::nhwc), dst_md = Md(dst, tag::nhwc);
  auto wei_any = Md(wei, tag::any), wei_hwio = Md(wei, tag::hwio);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto direct = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, direct, src_md, wei_any, dst_md, strides, pad_l,
      pad_r, attr);
#else
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, direct, src_md,
                                      wei_any, dst_md, strides, pad_l, pad_r),
      attr, eng);
#endif
  auto entry = std::make_shared<Entry>();
  if (op == Op::kForward) {
    entry->prim = dnnl::convolution_forward(fwd_pd);
    entry->kernel_md = fwd_pd.weights_desc();
    entry->scratch_bytes = fwd_pd.scratchpad_desc().get_size();
  } else if (op == Op::kInputGrad) {
#if DNNL_VERSION_MAJOR >= 3
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, direct, src_md, wei_any, dst_md, strides, pad_l, pad_r, fwd_pd, attr);
    // 3.x picks brgconv_strided for a strided input gradient: on ResNet-20's stride-2 layers
    // (AVX-512) 1.7-1.8x slower than the jit kernel 2.x picks (benchmarks.onednn_builds).
    while (std::string(pd.impl_info_str()).rfind("brgconv_strided:avx512", 0) == 0 &&
           pd.next_impl()) {
    }
#else
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(direct, src_md, wei_any, dst_md, strides, pad_l,
                                              pad_r),
        attr, eng, fwd_pd);
#endif
    entry->prim = dnnl::convolution_backward_data(pd);
    entry->kernel_md = pd.weights_desc();
    entry->scratch_bytes = pd.scratchpad_desc().get_size();
  } else {
#if DNNL_VERSION_MAJOR >= 3
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, direct, src_md, wei_any, dst_md, strides, pad_l, pad_r, fwd_pd, attr);
#else
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(direct, src_md, wei_any, dst_md, strides,
                                                 pad_l, pad_r),
        attr, eng, fwd_pd);
#endif
    entry->prim = dnnl::convolution_backward_weights(pd);
    entry->kernel_md = pd.diff_weights_desc();
    entry->scratch_bytes = pd.scratchpad_desc().get_size();
  }
  entry->reorder_kernel = entry->kernel_md != wei_hwio;
  if (entry->reorder_kernel) {
    dnnl::reorder::primitive_desc rpd =
        op == Op::kKernelGrad ? dnnl::reorder::primitive_desc(eng, entry->kernel_md, eng, wei_hwio)
                              : dnnl::reorder::primitive_desc(eng, wei_hwio, eng, entry->kernel_md);
    entry->kernel_reorder = dnnl::reorder(rpd);
  }
  return entry;
}

std::shared_ptr<Entry> Lookup(Op op, const Geometry& g) {
  static std::mutex mutex;
  static std::map<Key, std::shared_ptr<Entry>> cache;
  Key key{static_cast<int>(op), g.n, g.h, g.w, g.c, g.kh, g.kw, g.o, g.oh, g.ow,
          g.sh, g.sw, g.pt, g.pb, g.pl, g.pr};
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto entry = Build(op, g);  // outside the lock: building JIT-compiles kernels
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, entry).first->second;
}

ffi::Error Run(Op op, const Geometry& g, float* x, float* w, float* y) {
  if (g.n == 0 || g.c == 0 || g.o == 0 || g.oh <= 0 || g.ow <= 0) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "empty convolution");
  }
  try {
    auto entry = Lookup(op, g);
    auto& eng = Engine();
    thread_local dnnl::stream stream(Engine());
    thread_local Scratch scratch, kernel_buffer;
    memory::dims src{g.n, g.c, g.h, g.w}, dst{g.n, g.o, g.oh, g.ow}, wei{g.o, g.c, g.kh, g.kw};
    memory x_mem(Md(src, tag::nhwc), eng, x), y_mem(Md(dst, tag::nhwc), eng, y);
    memory w_mem(Md(wei, tag::hwio), eng, w);
    memory k_mem = w_mem;
    if (entry->reorder_kernel) {
      void* buf = kernel_buffer.Get(entry->kernel_md.get_size());
      if (buf == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "kernel buffer");
      k_mem = memory(entry->kernel_md, eng, buf);
    }
    std::unordered_map<int, memory> args;
    if (entry->scratch_bytes > 0) {
      void* ptr = scratch.Get(entry->scratch_bytes);
      if (ptr == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "scratchpad");
      auto md = memory::desc({static_cast<int64_t>(entry->scratch_bytes)}, memory::data_type::u8,
                             tag::x);
      args.emplace(DNNL_ARG_SCRATCHPAD, memory(md, eng, ptr));
    }
    if (op == Op::kForward) {
      if (entry->reorder_kernel) entry->kernel_reorder.execute(stream, w_mem, k_mem);
      args.insert({{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, k_mem}, {DNNL_ARG_DST, y_mem}});
    } else if (op == Op::kInputGrad) {  // x: the input gradient (written), y: the output's
      if (entry->reorder_kernel) entry->kernel_reorder.execute(stream, w_mem, k_mem);
      args.insert(
          {{DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_WEIGHTS, k_mem}, {DNNL_ARG_DIFF_SRC, x_mem}});
    } else {  // w: the kernel gradient (written)
      args.insert(
          {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, y_mem}, {DNNL_ARG_DIFF_WEIGHTS, k_mem}});
    }
    entry->prim.execute(stream, args);
    if (op == Op::kKernelGrad && entry->reorder_kernel) {
      entry->kernel_reorder.execute(stream, k_mem, w_mem);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

template <typename A, typename B, typename C>
Geometry Shape(const A& x, const B& w, const C& y, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> padding) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  return Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
                  strides[0], strides[1], padding[0], padding[1], padding[2], padding[3]};
}

ffi::Error CheckAttrs(ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  if (strides.size() != 2 || padding.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "strides must have 2 entries and padding 4 (top, bottom, left, right)");
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, F32Out y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding) {
  if (auto e = CheckAttrs(strides, padding); e.failure()) return e;
  return Run(Op::kForward, Shape(x, w, *y, strides, padding), x.typed_data(), w.typed_data(),
             y->typed_data());
}

ffi::Error InputGrad(F32 dy, F32 w, F32Out dx, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> padding) {
  if (auto e = CheckAttrs(strides, padding); e.failure()) return e;
  return Run(Op::kInputGrad, Shape(*dx, w, dy, strides, padding), dx->typed_data(),
             w.typed_data(), dy.typed_data());
}

ffi::Error KernelGrad(F32 x, F32 dy, F32Out dw, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding) {
  if (auto e = CheckAttrs(strides, padding); e.failure()) return e;
  return Run(Op::kKernelGrad, Shape(x, *dw, dy, strides, padding), x.typed_data(),
             dw->typed_data(), dy.typed_data());
}

// The three targets take two float32 arrays, return one, and read the window from attributes.
auto Binding() {
  return ffi::Ffi::Bind()
      .Arg<F32>()
      .Arg<F32>()
      .Ret<F32>()
      .Attr<ffi::Span<const int64_t>>("strides")
      .Attr<ffi::Span<const int64_t>>("padding");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JpanningOnednnConvForward, Forward, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JpanningOnednnConvInputGrad, InputGrad, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JpanningOnednnConvKernelGrad, KernelGrad, Binding());

extern "C" const char* JpanningOnednnVersion() {
  static std::string version = [] {
    auto v = dnnl::version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  }();
  return version.c_str();
}
