// JNI glue of org.bisr.BisrNative over the C interface of bisr_native.h.
#include <jni.h>

#include <vector>

#include "../bisr_native.h"

namespace {

void Throw(JNIEnv* env, const char* message) {
  env->ThrowNew(env->FindClass("java/lang/IllegalStateException"), message);
}

}  // namespace

extern "C" JNIEXPORT jlong JNICALL Java_org_bisr_BisrNative_open(JNIEnv* env, jclass, jstring dir) {
  const char* path = env->GetStringUTFChars(dir, nullptr);
  bisr_artifact* artifact = bisr_open(path);
  env->ReleaseStringUTFChars(dir, path);
  if (artifact == nullptr) Throw(env, bisr_last_error());
  return reinterpret_cast<jlong>(artifact);
}

extern "C" JNIEXPORT jfloatArray JNICALL Java_org_bisr_BisrNative_run(JNIEnv* env, jclass, jlong handle,
                                                                      jfloatArray measurement, jfloatArray mask) {
  auto* artifact = reinterpret_cast<bisr_artifact*>(handle);
  const jfloatArray arrays[2] = {measurement, mask};
  const int n = bisr_num_inputs(artifact);
  std::vector<std::vector<float>> inputs(n);
  std::vector<const float*> pointers(n);
  for (int i = 0; i < n; ++i) {
    const long numel = bisr_numel(artifact, i);
    if (arrays[i] == nullptr || env->GetArrayLength(arrays[i]) != numel) {
      Throw(env, i == 0 ? "the measurement has the wrong size" : "the mask has the wrong size");
      return nullptr;
    }
    inputs[i].resize(numel);
    env->GetFloatArrayRegion(arrays[i], 0, static_cast<jsize>(numel), inputs[i].data());
    pointers[i] = inputs[i].data();
  }
  std::vector<float> cube(bisr_numel(artifact, -1));
  if (bisr_run(artifact, pointers.data(), cube.data()) != 0) {
    Throw(env, bisr_last_error());
    return nullptr;
  }
  jfloatArray out = env->NewFloatArray(static_cast<jsize>(cube.size()));
  if (out != nullptr) env->SetFloatArrayRegion(out, 0, static_cast<jsize>(cube.size()), cube.data());
  return out;
}

extern "C" JNIEXPORT void JNICALL Java_org_bisr_BisrNative_close(JNIEnv*, jclass, jlong handle) {
  bisr_close(reinterpret_cast<bisr_artifact*>(handle));
}
