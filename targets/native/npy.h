// NumPy .npy (format 1.0-3.0) and .npz (np.savez: uncompressed zip of .npy members) files, little-endian,
// C or Fortran order (returned in C order). Every reader throws std::runtime_error naming the file for anything it does not support.
#ifndef BISR_NATIVE_NPY_H_
#define BISR_NATIVE_NPY_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace bisr {

// A numeric array as stored: dtype kind 'f' (float), 'i' (signed) or 'u' (unsigned) of `bits` bits.
struct NpyArray {
  char kind = 'f';
  int bits = 32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // C order, product(shape) * bits / 8 bytes
};

struct FloatArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order, product(shape) elements
};

size_t Numel(const std::vector<int64_t>& shape);

// One .npy image held in `bytes`; `what` names it in errors.
NpyArray ParseNpy(const std::string& bytes, const std::string& what);
NpyArray LoadNpy(const std::string& path);
// The members of an np.savez file in archive order, names without ".npy". Compressed members are refused.
// The members of the .npz held in `zip` (bytes already read); `what` names it in errors.
std::vector<std::pair<std::string, NpyArray>> ParseNpz(const std::string& zip, const std::string& what);

// float32 (as is) or float64 (rounded) -> float32; other dtypes throw.
FloatArray ToFloat32(const NpyArray& array, const std::string& what);

// Writes `array` as a version 1.0 .npy file of dtype <f4, to `path`.tmp first and then renamed over `path`,
// so a failure never leaves a partial file.
void SaveNpy(const std::string& path, const FloatArray& array);

}  // namespace bisr

#endif  // BISR_NATIVE_NPY_H_
