#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "checkpoint/safetensors.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;
using namespace loom;

namespace {
std::string temp_path(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("loom_st_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}
}  // namespace

TEST(Safetensors, RoundTripAllDtypesAndNonContiguous) {
  std::string path = temp_path("rt.safetensors");
  Tensor a = ops::transpose(from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}), 0, 1);  // (3, 2) view
  Tensor b = from_vector<double>({0.5, -1.25}, {2});
  Tensor c = from_vector<int64_t>({7, 8, 9}, {3, 1});
  Tensor d = ops::to(from_vector<float>({1.5f, -2.0f}, {2}), DType::bf16);
  Tensor e = from_vector<uint8_t>({1, 0, 1}, {3});
  checkpoint::save_safetensors(path, {{"a", a}, {"b", b}, {"c", c}, {"d", d}, {"e", e}}, {{"format", "pt"}});
  auto f = checkpoint::load_safetensors(path);
  ASSERT_EQ(f.tensors.size(), 5u);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.at("a").sizes(), (Shape{3, 2}));
  EXPECT_EQ(f.at("a").to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(f.at("b").to_vector<double>(), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(f.at("c").dtype(), DType::i64);
  EXPECT_EQ(f.at("d").dtype(), DType::bf16);
  EXPECT_EQ(f.at("d").to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.at("e").to_vector<uint8_t>(), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(Safetensors, TruncatedFileIsAnErrorNamingTheFile) {
  std::string path = temp_path("trunc.safetensors");
  checkpoint::save_safetensors(path, {{"w", ops::ones({64, 64})}});
  fs::resize_file(path, fs::file_size(path) - 100);
  try {
    checkpoint::load_safetensors(path);
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  }
}

TEST(Safetensors, GarbageHeaderIsAnIoError) {
  std::string path = temp_path("garbage.safetensors");
  std::ofstream(path, std::ios::binary) << "\x10\0\0\0\0\0\0\0{not json at all";
  EXPECT_THROW(checkpoint::load_safetensors(path), IoError);
  EXPECT_THROW(checkpoint::load_safetensors(temp_path("missing.safetensors")), IoError);
}

TEST(Safetensors, DuplicateNamesAreRejected) {
  std::string path = temp_path("dup.safetensors");
  EXPECT_THROW(checkpoint::save_safetensors(path, {{"x", ops::ones({1})}, {"x", ops::ones({1})}}), InvalidArgument);
}

TEST(Safetensors, PythonReadsTheFile) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "Debian's python3-numpy is not installed (scripts/setup.sh installs it)";
  std::string path = temp_path("py.safetensors");
  checkpoint::save_safetensors(path, {{"m", from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})}});
  std::string script =
      "import json,struct,numpy as np,sys\n"
      "b=open(sys.argv[1],'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n])\n"
      "e=h['m']; s,t=e['data_offsets']; a=np.frombuffer(b[8+n+s:8+n+t],dtype=np.float32).reshape(e['shape'])\n"
      "assert e['dtype']=='F32' and a.shape==(2,3) and a[1,2]==6.0, (e, a)\n";
  std::string py = temp_path("check.py");
  std::ofstream(py) << script;
  EXPECT_EQ(std::system(("/usr/bin/python3 " + py + " " + path).c_str()), 0);
}
