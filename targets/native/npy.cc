#include "npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace bisr {
namespace {

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(message); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path + ": cannot open");
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// The value text of `key` in the .npy header dict ({'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }).
std::string HeaderField(const std::string& header, const std::string& key, const std::string& what) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) Fail(what + ": .npy header has no '" + key + "'");
  at = header.find(':', at);
  size_t start = header.find_first_not_of(' ', at + 1);
  size_t end = header[start] == '(' ? header.find(')', start) + 1 : header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

uint64_t Le(const std::string& bytes, size_t at, int width, const std::string& what) {
  if (at + width > bytes.size()) Fail(what + ": truncated");
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[at + i]);
  return value;
}

// Column-major element order (numpy's fortran_order) -> row-major, elements of `width` bytes.
std::vector<uint8_t> FortranToC(const std::vector<uint8_t>& data, const std::vector<int64_t>& shape, size_t width) {
  std::vector<uint8_t> out(data.size());
  std::vector<int64_t> index(shape.size(), 0);  // C-order multi-index of element i
  const size_t n = data.size() / width;
  for (size_t i = 0; i < n; ++i) {
    size_t source = 0, stride = 1;  // its Fortran-order offset: first axis fastest
    for (size_t k = 0; k < shape.size(); ++k) {
      source += static_cast<size_t>(index[k]) * stride;
      stride *= static_cast<size_t>(shape[k]);
    }
    std::memcpy(&out[i * width], &data[source * width], width);
    for (size_t k = shape.size(); k-- > 0;) {  // next C-order index: last axis fastest
      if (++index[k] < shape[k]) break;
      index[k] = 0;
    }
  }
  return out;
}

}  // namespace

size_t Numel(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

NpyArray ParseNpy(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) Fail(what + ": not a .npy file");
  const int len_width = bytes[6] == 1 ? 2 : 4;
  const size_t header_len = Le(bytes, 8, len_width, what);
  const size_t data_at = 8 + len_width + header_len;
  if (data_at > bytes.size()) Fail(what + ": truncated .npy header");
  const std::string header = bytes.substr(8 + len_width, header_len);

  const std::string descr = HeaderField(header, "descr", what);  // e.g. '<f4', '|u1'
  NpyArray out;
  if (descr.size() != 5 || (descr[1] != '<' && descr[1] != '|') || std::string("fiu").find(descr[2]) == std::string::npos) {
    Fail(what + ": dtype " + descr + " is not supported (little-endian float or integer only)");
  }
  out.kind = descr[2];
  out.bits = 8 * (descr[3] - '0');
  const std::string fortran = HeaderField(header, "fortran_order", what);
  if (fortran != "False" && fortran != "True") Fail(what + ": bad fortran_order " + fortran + " in the .npy header");
  const std::string shape = HeaderField(header, "shape", what);
  std::stringstream dims(shape.substr(1, shape.size() - 2));
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    if (dim.find_first_not_of(' ') != std::string::npos) out.shape.push_back(std::stoll(dim));
  }
  const size_t nbytes = Numel(out.shape) * out.bits / 8;
  if (bytes.size() - data_at != nbytes) Fail(what + ": data size does not match its .npy header");
  out.data.assign(bytes.begin() + data_at, bytes.end());
  if (fortran == "True") out.data = FortranToC(out.data, out.shape, out.bits / 8);
  return out;
}

NpyArray LoadNpy(const std::string& path) { return ParseNpy(ReadFile(path), path); }

std::vector<std::pair<std::string, NpyArray>> ParseNpz(const std::string& zip, const std::string& path) {
  const size_t eocd = zip.rfind(std::string("PK\x05\x06", 4));
  if (eocd == std::string::npos || zip.size() - eocd < 22) Fail(path + ": not a zip (.npz) file");
  const size_t count = Le(zip, eocd + 10, 2, path);
  size_t entry = Le(zip, eocd + 16, 4, path);  // central directory
  std::vector<std::pair<std::string, NpyArray>> members;
  for (size_t i = 0; i < count; ++i) {
    if (Le(zip, entry, 4, path) != 0x02014b50) Fail(path + ": corrupt zip central directory");
    const uint64_t method = Le(zip, entry + 10, 2, path);
    uint64_t size = Le(zip, entry + 24, 4, path);
    const size_t name_len = Le(zip, entry + 28, 2, path), extra_len = Le(zip, entry + 30, 2, path);
    const size_t comment_len = Le(zip, entry + 32, 2, path);
    uint64_t offset = Le(zip, entry + 42, 4, path);
    std::string name = zip.substr(entry + 46, name_len);
    // Zip64 extra field (id 1): the 64-bit sizes/offset that are 0xFFFFFFFF above, in this order.
    for (size_t at = entry + 46 + name_len; at + 4 <= entry + 46 + name_len + extra_len;) {
      const uint64_t id = Le(zip, at, 2, path), len = Le(zip, at + 2, 2, path);
      if (id == 1) {
        size_t field = at + 4;
        if (size == 0xFFFFFFFF) { size = Le(zip, field, 8, path); field += 8; }
        if (Le(zip, entry + 20, 4, path) == 0xFFFFFFFF) field += 8;  // compressed size
        if (offset == 0xFFFFFFFF) offset = Le(zip, field, 8, path);
      }
      at += 4 + len;
    }
    if (method != 0) Fail(path + ": member " + name + " is compressed; write parameters with np.savez");
    if (Le(zip, offset, 4, path) != 0x04034b50) Fail(path + ": corrupt zip local header");
    const size_t data_at = offset + 30 + Le(zip, offset + 26, 2, path) + Le(zip, offset + 28, 2, path);
    if (data_at + size > zip.size()) Fail(path + ": truncated member " + name);
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    members.emplace_back(name, ParseNpy(zip.substr(data_at, size), path + ":" + name));
    entry += 46 + name_len + extra_len + comment_len;
  }
  return members;
}

FloatArray ToFloat32(const NpyArray& array, const std::string& what) {
  FloatArray out;
  out.shape = array.shape;
  out.data.resize(Numel(array.shape));
  if (array.kind == 'f' && array.bits == 32) {
    std::memcpy(out.data.data(), array.data.data(), array.data.size());
  } else if (array.kind == 'f' && array.bits == 64) {
    const double* wide = reinterpret_cast<const double*>(array.data.data());
    for (size_t i = 0; i < out.data.size(); ++i) out.data[i] = static_cast<float>(wide[i]);
  } else {
    Fail(what + ": dtype is not float32 or float64");
  }
  return out;
}

void SaveNpy(const std::string& path, const FloatArray& array) {
  std::string shape = "(";
  for (size_t i = 0; i < array.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(array.shape[i]);
  shape += array.shape.size() == 1 ? ",)" : ")";  // Python tuple syntax: (), (5,), (2, 3)
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header.push_back('\n');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) Fail(path + ": cannot write");
    const unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                        static_cast<unsigned char>(header.size() & 0xff),
                                        static_cast<unsigned char>(header.size() >> 8)};
    out.write(reinterpret_cast<const char*>(preamble), 10);
    out.write(header.data(), header.size());
    out.write(reinterpret_cast<const char*>(array.data.data()), array.data.size() * sizeof(float));
    if (!out.flush()) {
      std::remove(tmp.c_str());
      Fail(path + ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    Fail(path + ": cannot rename the temporary file into place");
  }
}

}  // namespace bisr
