// The recipe config: strict parsing (every error names file, line and key),
// --set overrides, the to_yaml round trip, layout resolution, and the
// parameter count and memory estimate against the real models.
#include "recipes/config.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <unistd.h>

#include "nn/gpt2.h"
#include "nn/llama.h"
#include "tensor/error.h"

using namespace loom;
using namespace loom::recipes;

namespace {

// Line numbers matter: the tests below cite them.
const char* kGpt2 =
    "model:\n"                       // 1
    "  family: gpt2\n"               // 2
    "  n_layer: 2\n"                 // 3
    "  n_embd: 64\n"                 // 4
    "  n_head: 4\n"                  // 5
    "  vocab_size: 256\n"            // 6
    "  seq_len: 32\n"                // 7
    "data:\n"                        // 8
    "  source: synthetic\n"          // 9
    "training:\n"                    // 10
    "  global_batch_tokens: 1024\n"  // 11
    "  micro_batch: 4\n"             // 12
    "  steps: 100\n"                 // 13
    "  lr: 1.0e-3\n"                 // 14
    "parallelism:\n"                 // 15
    "  backend: gloo\n"              // 16
    "checkpoint:\n"                  // 17
    "  dir: /tmp/ckpt\n"             // 18
    "logging:\n"                     // 19
    "  interval: 5\n";               // 20

/// kGpt2 with line `line` (1-based) replaced by `text` (or removed when text is empty).
std::string with_line(int line, const std::string& text) {
  std::string src = kGpt2, out;
  std::istringstream in(src);
  std::string l;
  for (int i = 1; std::getline(in, l); ++i) {
    if (i == line) {
      if (!text.empty()) out += text + "\n";
    } else {
      out += l + "\n";
    }
  }
  return out;
}

/// The ConfigError message parse_config throws (fails the test when it throws none).
std::string parse_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(text, "cfg.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError for:\n" << text;
  return "";
}

std::string layout_error(const RecipeConfig& cfg, int world) {
  try {
    resolve_layout(cfg, world);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError for world " << world;
  return "";
}

#define EXPECT_HAS(msg, part) EXPECT_NE(std::string(msg).find(part), std::string::npos) << "message: " << (msg)

}  // namespace

TEST(RecipeConfig, ValidGpt2ConfigParsesWithDefaultsFilledIn) {
  RecipeConfig c = parse_config(kGpt2, "cfg.yaml");
  EXPECT_EQ(c.source_file, "cfg.yaml");
  EXPECT_EQ(c.model.family, "gpt2");
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_EQ(c.model.n_embd, 64);
  EXPECT_EQ(c.model.n_kv_head, 4);            // defaulted to n_head
  EXPECT_EQ(c.model.intermediate_size, 256);  // GPT-2: 4 n_embd
  EXPECT_TRUE(c.model.tie_embeddings);        // GPT-2's default
  EXPECT_EQ(c.data.source, "synthetic");
  EXPECT_EQ(c.training.global_batch_tokens, 1024);
  EXPECT_DOUBLE_EQ(c.training.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.training.min_lr, 3e-5);  // struct default
  EXPECT_EQ(c.parallelism.dp, 0);
  EXPECT_EQ(c.checkpoint.dir, "/tmp/ckpt");
  EXPECT_EQ(c.logging.interval, 5);
  EXPECT_EQ(c.origins.at("model.n_embd"), "cfg.yaml:4");
  EXPECT_EQ(c.origins.at("training"), "cfg.yaml:10");
}

TEST(RecipeConfig, LlamaDefaultsFollowTheFamily) {
  std::string text = kGpt2;
  text.replace(text.find("gpt2"), 4, "llama");
  text.replace(text.find("  n_head: 4\n"), 12, "  n_head: 4\n  n_kv_head: 2\n");
  RecipeConfig c = parse_config(text, "llama.yaml");
  EXPECT_EQ(c.model.n_kv_head, 2);
  EXPECT_EQ(c.model.intermediate_size, 256);  // 8/3 * 64 = 170 -> rounded up to a multiple of 256
  EXPECT_FALSE(c.model.tie_embeddings);       // Llama's default
  RecipeConfig big = parse_config(text, "llama.yaml", {"model.n_embd=4096", "model.n_head=32", "model.n_kv_head=8"});
  EXPECT_EQ(big.model.intermediate_size, 11008);  // Llama-2-7B's
}

TEST(RecipeConfig, UnknownKeyNamesFileLineKeyAndSuggestion) {
  const std::string msg = parse_error(with_line(3, "  n_layr: 2"));
  EXPECT_HAS(msg, "cfg.yaml:3: model.n_layr: unknown key; did you mean 'n_layer'?");
}

TEST(RecipeConfig, UnknownKeyFromAnotherSectionNamesItsSection) {
  const std::string msg = parse_error(with_line(7, "  seq_len: 32\n  lr: 0.1"));
  EXPECT_HAS(msg, "cfg.yaml:8: model.lr: unknown key");
  EXPECT_HAS(msg, "'training.lr'");
}

TEST(RecipeConfig, UnknownKeyFarFromAnyListsTheKeys) {
  const std::string msg = parse_error(with_line(20, "  zzzzzzzzzz: 5"));
  EXPECT_HAS(msg, "cfg.yaml:20: logging.zzzzzzzzzz: unknown key; the keys of 'logging' are 'interval'");
}

TEST(RecipeConfig, RetiredEvalBatchesNamesItsReplacement) {
  // logging.eval_batches counted micro-batches per rank (a layout-dependent eval set); its replacement counts
  // sequences over all ranks. A config or --set that still uses it is told what to write instead.
  const std::string msg = parse_error(with_line(20, "  eval_batches: 4"));
  EXPECT_HAS(msg, "cfg.yaml:20: logging.eval_batches: no longer read");
  EXPECT_HAS(msg, "use logging.eval_sequences");
  EXPECT_HAS(parse_error(kGpt2, {"logging.eval_batches=2"}), "--set logging.eval_batches=2: logging.eval_batches: ");
  EXPECT_EQ(parse_config(kGpt2, "cfg.yaml", {"logging.eval_sequences=33"}).logging.eval_sequences, 33);
  EXPECT_HAS(parse_error(kGpt2, {"logging.eval_sequences=0"}), "logging.eval_sequences: must be >= 1, got 0");
}

TEST(RecipeConfig, FlowMappingsKeepTheirLineNumbers) {
  std::string text = kGpt2;
  text.replace(0, text.find("data:"),
               "# a comment line\nmodel: {family: gpt2, n_layer: 2, n_embd: 64,\n  n_haed: 4}\n");
  EXPECT_HAS(parse_error(text), "cfg.yaml:3: model.n_haed: unknown key; did you mean 'n_head'?");
}

TEST(RecipeConfig, UnknownSectionSuggestsTheClosest) {
  const std::string msg = parse_error(with_line(10, "trainng:"));
  EXPECT_HAS(msg, "cfg.yaml:10: trainng: unknown section; did you mean 'training'?");
}

TEST(RecipeConfig, WrongTypesNameTheExpectedType) {
  EXPECT_HAS(parse_error(with_line(3, "  n_layer: abc")), "cfg.yaml:3: model.n_layer: expected an integer, got 'abc'");
  EXPECT_HAS(parse_error(with_line(3, "  n_layer: 2.5")), "cfg.yaml:3: model.n_layer: expected an integer, got '2.5'");
  EXPECT_HAS(parse_error(with_line(3, "  n_layer: \"2\"")), "expected an integer, got the quoted string '2'");
  EXPECT_HAS(parse_error(with_line(3, "  n_layer: [1, 2]")),
             "cfg.yaml:3: model.n_layer: expected an integer, got a list");
  EXPECT_HAS(parse_error(with_line(3, "  n_layer:")), "cfg.yaml:3: model.n_layer: expected an integer, got no value");
  EXPECT_HAS(parse_error(with_line(14, "  lr: fast")), "cfg.yaml:14: training.lr: expected a number, got 'fast'");
  EXPECT_HAS(parse_error(with_line(14, "  lr: nan")), "cfg.yaml:14: training.lr: expected a number, got 'nan'");
  EXPECT_HAS(parse_error(with_line(16, "  backend: gloo\n  cpu_offload: maybe")),
             "cfg.yaml:17: parallelism.cpu_offload: expected true or false, got 'maybe'");
  EXPECT_HAS(parse_error(with_line(9, "  source: synthetic\n  seed: -1")),
             "cfg.yaml:10: data.seed: expected a non-negative integer, got '-1'");
  EXPECT_HAS(parse_error(with_line(16, "  backend: gloo\n  tp: 99999999999")), "parallelism.tp: expected an integer");
}

TEST(RecipeConfig, OutOfRangeValuesNameTheBound) {
  EXPECT_HAS(parse_error(with_line(3, "  n_layer: 0")), "cfg.yaml:3: model.n_layer: must be >= 1, got 0");
  EXPECT_HAS(parse_error(with_line(7, "  seq_len: 32\n  dropout: 1.0")),
             "cfg.yaml:8: model.dropout: must be in [0, 1), got 1");
  EXPECT_HAS(parse_error(with_line(14, "  lr: 0")), "cfg.yaml:14: training.lr: must be > 0, got 0");
  EXPECT_HAS(parse_error(with_line(20, "  interval: -3")), "cfg.yaml:20: logging.interval: must be >= 1, got -3");
  EXPECT_HAS(parse_error(with_line(18, "  keep_last: 0")), "cfg.yaml:18: checkpoint.keep_last: must be >= 1, got 0");
}

TEST(RecipeConfig, BadChoiceSuggestsTheClosest) {
  EXPECT_HAS(parse_error(with_line(2, "  family: gpt3")),
             "cfg.yaml:2: model.family: must be one of 'gpt2', 'llama', got 'gpt3'; did you mean 'gpt2'?");
  EXPECT_HAS(parse_error(with_line(16, "  backend: ncll")), "cfg.yaml:16: parallelism.backend: must be one of");
}

TEST(RecipeConfig, ActivationCheckpointingTakesNoneFullSelectiveOrSelectiveK) {
  for (const char* v : {"none", "full", "selective", "selective:1", "selective:4"})
    EXPECT_EQ(parse_config(with_line(14, std::string("  lr: 1.0e-3\n  activation_checkpointing: ") + v), "x")
                  .training.activation_checkpointing,
              v);
  EXPECT_HAS(parse_error(with_line(14, "  lr: 1.0e-3\n  activation_checkpointing: selective:0")),
             "cfg.yaml:15: training.activation_checkpointing: must be one of none, full, selective, selective:K");
  EXPECT_HAS(parse_error(kGpt2, {"training.activation_checkpointing=partial"}),
             "--set training.activation_checkpointing=partial: training.activation_checkpointing: must be one of");
}

TEST(RecipeConfig, MissingRequiredKeyNamesTheSection) {
  EXPECT_HAS(parse_error(with_line(3, "")), "cfg.yaml:1: model.n_layer: missing required key model.n_layer");
  EXPECT_HAS(parse_error(with_line(13, "")), "cfg.yaml:10: training.steps: missing required key training.steps");
  EXPECT_HAS(parse_error(with_line(9, "  source: text")),
             "cfg.yaml:8: data.train_path: missing required key data.train_path");
  // A whole section missing.
  std::string no_training = kGpt2;
  no_training.erase(no_training.find("training:"), no_training.find("parallelism:") - no_training.find("training:"));
  EXPECT_HAS(parse_error(no_training),
             "training.global_batch_tokens: missing required key training.global_batch_tokens");
  EXPECT_HAS(parse_error(no_training), "no 'training:' section");
}

TEST(RecipeConfig, InconsistentValuesNameKeyAndNumbers) {
  EXPECT_HAS(parse_error(with_line(4, "  n_embd: 66")),
             "cfg.yaml:4: model.n_embd: must be divisible by model.n_head (4), got 66; nearest that fit: 64 or 68");
  EXPECT_HAS(parse_error(with_line(5, "  n_head: 4\n  n_kv_head: 2")),
             "cfg.yaml:6: model.n_kv_head: GPT-2 has no grouped-query attention");
  EXPECT_HAS(parse_error(with_line(5, "  n_head: 4\n  rope_theta: 500000")), "cfg.yaml:6: model.rope_theta:");
  std::string llama = with_line(2, "  family: llama");
  EXPECT_HAS(parse_error(llama, {"model.n_kv_head=3"}),
             "--set model.n_kv_head=3: model.n_kv_head: must divide model.n_head (4), got 3; values that fit: 1, 2, 4");
  EXPECT_HAS(parse_error(with_line(11, "  global_batch_tokens: 1000")),
             "cfg.yaml:11: training.global_batch_tokens: must be a multiple of model.seq_len * training.micro_batch = "
             "32 * 4 = 128, got 1000; nearest that fit: 896 or 1024");
  EXPECT_HAS(parse_error(with_line(14, "  lr: 1.0e-3\n  min_lr: 0.01")),
             "cfg.yaml:15: training.min_lr: must be <= training.lr");
  EXPECT_HAS(parse_error(with_line(16, "  backend: gloo\n  cpu_offload: true")),
             "cfg.yaml:17: parallelism.cpu_offload: offloads FSDP shards: it needs parallelism.fsdp > 1");
  EXPECT_HAS(parse_error(with_line(18, "  resume: latest")),
             "cfg.yaml:18: checkpoint.resume: must be 'auto', 'never' or");
  EXPECT_EQ(parse_config(with_line(18, "  resume: /ckpt/step_00000100"), "x").checkpoint.resume, "/ckpt/step_00000100");
}

TEST(RecipeConfig, DuplicateKeysAndSyntaxErrorsNameTheLine) {
  const std::string dup = parse_error(with_line(4, "  n_embd: 64\n  n_embd: 128"));
  EXPECT_HAS(dup, "cfg.yaml:5: model.n_embd: duplicate key (first at cfg.yaml:4)");
  const std::string syntax = parse_error(with_line(6, "  vocab_size: [256"));
  EXPECT_HAS(syntax, "cfg.yaml:");
  EXPECT_HAS(syntax, "YAML syntax error");
  EXPECT_HAS(parse_error(""), "cfg.yaml:1: the config is empty");
  EXPECT_HAS(parse_error("- a\n- b\n"), "cfg.yaml:1: expected a mapping of sections");
  std::string scalar_section = kGpt2;
  const std::string data_section = "data:\n  source: synthetic\n";
  scalar_section.replace(scalar_section.find(data_section), data_section.size(), "data: 5\n");
  EXPECT_HAS(parse_error(scalar_section), "cfg.yaml:8: data: expected a mapping of keys, got '5'");
}

TEST(RecipeConfig, OverridesReplaceFileValuesAndNameTheSet) {
  RecipeConfig c = parse_config(kGpt2, "cfg.yaml",
                                {"training.lr=0.01", "model.n_layer=6", "checkpoint.dir=/data/run 1",
                                 "logging.progress=false", "parallelism.tp=2"});
  EXPECT_DOUBLE_EQ(c.training.lr, 0.01);
  EXPECT_EQ(c.model.n_layer, 6);
  EXPECT_EQ(c.checkpoint.dir, "/data/run 1");
  EXPECT_FALSE(c.logging.progress);
  EXPECT_EQ(c.parallelism.tp, 2);
  EXPECT_EQ(c.origins.at("training.lr"), "--set training.lr=0.01");
  // A required key may come from --set alone.
  EXPECT_EQ(parse_config(with_line(13, ""), "cfg.yaml", {"training.steps=7"}).training.steps, 7);

  EXPECT_HAS(parse_error(kGpt2, {"model.n_layr=2"}),
             "--set model.n_layr=2: model.n_layr: unknown key; did you mean 'n_layer'?");
  EXPECT_HAS(parse_error(kGpt2, {"modle.n_layer=2"}),
             "--set modle.n_layer=2: modle: unknown section; did you mean 'model'?");
  EXPECT_HAS(parse_error(kGpt2, {"model.n_layer=abc"}),
             "--set model.n_layer=abc: model.n_layer: expected an integer, got 'abc'");
  EXPECT_HAS(parse_error(kGpt2, {"model.n_layer=0"}), "--set model.n_layer=0: model.n_layer: must be >= 1, got 0");
  EXPECT_HAS(parse_error(kGpt2, {"model.n_layer"}), "--set model.n_layer: expected section.key=value");
  EXPECT_HAS(parse_error(kGpt2, {"n_layer=3"}), "--set n_layer=3: n_layer: expected section.key");
}

TEST(RecipeConfig, ToYamlRoundTripsToAnEqualConfig) {
  RecipeConfig a =
      parse_config(kGpt2, "cfg.yaml",
                   {"data.train_path=dir/a: b #c \"q\" \\x", "data.source=text", "training.lr=0.000123456789",
                    "data.seed=18446744073709551615", "training.precision=bf16", "checkpoint.async=true",
                    "parallelism.bucket_mb=12.5", "logging.metrics_file=m.jsonl"});
  const std::string yaml = a.to_yaml();
  RecipeConfig b = parse_config(yaml, "resolved.yaml");
  EXPECT_TRUE(a == b) << yaml;
  EXPECT_EQ(b.data.train_path, "dir/a: b #c \"q\" \\x");
  EXPECT_EQ(b.data.seed, 18446744073709551615ull);
  // Every key of every section is printed.
  for (const char* key :
       {"family:", "n_kv_head:", "intermediate_size:", "rope_theta:", "val_fraction:", "warmup_steps:", "grad_clip:",
        "reshard_after_forward:", "cpu_offload:", "fall_back:", "eval_sequences:"})
    EXPECT_HAS(yaml, key);
  // Floats always look like floats, so YAML 1.1 readers (PyYAML) read them as numbers too.
  EXPECT_HAS(yaml, "  eps: 1.0e-08\n");
  EXPECT_HAS(yaml, "  grad_clip: 1.0\n");
  EXPECT_HAS(yaml, "  dropout: 0.0\n");
  // And a changed value makes them unequal.
  b.training.beta2 = 0.999;
  EXPECT_FALSE(a == b);

  std::string llama = with_line(2, "  family: llama");
  RecipeConfig l = parse_config(llama, "l.yaml", {"model.n_kv_head=2", "model.rope_theta=500000", "model.dropout=0.1"});
  EXPECT_TRUE(parse_config(l.to_yaml(), "l2.yaml") == l);
}

TEST(RecipeConfig, TraceStepsIsARangeOfSteps) {
  EXPECT_EQ(parse_config(kGpt2, "cfg.yaml").logging.trace_steps, (std::array<int64_t, 2>{0, 0}));  // off
  RecipeConfig a = parse_config(kGpt2, "cfg.yaml", {"logging.trace_steps=[3, 5]"});
  EXPECT_EQ(a.logging.trace_steps, (std::array<int64_t, 2>{3, 5}));
  EXPECT_HAS(a.to_yaml(), "  trace_steps: [3, 5]\n");
  EXPECT_TRUE(parse_config(a.to_yaml(), "resolved.yaml") == a);
  EXPECT_TRUE(parse_config(parse_config(kGpt2, "c").to_yaml(), "r") == parse_config(kGpt2, "c"));
  EXPECT_HAS(parse_error(kGpt2, {"logging.trace_steps=[5, 3]"}),
             "--set logging.trace_steps=[5, 3]: logging.trace_steps: expected a list [from, to] of step numbers with 1 "
             "<= from <= to, got [5, 3]");
  EXPECT_HAS(parse_error(kGpt2, {"logging.trace_steps=[0, 3]"}), "got [0, 3]");
  EXPECT_HAS(parse_error(kGpt2, {"logging.trace_steps=4"}), "logging.trace_steps: expected a list [from, to]");
  EXPECT_HAS(parse_error(kGpt2, {"logging.trace_steps=[1, x]"}), "got 'x'");
  EXPECT_HAS(parse_error(kGpt2, {"logging.trace_steps=[1, 2, 3]"}), "expected a list [from, to]");
}

TEST(RecipeConfig, GradAccumStepsDividesExactly) {
  TrainingConfig t;
  t.global_batch_tokens = 4096;
  t.micro_batch = 4;
  EXPECT_EQ(t.grad_accum_steps(64, 2), 8);
  EXPECT_EQ(t.grad_accum_steps(64, 16), 1);
  try {
    t.grad_accum_steps(64, 3);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_HAS(e.what(), "model.seq_len (64) * training.micro_batch (4) * dp_world (3) = 768");
    EXPECT_HAS(e.what(), "3840 or 4608");
  }
}

TEST(RecipeConfig, ResolveLayoutFillsDpAndChecksTheWorld) {
  RecipeConfig c = parse_config(kGpt2, "cfg.yaml");  // 1024 tokens = 32 seq * 4 micro * 8
  RecipeConfig r = resolve_layout(c, 4);
  EXPECT_EQ(r.parallelism.dp, 4);
  EXPECT_EQ(r.training.grad_accum_steps(r.model.seq_len, r.parallelism.dp_world()), 2);
  RecipeConfig f = resolve_layout(parse_config(kGpt2, "cfg.yaml", {"parallelism.fsdp=2", "parallelism.tp=2"}), 8);
  EXPECT_EQ(f.parallelism.dp, 2);
  EXPECT_EQ(f.parallelism.dp_world(), 4);

  EXPECT_HAS(layout_error(parse_config(kGpt2, "cfg.yaml", {"parallelism.fsdp=3"}), 4),
             "--set parallelism.fsdp=3: parallelism: fsdp (3) * tp (1) = 3 does not divide the world size 4");
  const std::string mismatch =
      layout_error(parse_config(with_line(16, "  dp: 2"), "cfg.yaml", {"parallelism.tp=2"}), 8);
  EXPECT_HAS(mismatch, "cfg.yaml:16: parallelism: dp (2) * fsdp (1) * tp (2) = 4 but the world has 8 ranks");
  EXPECT_HAS(mismatch, "set parallelism.dp to 4");
  // 1024 tokens over 16 data-parallel ranks of 4 x 32-token sequences: 2048 per micro-step does not divide 1024.
  const std::string batch = layout_error(c, 16);
  EXPECT_HAS(batch, "cfg.yaml:11: training.global_batch_tokens: 1024 tokens do not split into whole micro-batches");
  EXPECT_HAS(batch, "dp_world (16) = 2048");
  EXPECT_HAS(batch, "world size 16");
}

TEST(RecipeConfig, TensorParallelSizeMustDivideTheSplitDimensions) {
  // n_head 4: tp 8 does not divide it; parse (world-independent) and resolve both say so.
  EXPECT_HAS(parse_error(kGpt2, {"parallelism.tp=8"}),
             "--set parallelism.tp=8: parallelism.tp: tp = 8 does not divide model.n_head = 4 (cfg.yaml:5)");
  EXPECT_HAS(parse_error(kGpt2, {"parallelism.tp=8"}),
             "tp sizes that divide n_head, n_kv_head, vocab_size and the MLP hidden size: 1, 2, 4");
  EXPECT_HAS(parse_error(with_line(6, "  vocab_size: 255"), {"parallelism.tp=2"}),
             "tp = 2 does not divide model.vocab_size = 255 (cfg.yaml:6)");
  EXPECT_HAS(parse_error(with_line(6, "  vocab_size: 255"), {"parallelism.tp=2"}),
             "pad vocab_size to a multiple of 2, e.g. 256");
  std::string llama = with_line(2, "  family: llama");
  EXPECT_HAS(parse_error(llama, {"model.n_kv_head=1", "parallelism.tp=2"}),
             "tp = 2 does not divide model.n_kv_head = 1");
  EXPECT_HAS(parse_error(llama, {"model.intermediate_size=171", "parallelism.tp=2"}),
             "tp = 2 does not divide model.intermediate_size = 171");
}

TEST(RecipeConfig, LoadConfigReadsAFileAndNamesItInErrors) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("loom_config_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path good = dir / "good.yaml", bad = dir / "bad.yaml";
  std::ofstream(good) << kGpt2;
  std::ofstream(bad) << with_line(12, "  micro_batch: four");
  EXPECT_EQ(load_config(good.string(), {"training.steps=3"}).training.steps, 3);
  EXPECT_EQ(load_config(good.string()).source_file, good.string());
  try {
    load_config(bad.string());
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_HAS(e.what(), bad.string() + ":12: training.micro_batch: expected an integer, got 'four'");
  }
  try {
    load_config((dir / "missing.yaml").string());
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_HAS(e.what(), "missing.yaml: cannot open the config file");
  }
  fs::remove_all(dir);
}

TEST(RecipeConfig, ParameterCountMatchesTheModels) {
  struct Case {
    std::string family;
    int64_t n_kv_head, intermediate;
    bool tied;
  };
  for (const Case& k :
       {Case{"gpt2", 0, 0, true}, Case{"gpt2", 0, 0, false}, Case{"llama", 2, 96, false}, Case{"llama", 4, 0, true}}) {
    ModelConfig m;
    m.family = k.family;
    m.n_layer = 3;
    m.n_embd = 32;
    m.n_head = 4;
    m.n_kv_head = k.n_kv_head;
    m.vocab_size = 50;
    m.seq_len = 16;
    m.intermediate_size = k.intermediate;
    m.tie_embeddings = k.tied;
    int64_t actual = 0;
    if (k.family == "gpt2") {
      nn::GPT2Config g;
      g.vocab_size = m.vocab_size;
      g.n_positions = m.seq_len;
      g.n_embd = m.n_embd;
      g.n_layer = m.n_layer;
      g.n_head = m.n_head;
      g.tie_word_embeddings = k.tied;
      actual = nn::GPT2(g).num_parameters();
    } else {
      nn::LlamaConfig l;
      l.vocab_size = m.vocab_size;
      l.max_seq_len = m.seq_len;
      l.n_embd = m.n_embd;
      l.n_layer = m.n_layer;
      l.n_head = m.n_head;
      l.n_kv_head = k.n_kv_head;
      l.intermediate_size = k.intermediate > 0 ? k.intermediate : 256;  // the Llama rule for n_embd 32
      l.tie_word_embeddings = k.tied;
      actual = nn::Llama(l).num_parameters();
    }
    EXPECT_EQ(parameter_count(m), actual) << k.family << " kv " << k.n_kv_head << " tied " << k.tied;
  }
  // GPT-2 small: the published 124,439,808 (tied head, 1024 positions).
  ModelConfig g;
  g.family = "gpt2";
  g.n_layer = 12;
  g.n_embd = 768;
  g.n_head = 12;
  g.vocab_size = 50257;
  g.seq_len = 1024;
  EXPECT_EQ(parameter_count(g), 124439808);
}

TEST(RecipeConfig, MemoryEstimateShardsStatesByLayout) {
  // 8 layers, so that FSDP's gathered units (root + 2 blocks) are a fraction of the model.
  auto cfg = [](std::vector<std::string> sets) {
    sets.push_back("model.n_layer=8");
    return parse_config(kGpt2, "cfg.yaml", sets);
  };
  auto sum = [](const MemoryEstimate& e) {
    return e.params + e.grads + e.optimizer + e.activations + e.buffers + e.transient;
  };
  RecipeConfig c = cfg({});
  const int64_t P = parameter_count(c.model);
  const MemoryEstimate one = estimate_memory_per_rank(c, 1);
  EXPECT_EQ(one.params, 4 * P);     // f32, no FSDP: the weights only
  EXPECT_EQ(one.grads, 4 * P);      // 8 micro-steps: the gradients exist through every backward but the first
  EXPECT_EQ(one.optimizer, 8 * P);  // AdamW's two moments
  EXPECT_EQ(one.buffers, 0);
  EXPECT_GT(one.activations, 4 * 32 * 64 * 8 * 34);
  EXPECT_EQ(one.total, sum(one));
  EXPECT_EQ(one.host_offloaded, 0);

  // DDP over 4 ranks replicates everything, and its buckets hold a copy of every gradient.
  const MemoryEstimate dd = estimate_memory_per_rank(c, 4);
  EXPECT_EQ(dd.optimizer, one.optimizer);
  EXPECT_EQ(dd.buffers, 4 * P);
  EXPECT_EQ(dd.total, sum(dd));
  // FSDP over 4 shards optimizer states and gradients; the gathered units come on top of the param shard.
  RecipeConfig f = cfg({"parallelism.fsdp=4"});
  const MemoryEstimate fs = estimate_memory_per_rank(f, 4);
  EXPECT_EQ(fs.optimizer, 8 * ((P + 3) / 4));
  EXPECT_GT(fs.params, 4 * ((P + 3) / 4));
  EXPECT_LT(fs.params, one.params);
  EXPECT_LT(fs.grads, one.grads);
  EXPECT_LT(fs.total, dd.total);
  // Keeping every unit gathered after forward costs more.
  RecipeConfig keep = cfg({"parallelism.fsdp=4", "parallelism.reshard_after_forward=false"});
  EXPECT_GT(estimate_memory_per_rank(keep, 4).total, fs.total);
  // HSDP (2 replicas of 2 shards) shards over the fsdp group only: more per rank than fsdp 4, less than DDP.
  RecipeConfig h = cfg({"parallelism.dp=2", "parallelism.fsdp=2"});
  const MemoryEstimate hs = estimate_memory_per_rank(h, 4);
  EXPECT_EQ(hs.optimizer, 8 * ((P + 1) / 2));
  EXPECT_GT(hs.total, fs.total);
  EXPECT_LT(hs.total, dd.total);
  // CPU offload moves the shards (parameters, gradients, AdamW moments) to the host.
  RecipeConfig off = cfg({"parallelism.fsdp=4", "parallelism.cpu_offload=true"});
  const MemoryEstimate os = estimate_memory_per_rank(off, 4);
  EXPECT_EQ(os.optimizer, 0);
  EXPECT_EQ(os.host_offloaded, fs.optimizer + 4 * ((P + 3) / 4) * 2);
  EXPECT_LT(os.total, fs.total);
  // TP over 2 roughly halves the states and the activations.
  RecipeConfig t = cfg({"parallelism.tp=2"});
  const MemoryEstimate ts = estimate_memory_per_rank(t, 2);
  EXPECT_LT(ts.optimizer, one.optimizer * 6 / 10);
  EXPECT_GT(ts.optimizer, one.optimizer * 4 / 10);
  EXPECT_LT(ts.activations, one.activations);
  // bf16 is FullyShard mixed precision (here over one rank): f32 master weights plus the bf16 units gathered, half
  // the activation bytes.
  RecipeConfig b = cfg({"training.precision=bf16"});
  const MemoryEstimate bs = estimate_memory_per_rank(b, 1);
  EXPECT_GT(bs.params, 4 * P);
  EXPECT_LT(bs.params, 6 * P);
  EXPECT_LT(bs.activations, one.activations);
  // SGD keeps one momentum buffer (training.beta1 is its momentum), none without momentum.
  EXPECT_EQ(estimate_memory_per_rank(cfg({"training.optimizer=sgd"}), 1).optimizer, 4 * P);
  EXPECT_EQ(estimate_memory_per_rank(cfg({"training.optimizer=sgd", "training.beta1=0"}), 1).optimizer, 0);
  // On CUDA the composed attention keeps the (B, H, T, T) softmax output per layer, more with dropout (its mask
  // and the dropped-out copy); the CPU's fused attention keeps none. The backend nccl means CUDA.
  const MemoryEstimate cu = estimate_memory_per_rank(c, 1, true);
  EXPECT_GT(cu.activations, one.activations);
  RecipeConfig drop = cfg({"model.dropout=0.1"});
  EXPECT_GT(estimate_memory_per_rank(drop, 1, true).activations, cu.activations);
  EXPECT_EQ(estimate_memory_per_rank(cfg({"parallelism.backend=nccl"}), 1).activations, cu.activations);
  // Head dim 64 without dropout runs CUDA's flash kernel: no scores kept, as on the CPU; with dropout, composed.
  RecipeConfig d64 = cfg({"model.n_embd=256"});
  EXPECT_EQ(estimate_memory_per_rank(d64, 1, true).activations, estimate_memory_per_rank(d64, 1, false).activations);
  RecipeConfig d64_drop = cfg({"model.n_embd=256", "model.dropout=0.1"});
  EXPECT_GT(estimate_memory_per_rank(d64_drop, 1, true).activations,
            estimate_memory_per_rank(d64_drop, 1, false).activations);
  // A layout that does not fit is the same error as resolve_layout's.
  EXPECT_THROW(estimate_memory_per_rank(f, 6), ConfigError);
}

TEST(RecipeConfig, MemoryEstimateFollowsActivationCheckpointing) {
  // A long sequence and a small vocabulary, so the blocks' activations dominate.
  auto est = [](const std::string& mode) {
    RecipeConfig c = parse_config(kGpt2, "cfg.yaml",
                                  {"model.n_layer=8", "model.seq_len=256", "training.global_batch_tokens=1024",
                                   "training.micro_batch=4", "training.activation_checkpointing=" + mode});
    return estimate_memory_per_rank(c, 1);
  };
  const MemoryEstimate none = est("none"), full = est("full"), sel = est("selective"), sel2 = est("selective:2"),
                       sel8 = est("selective:8");
  EXPECT_LT(full.activations, sel.activations);
  EXPECT_LT(sel.activations, none.activations);
  EXPECT_LT(sel2.activations, none.activations);
  EXPECT_GT(sel2.activations, full.activations);
  EXPECT_GT(sel8.activations, sel2.activations);  // only block 0 of 8 recomputes
  EXPECT_LT(full.total, none.total);
  // Full checkpointing keeps one (B, T, C) input per block plus one block's activations at a time: with 8 blocks of
  // ~17 (B, T, C) f32 tensors each, well under a third of none's.
  EXPECT_LT(full.activations * 3, none.activations);
  for (const char* bad : {"partial", "selective:0", "selective:", "selective:x", "full:2"})
    EXPECT_THROW(parse_config(kGpt2, "cfg.yaml", {std::string("training.activation_checkpointing=") + bad}),
                 ConfigError)
        << bad;
}

TEST(RecipeConfig, TrafficEstimateSplitsHybridShardingByGroup) {
  // kGpt2: 32 sequences per step in micro-batches of 4; on 4 data-parallel ranks 2 micro-steps each.
  auto cfg = [](std::vector<std::string> sets) { return parse_config(kGpt2, "cfg.yaml", sets); };
  const RecipeConfig c = cfg({});
  const double P = static_cast<double>(parameter_count(c.model));
  const double root = 256 * 64 + 32 * 64 + 2 * 64;          // tied wte, wpe, ln_f: gathered once per micro-step
  const double per_microstep = (2 * P - root) * 4 + P * 4;  // all-gathers (forward, backward re-gather), reduce-scatter
  // DDP over 4: one all-reduce of the f32 gradients per step.
  const TrafficEstimate ddp = estimate_traffic_per_rank(c, 4);
  EXPECT_EQ(ddp.dp, static_cast<int64_t>(2.0 * 3 / 4 * P * 4));
  EXPECT_EQ(ddp.dp_ranks, 4);
  EXPECT_EQ(ddp.shard + ddp.replica, 0);
  // FSDP over 4: everything over the one group.
  const TrafficEstimate fsdp = estimate_traffic_per_rank(cfg({"parallelism.fsdp=4"}), 4);
  EXPECT_EQ(fsdp.shard, static_cast<int64_t>(2 * 3.0 / 4 * per_microstep));
  EXPECT_EQ(fsdp.shard_ranks, 4);
  EXPECT_EQ(fsdp.replica + fsdp.dp, 0);
  // HSDP 2 x 2: the same collectives over a shard group of 2, plus the all-reduce of the half-size gradient shard
  // across the 2 replicas: less than FSDP moves between the two halves of the world.
  const TrafficEstimate hsdp = estimate_traffic_per_rank(cfg({"parallelism.dp=2", "parallelism.fsdp=2"}), 4);
  EXPECT_EQ(hsdp.shard, static_cast<int64_t>(2 * 1.0 / 2 * per_microstep));
  EXPECT_EQ(hsdp.shard_ranks, 2);
  EXPECT_EQ(hsdp.replica, static_cast<int64_t>(2 * 2.0 * 1 / 2 * std::ceil(P / 2) * 4));
  EXPECT_EQ(hsdp.replica_ranks, 2);
  EXPECT_EQ(hsdp.dp, 0);
  EXPECT_LT(hsdp.replica, fsdp.shard / 2);
  // Groups that do not fill the world are resolve_layout's error.
  EXPECT_THROW(estimate_traffic_per_rank(cfg({"parallelism.dp=2", "parallelism.fsdp=2"}), 6), ConfigError);
}

TEST(RecipeConfig, ShippedConfigsParseAndFitTheirWorlds) {
  namespace fs = std::filesystem;
  // The world size each config's comment block names; a config not listed must at least parse.
  const std::map<std::string, std::vector<int>> worlds = {
      {"tiny_cpu.yaml", {1, 2}},         {"gpt2_124m_1gpu.yaml", {1}},          {"gpt2_124m_8gpu_ddp.yaml", {8}},
      {"gpt2_124m_8gpu_fsdp.yaml", {8}}, {"llama_1b_2node_fsdp_tp.yaml", {16}}, {"llama3_8b_4node.yaml", {32}},
      {"llama3_8b_1node.yaml", {8}},     {"llama3_8b_4node_hsdp.yaml", {32}},   {"llama3_70b_8node.yaml", {64}}};
  int seen = 0;
  for (const auto& e : fs::directory_iterator(fs::path(LOOM_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".yaml") continue;
    ++seen;
    SCOPED_TRACE(e.path().string());
    RecipeConfig c;
    ASSERT_NO_THROW(c = load_config(e.path().string()));
    EXPECT_TRUE(parse_config(c.to_yaml(), "resolved") == c);
    auto it = worlds.find(e.path().filename().string());
    if (it == worlds.end()) continue;
    for (int w : it->second) {
      EXPECT_NO_THROW(resolve_layout(c, w)) << "world " << w;
      EXPECT_NO_THROW(estimate_memory_per_rank(c, w)) << "world " << w;
    }
  }
  EXPECT_GE(seen, 1);
}

TEST(RecipeConfig, FreezeIsAListOfGlobsFromTheFileOrSet) {
  EXPECT_TRUE(parse_config(kGpt2, "cfg.yaml").model.freeze.empty());
  RecipeConfig c =
      parse_config(with_line(7, "  seq_len: 32\n  freeze: [transformer.wte.*, \"transformer.h.0.*\"]"), "cfg.yaml");
  EXPECT_EQ(c.model.freeze, (std::vector<std::string>{"transformer.wte.*", "transformer.h.0.*"}));
  EXPECT_EQ(c.origins.at("model.freeze"), "cfg.yaml:8");
  // Block style, a single glob, and --set.
  c = parse_config(with_line(7, "  seq_len: 32\n  freeze:\n    - lm_head.weight\n    - transformer.wpe.*"), "cfg.yaml");
  EXPECT_EQ(c.model.freeze, (std::vector<std::string>{"lm_head.weight", "transformer.wpe.*"}));
  EXPECT_EQ(parse_config(with_line(7, "  seq_len: 32\n  freeze: transformer.wte.weight"), "cfg.yaml").model.freeze,
            (std::vector<std::string>{"transformer.wte.weight"}));
  c = parse_config(kGpt2, "cfg.yaml", {"model.freeze=[transformer.h.*.attn.*, transformer.ln_f.bias]"});
  EXPECT_EQ(c.model.freeze, (std::vector<std::string>{"transformer.h.*.attn.*", "transformer.ln_f.bias"}));
  // to_yaml writes a flow list that reads back equal.
  EXPECT_NE(c.to_yaml().find("  freeze: [\"transformer.h.*.attn.*\", \"transformer.ln_f.bias\"]"), std::string::npos)
      << c.to_yaml();
  EXPECT_TRUE(parse_config(c.to_yaml(), "resolved") == c);
  EXPECT_TRUE(parse_config(parse_config(kGpt2, "cfg.yaml").to_yaml(), "resolved").model.freeze.empty());
  // Not a list of strings: named with file, line and index.
  EXPECT_HAS(parse_error(with_line(7, "  seq_len: 32\n  freeze: {a: 1}")),
             "cfg.yaml:8: model.freeze: expected a list of strings, got a mapping");
  EXPECT_HAS(parse_error(with_line(7, "  seq_len: 32\n  freeze: [a, [b]]")),
             "cfg.yaml:8: model.freeze[1]: expected a non-empty string");
}

TEST(RecipeConfig, ClusterConfigsFitEightyGigabyteGpusByTheirOwnEstimate) {
  // Each cluster config states its estimate in its header ("estimates the step's peak at ~N GiB per GPU"): the
  // number must be what the estimator gives at the config's world size, and that must leave >= 10 % of an 80 GB GPU
  // (the CUDA context, NCCL and the caching allocator's slack live there).
  const std::map<std::string, int> worlds = {
      {"llama3_8b_1node.yaml", 8}, {"llama3_8b_4node_hsdp.yaml", 32}, {"llama3_70b_8node.yaml", 64}};
  for (const auto& [name, world] : worlds) {
    SCOPED_TRACE(name);
    const std::string path = std::string(LOOM_SOURCE_DIR) + "/configs/" + name;
    RecipeConfig c;
    ASSERT_NO_THROW(c = load_config(path));
    const MemoryEstimate e = estimate_memory_per_rank(c, world);
    const double gib = static_cast<double>(e.total) / (1 << 30);
    EXPECT_LT(static_cast<double>(e.total), 0.9 * 80e9) << gib << " GiB";
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    const std::string key = "estimates the step's peak at ~";
    const std::string t = text.str();
    const size_t at = t.find(key);
    ASSERT_NE(at, std::string::npos) << "no '" << key << "N GiB' in the header";
    const double stated = std::stod(t.substr(at + key.size()));
    EXPECT_NEAR(stated, gib, 1.0) << "the header says ~" << stated << " GiB, the estimate is " << gib << " GiB";
  }
}
