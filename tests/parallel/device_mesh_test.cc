// DeviceMesh: coordinates and groups follow row-major order (last dimension
// fastest), each group holds the ranks that differ along its dimension only,
// and a mesh that does not fit the world is a clear error.
#include <gtest/gtest.h>

#include "parallel/device_mesh.h"
#include "tests/parallel/harness.h"

namespace loom::parallel {
namespace {

using ptest::world;

TEST(DeviceMesh, OneDimensionCoversTheWorld) {
  DeviceMesh mesh(world(), {{"dp", world()->size()}});
  EXPECT_EQ(mesh.size("dp"), world()->size());
  EXPECT_EQ(mesh.coordinate("dp"), world()->rank());
  EXPECT_EQ(mesh.group("dp")->size(), world()->size());
  EXPECT_EQ(mesh.size("tp"), 1);  // absent dimensions have size 1
  EXPECT_FALSE(mesh.has_dim("tp"));
  EXPECT_THROW(mesh.group("tp"), InvalidArgument);
  // The group really connects the ranks: a sum over it.
  Tensor t = ops::full({1}, world()->rank() + 1.0);
  mesh.group("dp")->allreduce(t)->wait();
  const int n = world()->size();
  EXPECT_EQ(t.item<double>(), n * (n + 1) / 2.0);
}

TEST(DeviceMesh, TwoDimensionsGiveRowAndColumnGroups) {
  // tp = 2 on an even world; on one rank the same checks run on a 1 x 1 mesh.
  const int n = world()->size();
  const int tp = n % 2 == 0 ? 2 : 1, fsdp = n / tp;
  DeviceMesh mesh(world(), {{"fsdp", fsdp}, {"tp", tp}});
  const int r = world()->rank();
  EXPECT_EQ(mesh.coordinate("tp"), r % tp);
  EXPECT_EQ(mesh.coordinate("fsdp"), r / tp);
  std::vector<int> row, col;
  for (int k = 0; k < tp; ++k) row.push_back(r / tp * tp + k);
  for (int k = 0; k < fsdp; ++k) col.push_back(k * tp + r % tp);
  EXPECT_EQ(mesh.group("tp")->global_ranks(), row);
  EXPECT_EQ(mesh.group("fsdp")->global_ranks(), col);
  // Sum of world ranks along tp: the row's ranks.
  Tensor t = ops::full({1}, static_cast<double>(r));
  mesh.group("tp")->allreduce(t)->wait();
  double want = 0;
  for (int k : row) want += k;
  EXPECT_EQ(t.item<double>(), want);
  EXPECT_EQ(mesh.str(), "DeviceMesh(fsdp=" + std::to_string(fsdp) + ", tp=" + std::to_string(tp) + ")");
}

TEST(DeviceMesh, SizesThatDoNotFitTheWorldAreAnError) {
  const int n = world()->size();
  try {
    DeviceMesh mesh(world(), {{"dp", n + 1}, {"tp", 2}});
    FAIL() << "expected an error";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("needs " + std::to_string(2 * (n + 1)) + " ranks"), std::string::npos) << msg;
    EXPECT_NE(msg.find("world has " + std::to_string(n)), std::string::npos) << msg;
  }
  EXPECT_THROW(DeviceMesh(world(), {{"pp", n}}), InvalidArgument);
  EXPECT_THROW(DeviceMesh(world(), {{"dp", n}, {"dp", 1}}), InvalidArgument);
  EXPECT_THROW(DeviceMesh(world(), {{"dp", 0}}), InvalidArgument);
}

}  // namespace
}  // namespace loom::parallel
