// bisr_native: load a bisr-deploy artifact and reconstruct a cube with the TVM runtime only (no Python).
//
// An artifact is the directory written by `bisr-deploy compile` (format "bisr-deploy-artifact" version 1,
// bisr_deploy/compile/build.py): model.so (Relax VM executable and kernels), params.npz (weights, p0000...),
// manifest.json (interface, target, size and SHA-256 of every file). Open() makes the same checks as the
// Python loader (bisr_deploy/runtime.py) before it runs any of the artifact's code: manifest format, size
// and SHA-256 of every listed file, the target's CPU architecture and features against this machine.
//
// Link against libtvm_runtime.so and libtvm_ffi.so of the TVM release that compiled the artifact (the
// apache-tvm / apache-tvm-ffi wheels for the target architecture); both must be on the library path.
#ifndef BISR_NATIVE_H_
#define BISR_NATIVE_H_

#ifdef __cplusplus
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "npy.h"

namespace bisr {

struct TensorSpec {
  std::string name;            // "measurement", "mask", "cube"
  std::vector<int64_t> shape;  // float32, C order, with the leading batch dimension 1
};

class Artifact {
 public:
  // Verifies and loads the artifact in `dir`; throws std::runtime_error with a one-line message.
  static Artifact Open(const std::string& dir);

  const std::vector<TensorSpec>& inputs() const;  // measurement [1, H, W+54], then mask [1, H, W] (sim mode)
  const TensorSpec& output() const;               // cube [1, 28, H, W]

  // Reconstructs one cube. `inputs` in inputs() order, each of its spec's shape with or without the leading
  // batch dimension, finite values. Returns the cube without the batch dimension: [28, H, W].
  FloatArray Run(const std::vector<FloatArray>& inputs) const;

  Artifact(Artifact&&) noexcept;
  Artifact& operator=(Artifact&&) noexcept;
  ~Artifact();

 private:
  struct Impl;
  explicit Artifact(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace bisr

extern "C" {
#endif  // __cplusplus

// C interface, for JNI and other FFIs. Functions returning int give 0 on success and -1 on error; then
// bisr_last_error() holds the message (thread-local, valid until the next failing call on that thread).
typedef struct bisr_artifact bisr_artifact;
bisr_artifact* bisr_open(const char* dir);  // NULL on error
int bisr_num_inputs(const bisr_artifact* artifact);
// Element count of input `index` (0: measurement, 1: mask), or of the output cube when index == -1.
long bisr_numel(const bisr_artifact* artifact, int index);
// inputs[i] points to bisr_numel(artifact, i) floats (C order); output to bisr_numel(artifact, -1) floats.
int bisr_run(const bisr_artifact* artifact, const float* const* inputs, float* output);
void bisr_close(bisr_artifact* artifact);
const char* bisr_last_error(void);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // BISR_NATIVE_H_
