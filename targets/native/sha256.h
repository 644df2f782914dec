// SHA-256 (FIPS 180-4) of a file, as lowercase hex: the digests that an artifact's manifest.json records.
#ifndef BISR_NATIVE_SHA256_H_
#define BISR_NATIVE_SHA256_H_

#include <string>

namespace bisr {

// Hex SHA-256 of the whole file at `path`; throws std::runtime_error if it cannot be read.
std::string Sha256Bytes(const std::string& bytes);  // hex digest of `bytes`

}  // namespace bisr

#endif  // BISR_NATIVE_SHA256_H_
