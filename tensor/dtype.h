// Element types: DType, the 16-bit float types BFloat16 and Half (stored as
// bits, computed in f32), and dispatch helpers over dtypes.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "tensor/error.h"

namespace loom {

enum class DType : uint8_t { f32, f64, f16, bf16, i32, i64, u8 };

/// bfloat16: the top 16 bits of an f32; conversion rounds to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) : bits(from_float(f)) {}  // NOLINT: implicit like a float
  operator float() const {                    // NOLINT
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
  }
};

/// IEEE 754 binary16; conversion rounds to nearest even, handles subnormals.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f) : bits(from_float(f)) {}             // NOLINT
  operator float() const { return to_float(bits); }  // NOLINT
  static uint16_t from_float(float f);
  static float to_float(uint16_t h);
};

inline uint16_t Half::from_float(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {                                               // subnormal or zero in half
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);
    uint32_t mant = (absx & 0x007fffffu) | 0x00800000u;
    int shift = 126 - static_cast<int>(absx >> 23);  // 14..24
    uint32_t half_mant = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return static_cast<uint16_t>(sign | half_mant);
  }
  uint32_t e = (absx >> 23) - 112;  // rebias 127 -> 15
  uint32_t m = absx & 0x007fffffu;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float Half::to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  uint32_t out;
  if (e == 0) {
    if (m == 0) {
      out = sign;
    } else {  // subnormal: normalise
      int shift = 0;
      while (!(m & 0x400u)) {
        m <<= 1;
        ++shift;
      }
      m &= 0x3ffu;
      out = sign | (static_cast<uint32_t>(113 - shift) << 23) | (m << 13);
    }
  } else if (e == 31) {
    out = sign | 0x7f800000u | (m << 13);
  } else {
    out = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &out, 4);
  return f;
}

/// Bytes per element.
inline size_t element_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::u8:
      return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "float32";
    case DType::f64:
      return "float64";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16";
    case DType::i32:
      return "int32";
    case DType::i64:
      return "int64";
    case DType::u8:
      return "uint8";
  }
  return "?";
}
inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

/// Parses "float32"/"f32"/"fp32", "bfloat16"/"bf16", … ; throws InvalidArgument.
DType parse_dtype(const std::string& name);

inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::f16 || t == DType::bf16; }

/// The dtype two operands compute in (PyTorch's promotion for our dtypes).
DType promote_types(DType a, DType b);

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct DTypeOf<Half> {
  static constexpr DType value = DType::f16;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::u8;
};

/// Type used for arithmetic on T: f32 for the 16-bit floats, T otherwise.
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<Half> {
  using type = float;
};
template <>
struct AccType<BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

}  // namespace loom

/// Calls the body with `scalar_t` bound to the C++ type of dtype `DT`.
#define LOOM_DISPATCH_CASE(DT, TYPE, ...) \
  case DT: {                              \
    using scalar_t = TYPE;                \
    __VA_ARGS__();                        \
    break;                                \
  }
#define LOOM_DISPATCH_ALL(dtype, opname, ...)                                \
  [&] {                                                                      \
    switch (dtype) {                                                         \
      LOOM_DISPATCH_CASE(::loom::DType::f32, float, __VA_ARGS__)             \
      LOOM_DISPATCH_CASE(::loom::DType::f64, double, __VA_ARGS__)            \
      LOOM_DISPATCH_CASE(::loom::DType::f16, ::loom::Half, __VA_ARGS__)      \
      LOOM_DISPATCH_CASE(::loom::DType::bf16, ::loom::BFloat16, __VA_ARGS__) \
      LOOM_DISPATCH_CASE(::loom::DType::i32, int32_t, __VA_ARGS__)           \
      LOOM_DISPATCH_CASE(::loom::DType::i64, int64_t, __VA_ARGS__)           \
      LOOM_DISPATCH_CASE(::loom::DType::u8, uint8_t, __VA_ARGS__)            \
    }                                                                        \
  }()
#define LOOM_DISPATCH_FLOATING(dtype, opname, ...)                                                                   \
  [&] {                                                                                                              \
    switch (dtype) {                                                                                                 \
      LOOM_DISPATCH_CASE(::loom::DType::f32, float, __VA_ARGS__)                                                     \
      LOOM_DISPATCH_CASE(::loom::DType::f64, double, __VA_ARGS__)                                                    \
      LOOM_DISPATCH_CASE(::loom::DType::f16, ::loom::Half, __VA_ARGS__)                                              \
      LOOM_DISPATCH_CASE(::loom::DType::bf16, ::loom::BFloat16, __VA_ARGS__)                                         \
      default:                                                                                                       \
        LOOM_THROW(::loom::InvalidArgument, opname, ": expected a floating dtype, got ", ::loom::dtype_name(dtype)); \
    }                                                                                                                \
  }()
