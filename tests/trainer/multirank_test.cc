// The same program on 1 or N ranks (run alone and under mpirun -np 2, tests/trainer/trainer.cmake): fit() under the
// mirrored and fully sharded strategies gives the history of one rank training on the whole global batch (uneven
// splits included), and every rank reports bit-identical numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

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

// ModelCheckpoint under the mirrored strategy: every rank writes its share of a sharded checkpoint; a fit stopped
// after epoch 1 and resumed by a new Trainer gives the history and weights of an uninterrupted fit, on every rank.
TEST(TrainerMultiRank, MirroredCheckpointResumeMatchesUninterrupted) {
  auto g = world_group();
  const std::string root = std::string(LOOM_BINARY_DIR) + "/tests_tmp/trainer_mr_resume_np" + std::to_string(g->size());
  if (g->rank() == 0) std::filesystem::remove_all(root);
  g->barrier()->wait();
  auto train = clusters(100, 5), val = clusters(31, 6);
  auto fit = [&](uint64_t seed, const std::string& dir, int64_t stop_after, std::vector<Tensor>* weights) {
    manual_seed(seed);
    Generator init(seed);
    Trainer t(std::make_shared<TinyNet>(init), Strategy::mirrored());
    CompileOptions c;
    c.optimizer = adamw({.lr = 0.02});
    c.schedule = warmup_cosine(0.02, 0.002, 2);
    c.metrics = {accuracy()};
    t.compile(c);
    auto stop = std::make_shared<LambdaCallback>();
    stop->epoch_end = [&](int64_t e, Logs&) { t.stop_training = e == stop_after; };
    FitOptions f;
    f.batch_size = 15;
    f.verbose = 0;
    History h = t.fit(train, 4, &val, {std::make_shared<ModelCheckpoint>(dir), stop}, f);
    if (weights) *weights = t.get_weights();
    return h;
  };
  std::vector<Tensor> wa, wc;
  History ha = fit(21, root + "/a", -1, &wa);
  History hb = fit(21, root + "/b", 1, nullptr);
  EXPECT_EQ(hb.epoch.size(), 2u);
  History hc = fit(77, root + "/b", -1, &wc);
  EXPECT_EQ(hc.epoch, ha.epoch);
  for (auto& [k, v] : ha.history) EXPECT_EQ(hc[k], v) << k;
  ASSERT_EQ(wa.size(), wc.size());
  for (size_t i = 0; i < wa.size(); ++i)
    EXPECT_EQ(std::memcmp(wa[i].data_ptr(), wc[i].data_ptr(), wa[i].nbytes()), 0) << "tensor " << i;
  expect_same_on_every_rank(hc, "resumed");
}
