// gtest main of test_parallel and test_checkpoint_mp: every rank runs the same tests in the same
// order (they make collective calls), then the world group is torn down.
#include <gtest/gtest.h>

#include "tests/parallel/harness.h"

namespace loom::ptest {
void shutdown_world();
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  loom::ptest::world();  // connect before any test so a bad launch fails here
  int rc = RUN_ALL_TESTS();
  loom::ptest::world()->barrier()->wait();
  loom::ptest::shutdown_world();
  return rc;
}
