// bisr_run: the command-line example of bisr_native.
//
//   bisr_run ARTIFACT_DIR MEASUREMENT.npy [MASK.npy] OUTPUT.npy
//
// Verifies the artifact (manifest, size and SHA-256 of every file, CPU architecture and features), reconstructs
// the cube from the snapshot [H, W+54] (and the mask [H, W] for simulation-mode artifacts), float32 or float64
// .npy, and writes it as float32 .npy [28, H, W]. Errors: one line "error: ..." on stderr, exit status 2, and no
// output file.
#include <cstdio>
#include <exception>
#include <vector>

#include "bisr_native.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s ARTIFACT_DIR MEASUREMENT.npy [MASK.npy] OUTPUT.npy\n", argv[0]);
    return 2;
  }
  try {
    bisr::Artifact artifact = bisr::Artifact::Open(argv[1]);
    std::vector<bisr::FloatArray> inputs;
    for (int i = 2; i < argc - 1; ++i) inputs.push_back(bisr::ToFloat32(bisr::LoadNpy(argv[i]), argv[i]));
    bisr::SaveNpy(argv[argc - 1], artifact.Run(inputs));
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 2;
  }
  return 0;
}
