// The pack / unpack / scale_ drivers with their argument checks, and the CPU backend.
#include "pack.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "simd16.h"

namespace twinhpc {
namespace {

// Bytes per parallel chunk of a plain copy (the element grain of at::parallel_for times 8).
constexpr int64_t kCopyGrainBytes = at::internal::GRAIN_SIZE * 8;

bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool is_supported(at::ScalarType t) { return is_float(t) || t == at::kInt || t == at::kLong; }

// The torch spelling of a dtype ("float32", "uint8"), for error messages.
std::string dtype_name(at::ScalarType t) { return std::string(c10::getDtypeNames(t).first); }

void check_supported(const char* op, const std::string& what, at::ScalarType t) {
  TORCH_CHECK_TYPE(is_supported(t), "twinhpc.", op, ": ", what, " has unsupported dtype ",
                   dtype_name(t), " (supported: float32, float64, float16, bfloat16, int32, int64)");
}

// Elements per block of a 16-bit -> 16-bit conversion through a float buffer (stays in L1).
constexpr int64_t kBlock16 = 2048;

// dst[begin, end) = Out(Acc(src) * s) where float32 meets a 16-bit float: the simd16 kernels.
template <typename In, typename Out>
void convert_16(const In* src, Out* dst, int64_t begin, int64_t end, float s) {
  if constexpr (std::is_same_v<In, float>) {
    simd16::narrow(src + begin, dst + begin, end - begin, s);
  } else if constexpr (std::is_same_v<Out, float>) {
    simd16::widen(src + begin, dst + begin, end - begin, s);
  } else {  // 16-bit to 16-bit (e.g. scale_ of a bfloat16 tensor, in place): through float
    float buf[kBlock16];
    for (int64_t lo = begin; lo < end; lo += kBlock16) {
      const int64_t m = std::min(kBlock16, end - lo);
      simd16::widen(src + lo, buf, m);
      simd16::narrow(buf, dst + lo, m, s);
    }
  }
}

// dst[i] = Out(Acc(src[i]) * scale): the arithmetic is float, or double when either side is.
template <typename In, typename Out>
void convert_typed(const In* src, Out* dst, int64_t n, double scale) {
  using Acc = std::conditional_t<std::is_same_v<In, double> || std::is_same_v<Out, double>,
                                 double, float>;
  const Acc s = static_cast<Acc>(scale);
  at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<Acc, float> && (simd16::is_16bit_float<In> || simd16::is_16bit_float<Out>)) {
      convert_16(src, dst, begin, end, s);
    } else {
      for (int64_t i = begin; i < end; ++i) {
        dst[i] = static_cast<Out>(static_cast<Acc>(src[i]) * s);
      }
    }
  });
}

// The CPU ConvertFn: at::parallel_for over the elements (ints are only ever copied).
void convert_cpu(const void* src, at::ScalarType in, void* dst, at::ScalarType out, int64_t n,
                 double scale) {
  if (in == out && scale == 1.0) {
    if (src == dst) return;
    const int64_t nbytes = n * static_cast<int64_t>(c10::elementSize(in));
    at::parallel_for(0, nbytes, kCopyGrainBytes, [&](int64_t begin, int64_t end) {
      std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                  end - begin);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in, "twinhpc_convert_in", [&] {
    using In = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out, "twinhpc_convert_out", [&] {
      convert_typed(static_cast<const In*>(src), static_cast<scalar_t*>(dst), n, scale);
    });
  });
}

// Address of element `offset` of a contiguous tensor's storage.
char* element_ptr(const at::Tensor& t, int64_t offset) {
  return static_cast<char*>(t.data_ptr()) + offset * static_cast<int64_t>(t.element_size());
}

void check_pack_args(at::TensorList tensors, std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(!tensors.empty(), "twinhpc.pack: no tensors given");
  const at::Tensor& first = tensors[0];
  check_supported("pack", "tensors[0]", first.scalar_type());
  for (size_t i = 1; i < tensors.size(); ++i) {
    TORCH_CHECK_TYPE(tensors[i].scalar_type() == first.scalar_type(), "twinhpc.pack: tensors[", i,
                     "] has dtype ", dtype_name(tensors[i].scalar_type()), " but tensors[0] has ",
                     dtype_name(first.scalar_type()), "; all tensors must share one dtype");
    TORCH_CHECK_VALUE(tensors[i].device() == first.device(), "twinhpc.pack: tensors[", i,
                      "] is on ", tensors[i].device(), " but tensors[0] is on ", first.device(),
                      "; all tensors must share one device");
  }
  if (dtype && *dtype != first.scalar_type()) {
    check_supported("pack", "the requested dtype", *dtype);
    TORCH_CHECK_TYPE(is_float(first.scalar_type()) && is_float(*dtype), "twinhpc.pack: cannot cast ",
                     dtype_name(first.scalar_type()), " tensors to ", dtype_name(*dtype),
                     "; wire casts are between floating-point dtypes only");
  }
}

void check_unpack_args(const at::Tensor& flat, at::TensorList outs, double scale) {
  TORCH_CHECK_VALUE(flat.dim() == 1, "twinhpc.unpack: flat must be 1-D, got shape ", flat.sizes());
  check_supported("unpack", "flat", flat.scalar_type());
  int64_t total = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const at::Tensor& out = outs[i];
    const at::ScalarType t = out.scalar_type();
    check_supported("unpack", "outs[" + std::to_string(i) + "]", t);
    TORCH_CHECK_VALUE(out.device() == flat.device(), "twinhpc.unpack: outs[", i, "] is on ",
                      out.device(), " but flat is on ", flat.device());
    TORCH_CHECK_VALUE(out.is_contiguous(), "twinhpc.unpack: outs[", i,
                      "] is not contiguous; unpack writes into each out in place");
    TORCH_CHECK_TYPE(t == flat.scalar_type() || (is_float(t) && is_float(flat.scalar_type())),
                     "twinhpc.unpack: cannot cast flat of dtype ", dtype_name(flat.scalar_type()),
                     " into outs[", i, "] of dtype ", dtype_name(t),
                     "; casts are between floating-point dtypes only");
    TORCH_CHECK_TYPE(is_float(t) || scale == 1.0, "twinhpc.unpack: cannot scale outs[", i,
                     "] of integer dtype ", dtype_name(t), " by ", scale);
    total += out.numel();
    TORCH_CHECK_VALUE(total <= flat.numel(), "twinhpc.unpack: outs[0..", i, "] hold ", total,
                      " elements but flat has only ", flat.numel());
  }
  TORCH_CHECK_VALUE(total == flat.numel(), "twinhpc.unpack: outs hold ", total,
                    " elements in total but flat has ", flat.numel());
}

void check_scale_args(const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float(t.scalar_type()), "twinhpc.scale_: cannot scale a tensor of dtype ",
                   dtype_name(t.scalar_type()), "; only float32, float64, float16 and bfloat16");
  TORCH_CHECK_VALUE(t.is_contiguous(), "twinhpc.scale_: the tensor must be contiguous");
}

// Element offsets of each tensor inside the flat buffer, plus the total as the last entry.
std::vector<int64_t> flat_offsets(at::TensorList tensors) {
  std::vector<int64_t> offsets{0};
  offsets.reserve(tensors.size() + 1);
  for (const at::Tensor& t : tensors) offsets.push_back(offsets.back() + t.numel());
  return offsets;
}

}  // namespace

at::Tensor pack_with(ConvertFn convert, at::TensorList tensors, std::optional<at::ScalarType> dtype) {
  check_pack_args(tensors, dtype);
  const std::vector<int64_t> offsets = flat_offsets(tensors);
  const at::ScalarType wire = dtype.value_or(tensors[0].scalar_type());
  at::Tensor flat = at::empty({offsets.back()}, tensors[0].options().dtype(wire));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor src = tensors[i].contiguous();
    convert(src.data_ptr(), src.scalar_type(), element_ptr(flat, offsets[i]), wire, src.numel(), 1.0);
  }
  return flat;
}

void unpack_with(ConvertFn convert, const at::Tensor& flat, at::TensorList outs, double scale) {
  check_unpack_args(flat, outs, scale);
  const at::Tensor src = flat.contiguous();
  const std::vector<int64_t> offsets = flat_offsets(outs);
  for (size_t i = 0; i < outs.size(); ++i) {
    convert(element_ptr(src, offsets[i]), src.scalar_type(), outs[i].data_ptr(),
            outs[i].scalar_type(), outs[i].numel(), scale);
  }
}

void scale_with(ConvertFn convert, at::Tensor& t, double factor) {
  check_scale_args(t);
  convert(t.data_ptr(), t.scalar_type(), t.data_ptr(), t.scalar_type(), t.numel(), factor);
}

at::Tensor pack_cpu(at::TensorList tensors, std::optional<at::ScalarType> dtype) {
  return pack_with(convert_cpu, tensors, dtype);
}

void unpack_cpu(const at::Tensor& flat, at::TensorList outs, double scale) {
  unpack_with(convert_cpu, flat, outs, scale);
}

void scale_cpu(at::Tensor& t, double factor) { scale_with(convert_cpu, t, factor); }

}  // namespace twinhpc
