// The same program on 1 or N ranks (run alone and under mpirun -np 2, tests/trainer/trainer.cmake): fit() under the
// mirrored and fully sharded strategies gives the history of one rank training on the whole global batch (uneven
// splits included), and every rank reports bit-identical numbers.
#include <gtest/gtest.h>

#include <cmath>

#include "test_model.h"
#include "trainer/trainer.h"

using namespace loom;
using namespace loom::trainer;
using loom::trainer_test::clusters;
using loom::trainer_test::TinyNet;

namespace {

History run(Strategy s) {
  manual_seed(21);
  Generator init(21);
  auto model = std::make_shared<TinyNet>(init);
  Trainer t(model, std::move(s));
  CompileOptions c;
  nn::AdamWOptions o;
  o.lr = 0.02;
  c.optimizer = adamw(o);
  c.schedule = warmup_cosine(0.02, 0.002, 2);
  c.clip_grad_norm = 0.5;
  c.metrics = {accuracy(), top_k_accuracy(2)};
  t.compile(c);
  FitOptions f;
  f.batch_size = 15;  // 2 ranks: 8 + 7 rows
  f.verbose = 0;
  auto train = clusters(100, 5), val = clusters(31, 6);
  return t.fit(train, 3, &val, {}, f);
}

/// Every rank's values equal rank 0's, bit for bit.
void expect_same_on_every_rank(const History& h, const char* what) {
  auto g = world_group();
  std::vector<double> v;
  for (auto& [k, vals] : h.history) v.insert(v.end(), vals.begin(), vals.end());
  Tensor mine = from_vector(v, {static_cast<int64_t>(v.size())});
  Tensor root = ops::clone(mine);
  g->broadcast(root)->wait();
  EXPECT_EQ(std::memcmp(mine.data_ptr(), root.data_ptr(), mine.nbytes()), 0)
      << what << ": rank " << g->rank() << " reports other numbers than rank 0";
}

void expect_matches(const History& ref, const History& h, const char* what) {
  ASSERT_EQ(h.epoch, ref.epoch) << what;
  for (auto& [k, vals] : ref.history) {
    const auto& got = h[k];
    ASSERT_EQ(got.size(), vals.size()) << what << " " << k;
    for (size_t e = 0; e < vals.size(); ++e) {
      // Accuracies may differ by one borderline sample; losses by summation order.
      const double tol =
          k.find("acc") != std::string::npos ? 1.0 / 31 + 1e-9 : 1e-3 * std::max(1.0, std::fabs(vals[e]));
      EXPECT_NEAR(got[e], vals[e], tol) << what << ": " << k << " at epoch " << e;
    }
  }
}

}  // namespace

TEST(TrainerMultiRank, MirroredMatchesOneRankAndEveryRankReportsTheSame) {
  History ref = run(Strategy::single_device());
  History h = run(Strategy::mirrored());
  expect_matches(ref, h, "mirrored");
  expect_same_on_every_rank(h, "mirrored");
  EXPECT_LT(h["loss"].back(), h["loss"].front());
}

TEST(TrainerMultiRank, FullyShardedMatchesOneRankAndEveryRankReportsTheSame) {
  History ref = run(Strategy::single_device());
  History h = run(Strategy::fully_sharded());
  expect_matches(ref, h, "fully_sharded");
  expect_same_on_every_rank(h, "fully_sharded");
}
