#include "recipes/model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/autograd.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/export.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "tensor/ops.h"

namespace loom::recipes {

namespace fs = std::filesystem;

std::shared_ptr<nn::CausalLM> build_model(const ModelConfig& m, Generator& gen) {
  if (m.family == "gpt2") {
    nn::GPT2Config c;
    c.vocab_size = m.vocab_size;
    c.n_positions = m.seq_len;
    c.n_embd = m.n_embd;
    c.n_layer = m.n_layer;
    c.n_head = m.n_head;
    c.dropout = m.dropout;
    c.tie_word_embeddings = m.tie_embeddings;
    if (m.norm_eps > 0) c.layer_norm_epsilon = m.norm_eps;
    return std::make_shared<nn::GPT2>(c, gen);
  }
  nn::LlamaConfig c;
  c.vocab_size = m.vocab_size;
  c.max_seq_len = m.seq_len;
  c.n_embd = m.n_embd;
  c.n_layer = m.n_layer;
  c.n_head = m.n_head;
  c.n_kv_head = m.n_kv_head > 0 ? m.n_kv_head : m.n_head;
  c.intermediate_size = m.intermediate_size > 0 ? m.intermediate_size : llama_intermediate(m.n_embd);
  c.dropout = m.dropout;
  c.rope_theta = m.rope_theta;
  c.tie_word_embeddings = m.tie_embeddings;
  if (m.norm_eps > 0) c.rms_norm_eps = m.norm_eps;
  return std::make_shared<nn::Llama>(c, gen);
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("cannot read " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace

ModelConfig model_config_from_hf_json(const std::string& path) {
  const nlohmann::json j = read_json(path);
  auto get_int = [&](const char* key) -> int64_t {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer())
      throw ConfigError(path + ": " + key + ": " + (it == j.end() ? "missing" : "expected an integer"));
    return it->get<int64_t>();
  };
  auto get_opt = [&](const char* key, auto fallback) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    try {
      return it->get<decltype(fallback)>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError(path + ": " + key + ": wrong type");
    }
  };
  const std::string type = get_opt("model_type", std::string());
  ModelConfig m;
  if (type == "gpt2") {
    m.family = "gpt2";
    m.n_embd = get_int("n_embd");
    m.n_layer = get_int("n_layer");
    m.n_head = get_int("n_head");
    m.n_kv_head = m.n_head;
    m.vocab_size = get_int("vocab_size");
    m.seq_len = get_opt("n_positions", int64_t{1024});
    m.intermediate_size = 4 * m.n_embd;
    m.tie_embeddings = get_opt("tie_word_embeddings", true);
  } else if (type == "llama") {
    m.family = "llama";
    m.n_embd = get_int("hidden_size");
    m.n_layer = get_int("num_hidden_layers");
    m.n_head = get_int("num_attention_heads");
    m.n_kv_head = get_opt("num_key_value_heads", m.n_head);
    m.vocab_size = get_int("vocab_size");
    m.seq_len = get_opt("max_position_embeddings", int64_t{2048});
    m.intermediate_size = get_int("intermediate_size");
    m.rope_theta = get_opt("rope_theta", 10000.0);
    m.tie_embeddings = get_opt("tie_word_embeddings", false);
  } else {
    throw ConfigError(path + ": model_type: expected \"gpt2\" or \"llama\", got \"" + type + "\"");
  }
  return m;
}

LoadedModel load_checkpoint_model(const std::string& dir_in) {
  std::string dir = dir_in;
  if (!fs::exists(dir + "/metadata.json")) {
    const std::string latest = checkpoint::latest_checkpoint(dir);
    if (latest.empty())
      throw IoError(dir +
                    ": neither a checkpoint (no metadata.json) nor a run directory with checkpoints (no "
                    "`latest` file); pass a step_NNNNNNNN directory or the run's checkpoint.dir");
    dir = latest;
  }
  const checkpoint::Metadata md = checkpoint::read_metadata(dir);  // checks COMPLETE
  const nlohmann::json j = read_json(dir + "/metadata.json");
  auto it = j.find("config");
  if (it == j.end() || !it->is_string() || it->get<std::string>().empty())
    throw ConfigError(dir +
                      "/metadata.json: no recipe config stored (\"config\"); load the weights with "
                      "loomckpt export and --safetensors with a config.json instead");
  LoadedModel out;
  out.config = parse_config(it->get<std::string>(), dir + "/metadata.json config").model;
  Generator gen(0);
  out.model = build_model(out.config, gen);
  autograd::NoGradGuard ng;
  std::vector<std::string> missing;
  for (auto& [name, p] : out.model->named_parameters()) {
    const std::string key = "model/" + name;
    bool found = false;
    for (const auto& t : md.tensors) found = found || t.name == key;
    if (!found) {
      missing.push_back(name);
      continue;
    }
    Tensor v = checkpoint::read_tensor(md, key);
    LOOM_CHECK(v.sizes() == p.sizes(), dir, ": tensor ", name, " has shape ", shape_str(v.sizes()), ", the model ",
               shape_str(p.sizes()));
    ops::copy_(p, ops::to(v, p.dtype()));
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& n : missing) list += (list.empty() ? "" : ", ") + n;
    throw IoError(dir + ": the checkpoint lacks model tensors " + list);
  }
  out.description = "checkpoint " + dir + " (step " + std::to_string(md.step) + ")";
  return out;
}

LoadedModel load_safetensors_model(const std::string& path, const std::string& config_path) {
  if (!fs::exists(path)) throw IoError(path + ": no such file");
  std::string cfg = config_path;
  if (cfg.empty()) {
    cfg = (fs::path(path).parent_path() / "config.json").string();
    if (!fs::exists(cfg))
      throw IoError(path + ": no config.json beside it (" + cfg +
                    "); pass --config with the model's config.json or a loom recipe YAML");
  }
  LoadedModel out;
  const bool yaml = cfg.size() > 5 && (cfg.ends_with(".yaml") || cfg.ends_with(".yml"));
  out.config = yaml ? load_config(cfg).model : model_config_from_hf_json(cfg);
  Generator gen(0);
  out.model = build_model(out.config, gen);
  checkpoint::import_safetensors(path, *out.model);
  out.description = "safetensors " + path + " (config " + cfg + ")";
  return out;
}

}  // namespace loom::recipes
