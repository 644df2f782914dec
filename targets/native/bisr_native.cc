#include "bisr_native.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "sha256.h"

namespace bisr {
namespace {

namespace ffi = tvm::ffi;
using JsonObject = ffi::Map<ffi::Any, ffi::Any>;
using JsonArray = ffi::Array<ffi::Any>;

// The artifact format: this loader mirrors bisr_deploy/artifact.py (read_manifest, verify_files, read_params);
// a change there is a change here (tests/test_layout.py checks that these constants agree).
constexpr const char* kFormat = "bisr-deploy-artifact";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kLibrary = "model.so";
constexpr const char* kParams = "params.npz";
constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR

#if defined(__aarch64__)
constexpr const char* kMachine = "aarch64";
#elif defined(__x86_64__)
constexpr const char* kMachine = "x86_64";
#else
#error "bisr_native supports aarch64 and x86_64"
#endif

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(message); }

// This CPU's instruction-set features, named as Linux's /proc/cpuinfo names them (bisr_deploy.compile.targets).
std::set<std::string> HostCpuFeatures() {
  std::set<std::string> features;
#if defined(__aarch64__)
  // AT_HWCAP, not /proc/cpuinfo: also right under qemu-user, which shows the host's /proc/cpuinfo.
  static const char* kHwcap[] = {"fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
                                 "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3",
                                 "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat", "ilrcpc",
                                 "flagm", "ssbs", "sb", "paca", "pacg"};
  const unsigned long hwcap = getauxval(AT_HWCAP);
  for (size_t bit = 0; bit < sizeof(kHwcap) / sizeof(kHwcap[0]); ++bit) {
    if (hwcap >> bit & 1UL) features.insert(kHwcap[bit]);
  }
#else
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::stringstream words(line.substr(line.find(':') + 1));
      for (std::string flag; words >> flag;) features.insert(flag);
      break;
    }
  }
#endif
  return features;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path + ": cannot open");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class Json {  // typed access to a parsed manifest object; errors name the manifest and the key
 public:
  Json(JsonObject obj, std::string where) : obj_(std::move(obj)), where_(std::move(where)) {}

  template <typename T>
  T Get(const char* key) const {
    auto it = obj_.find(ffi::String(key));
    if (it == obj_.end()) Fail(where_ + ": manifest lacks \"" + key + "\"");
    std::optional<T> value = (*it).second.try_cast<T>();
    if (!value) Fail(where_ + ": \"" + key + "\" has the wrong type");
    return *value;
  }
  std::string Str(const char* key) const { return std::string(Get<ffi::String>(key)); }
  Json Obj(const char* key) const { return Json(Get<JsonObject>(key), where_); }
  const JsonObject& raw() const { return obj_; }

 private:
  JsonObject obj_;
  std::string where_;
};

TensorSpec ParseSpec(const Json& entry) {
  TensorSpec spec;
  spec.name = entry.Str("name");
  if (entry.Str("dtype") != "float32") Fail("manifest.json: tensor " + spec.name + " is not float32");
  for (const ffi::Any& dim : entry.Get<JsonArray>("shape")) spec.shape.push_back(dim.cast<int64_t>());
  return spec;
}

struct CpuAlloc {  // 64-byte aligned host memory for tensors made here
  void AllocData(DLTensor* tensor) {
    size_t bytes = (ffi::GetDataSize(*tensor) + 63) / 64 * 64;
    tensor->data = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor MakeTensor(const std::vector<int64_t>& shape, DLDataType dtype, const void* data, size_t nbytes) {
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype,
                                                DLDevice{kDLCPU, 0});
  std::memcpy(tensor.data_ptr(), data, nbytes);
  return tensor;
}

// Loads the shared library whose verified bytes are `bytes` from a private copy: a new directory of mode 0700
// under $TMPDIR (default /tmp) that only this user can write, removed again once the library is mapped. What
// runs is what was hashed, whatever happens to the artifact directory meanwhile.
ffi::Module LoadVerifiedLibrary(const std::string& bytes, const std::string& what) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string dir = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/bisr-artifact-XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    Fail(what + ": cannot create a private directory in " + (tmpdir && *tmpdir ? tmpdir : "/tmp") +
         " to load it from (set TMPDIR to a writable directory)");
  }
  const std::string path = dir + "/" + kLibrary;
  struct Cleanup {
    std::string dir, path;
    ~Cleanup() {
      ::unlink(path.c_str());
      ::rmdir(dir.c_str());
    }
  } cleanup{dir, path};
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) Fail(what + ": cannot write its private copy " + path);
  }
  return ffi::Module::LoadFromFile(path);
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t d : shape) text += (text.empty() ? "" : " x ") + std::to_string(d);
  return text;
}

}  // namespace

struct Artifact::Impl {
  std::mutex run_mutex;  // the Relax VM keeps per-call state: one Run at a time per artifact
  std::vector<TensorSpec> inputs;
  TensorSpec output;
  std::vector<ffi::Tensor> params;
  ffi::Optional<ffi::Module> library;  // keeps the kernels of `vm` loaded
  ffi::Optional<ffi::Module> vm;
  ffi::Optional<ffi::Function> main;
};

Artifact::Artifact(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Artifact::Artifact(Artifact&&) noexcept = default;
Artifact& Artifact::operator=(Artifact&&) noexcept = default;
Artifact::~Artifact() = default;

const std::vector<TensorSpec>& Artifact::inputs() const { return impl_->inputs; }
const TensorSpec& Artifact::output() const { return impl_->output; }

Artifact Artifact::Open(const std::string& dir_arg) {
  char* resolved = ::realpath(dir_arg.c_str(), nullptr);  // dlopen needs a path, not a bare name
  if (resolved == nullptr) Fail(dir_arg + ": no such artifact directory");
  const std::string dir(resolved);
  std::free(resolved);
  const std::string manifest_path = dir + "/manifest.json";

  ffi::String error;
  ffi::Any parsed = ffi::json::Parse(ffi::String(ReadText(manifest_path)), &error);
  std::optional<JsonObject> root = parsed.try_cast<JsonObject>();
  if (!error.empty() || !root) Fail(manifest_path + ": unreadable or corrupt manifest");
  const Json manifest(*root, manifest_path);
  auto format = root->find(ffi::String("format"));
  if (format == root->end() || (*format).second.try_cast<ffi::String>().value_or("") != kFormat) {
    Fail(manifest_path + ": not a " + kFormat + " manifest");
  }
  if (manifest.Get<int64_t>("format_version") != kFormatVersion) {
    Fail(manifest_path + ": artifact format version " + std::to_string(manifest.Get<int64_t>("format_version")) +
         " is not supported (expected " + std::to_string(kFormatVersion) + ")");
  }

  // Integrity: every listed file has its recorded size and SHA-256; model.so and params.npz are listed. The
  // bytes checked here are the bytes used below (read once into memory), never the files a second time.
  const Json files = manifest.Obj("files");
  for (const char* needed : {kLibrary, kParams}) {
    if (files.raw().find(ffi::String(needed)) == files.raw().end()) Fail(dir + ": manifest does not list " + needed);
  }
  std::map<std::string, std::string> verified;
  for (const auto& [name_any, record_any] : files.raw()) {
    const std::string name(name_any.cast<ffi::String>());
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." || name == "manifest.json") {
      Fail(dir + ": manifest lists " + name + ", which is not a file of the artifact directory");
    }
    std::optional<JsonObject> record_obj = record_any.try_cast<JsonObject>();
    if (!record_obj) Fail(manifest_path + ": malformed manifest: the files entry " + name + " is not a record");
    const Json record(*record_obj, manifest_path);
    const std::string path = dir + "/" + name;
    std::ifstream probe(path, std::ios::binary | std::ios::ate);
    if (!probe) Fail(dir + ": missing artifact file " + name);
    const int64_t expected = record.Get<int64_t>("bytes");
    if (static_cast<int64_t>(probe.tellg()) != expected) Fail(path + ": size differs from the manifest (truncated or replaced)");
    probe.close();
    std::string bytes = ReadText(path);
    if (static_cast<int64_t>(bytes.size()) != expected) Fail(path + ": size differs from the manifest (truncated or replaced)");
    if (Sha256Bytes(bytes) != record.Str("sha256")) Fail(path + ": sha256 does not match the manifest (the file was modified)");
    verified[name] = std::move(bytes);
  }

  // Target: this machine's architecture and CPU features.
  const Json target = manifest.Obj("target");
  const std::string triple = target.Str("triple");
  if (triple.substr(0, triple.find('-')) != kMachine) {
    Fail(dir + " was compiled for " + triple + ", this loader runs on " + kMachine);
  }
  const std::set<std::string> host = HostCpuFeatures();
  std::string missing;
  for (const ffi::Any& feature : target.Get<JsonArray>("required_cpu_features")) {
    std::string name(feature.cast<ffi::String>());
    if (!host.count(name)) missing += (missing.empty() ? "" : ", ") + name;
  }
  if (!missing.empty()) Fail(dir + " needs CPU features this machine lacks: " + missing);

  auto impl = std::make_unique<Impl>();
  for (const ffi::Any& entry : manifest.Get<JsonArray>("inputs")) {
    impl->inputs.push_back(ParseSpec(Json(entry.cast<JsonObject>(), manifest_path)));
  }
  impl->output = ParseSpec(manifest.Obj("output"));
  if (impl->output.shape.empty() || impl->output.shape[0] != 1) Fail(manifest_path + ": output must have batch 1");

  // Parameters: params.npz members p0000, p0001, ... in the order of manifest "params".
  const size_t n_params = manifest.Get<JsonArray>("params").size();
  std::vector<std::pair<std::string, NpyArray>> npz = ParseNpz(verified[kParams], dir + "/" + kParams);
  verified[kParams].clear();
  for (size_t i = 0; i < n_params; ++i) {
    char key[16];
    std::snprintf(key, sizeof(key), "p%04zu", i);
    auto it = std::find_if(npz.begin(), npz.end(), [&](const auto& member) { return member.first == key; });
    if (it == npz.end()) Fail(dir + "/" + kParams + ": no parameter " + key);
    const NpyArray& array = it->second;
    DLDataType dtype{static_cast<uint8_t>(array.kind == 'f' ? kDLFloat : array.kind == 'i' ? kDLInt : kDLUInt),
                     static_cast<uint8_t>(array.bits), 1};
    impl->params.push_back(MakeTensor(array.shape, dtype, array.data.data(), array.data.size()));
  }

  try {
    impl->library = LoadVerifiedLibrary(verified[kLibrary], dir + "/" + kLibrary);
    ffi::Optional<ffi::Function> load = (*impl->library)->GetFunction("vm_load_executable");
    if (!load) Fail(dir + "/" + kLibrary + ": not a Relax VM executable");
    impl->vm = (*load)().cast<ffi::Module>();
    (*impl->vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    impl->main = (*impl->vm)->GetFunction("main");
    if (!impl->main) Fail(dir + "/" + kLibrary + ": no function main");
  } catch (const ffi::Error& err) {
    Fail(dir + "/" + kLibrary + ": cannot load the compiled library (" + err.message() + ")");
  }
  return Artifact(std::move(impl));
}

FloatArray Artifact::Run(const std::vector<FloatArray>& inputs) const {
  if (inputs.size() != impl_->inputs.size()) {
    Fail("this artifact takes " + std::to_string(impl_->inputs.size()) + " inputs (measurement" +
         (impl_->inputs.size() > 1 ? ", mask)" : ")") + ", got " + std::to_string(inputs.size()));
  }
  std::vector<ffi::Any> args;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& spec = impl_->inputs[i];
    const std::vector<int64_t> unbatched(spec.shape.begin() + 1, spec.shape.end());
    if (inputs[i].shape != spec.shape && inputs[i].shape != unbatched) {
      Fail("the " + spec.name + " must be " + ShapeText(unbatched) + ", got " + ShapeText(inputs[i].shape));
    }
    for (float v : inputs[i].data) {
      if (!std::isfinite(v)) Fail("the " + spec.name + " contains NaN or Inf values");
    }
    args.emplace_back(MakeTensor(spec.shape, DLDataType{kDLFloat, 32, 1}, inputs[i].data.data(),
                                 inputs[i].data.size() * sizeof(float)));
  }
  for (const ffi::Tensor& param : impl_->params) args.emplace_back(param);

  ffi::Any result;
  std::lock_guard<std::mutex> lock(impl_->run_mutex);
  try {
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    impl_->main->CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
  } catch (const ffi::Error& err) {
    Fail("the artifact failed: " + err.message());
  }
  std::optional<ffi::Tensor> out = result.try_cast<ffi::Tensor>();
  if (!out) Fail("the artifact returned something other than one tensor");
  const std::vector<int64_t> shape(out->shape().begin(), out->shape().end());
  const DLDataType dtype = out->dtype();
  if (shape != impl_->output.shape || dtype.code != kDLFloat || dtype.bits != 32 || !out->IsContiguous()) {
    Fail("the artifact's output is not the float32 " + ShapeText(impl_->output.shape) + " of its manifest");
  }
  FloatArray cube;
  cube.shape.assign(shape.begin() + 1, shape.end());
  cube.data.resize(Numel(cube.shape));
  std::memcpy(cube.data.data(), out->data_ptr(), cube.data.size() * sizeof(float));
  return cube;
}

}  // namespace bisr

// ---- C interface ----

struct bisr_artifact {
  bisr::Artifact artifact;
};

namespace {
thread_local std::string last_error;

template <typename F>
int Guard(F body) {
  try {
    body();
    return 0;
  } catch (const std::exception& err) {
    last_error = err.what();
    return -1;
  }
}
}  // namespace

extern "C" {

bisr_artifact* bisr_open(const char* dir) {
  bisr_artifact* handle = nullptr;
  Guard([&] { handle = new bisr_artifact{bisr::Artifact::Open(dir)}; });
  return handle;
}

int bisr_num_inputs(const bisr_artifact* artifact) { return static_cast<int>(artifact->artifact.inputs().size()); }

long bisr_numel(const bisr_artifact* artifact, int index) {
  const bisr::TensorSpec& spec = index < 0 ? artifact->artifact.output() : artifact->artifact.inputs().at(index);
  return static_cast<long>(bisr::Numel(spec.shape));
}

int bisr_run(const bisr_artifact* artifact, const float* const* inputs, float* output) {
  return Guard([&] {
    std::vector<bisr::FloatArray> arrays;
    for (const bisr::TensorSpec& spec : artifact->artifact.inputs()) {
      const float* data = inputs[arrays.size()];
      arrays.push_back({spec.shape, std::vector<float>(data, data + bisr::Numel(spec.shape))});
    }
    bisr::FloatArray cube = artifact->artifact.Run(arrays);
    std::memcpy(output, cube.data.data(), cube.data.size() * sizeof(float));
  });
}

void bisr_close(bisr_artifact* artifact) { delete artifact; }

const char* bisr_last_error(void) { return last_error.c_str(); }

}  // extern "C"
