#include "checkpoint/hf_import.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "autograd/autograd.h"
#include "checkpoint/export.h"
#include "checkpoint/layout.h"
#include "checkpoint/safetensors.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace loom::checkpoint {

namespace {

std::atomic<int64_t> g_bytes_read{0};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json read_json(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) throw IoError(std::string(what) + " " + path + ": cannot open: " + std::strerror(errno));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw IoError(std::string(what) + " " + path + " is not valid JSON: " + e.what());
  }
}

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw IoError("hf import: cannot open " + path + ": " + std::strerror(errno));
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  /// Reads exactly n bytes at offset; throws IoError naming the file and tensor.
  void pread_all(void* dst, size_t n, uint64_t offset, const std::string& tensor) const {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        throw IoError("hf import: reading tensor " + tensor + " from " + path_ + " at byte " + std::to_string(offset) +
                      " failed: " + (r < 0 ? std::strerror(errno) : "end of file (truncated file?)"));
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
      g_bytes_read += r;
    }
  }

 private:
  std::string path_;
  int fd_;
};

// Reads one safetensors header (not the data) into out.
void read_header(const std::string& file, std::map<std::string, HfTensor>& out) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError("hf import: cannot open " + file + ": " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char len[8];
  if (size < 8 || !in.read(reinterpret_cast<char*>(len), 8))
    throw IoError("hf import: " + file + " is not a safetensors file (" + std::to_string(size) + " bytes)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > size - 8 || n > (100ull << 20))
    throw IoError("hf import: " + file + ": header length " + std::to_string(n) + " does not fit the file of " +
                  std::to_string(size) + " bytes (not a safetensors file, or truncated)");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw IoError("hf import: " + file + ": malformed safetensors header: " + e.what());
  }
  if (!header.is_object()) throw IoError("hf import: " + file + ": the safetensors header is not a JSON object");
  const uint64_t data_start = 8 + n, data_size = size - data_start;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string ctx = file + ": tensor '" + name + "'";
    HfTensor t;
    t.file = file;
    try {
      t.dtype = dtype_from_safetensors(e.at("dtype").get<std::string>(), ctx);
      for (const auto& s : e.at("shape")) t.shape.push_back(s.get<int64_t>());
      const auto& r = e.at("data_offsets");
      if (!r.is_array() || r.size() != 2) throw IoError(ctx + ": data_offsets must hold two numbers");
      const uint64_t b = r[0].get<uint64_t>(), z = r[1].get<uint64_t>();
      const uint64_t expect = static_cast<uint64_t>(shape_numel(t.shape)) * element_size(t.dtype);
      if (z < b || z - b != expect || z > data_size)
        throw IoError(ctx + ": byte range [" + std::to_string(b) + ", " + std::to_string(z) +
                      ") does not match shape " + shape_str(t.shape) + " " + dtype_name(t.dtype) + " within " +
                      std::to_string(data_size) + " data bytes; the file may be truncated");
      t.offset = data_start + b;
    } catch (const json::exception& ex) {
      throw IoError(ctx + ": malformed header entry: " + ex.what());
    }
    if (!out.emplace(name, t).second)
      throw IoError("hf import: tensor " + name + " is in " + out.at(name).file + " and in " + file);
  }
}

int64_t prod(const Shape& s, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < s.size(); ++i) p *= s[i];
  return p;
}

// Reads the box (offset, size) of tensor t (in loom's layout: for a transposed Conv1D weight the box is in (out, in)
// coordinates) as a contiguous tensor of the file's dtype in loom's layout. Each contiguous run of the file is one
// pread.
Tensor read_box(const Fd& fd, const HfTensor& t, bool transpose, const Shape& off, const Shape& size,
                const std::string& name) {
  Shape foff = off, fsize = size;  // in the file's coordinates
  if (transpose) {
    std::swap(foff[0], foff[1]);
    std::swap(fsize[0], fsize[1]);
  }
  Tensor out = empty(fsize, t.dtype, kCPU);
  const size_t es = element_size(t.dtype);
  const size_t nd = fsize.size();
  if (nd == 0 || shape_numel(fsize) == 0) {
    if (shape_numel(fsize) > 0) fd.pread_all(out.data_ptr(), es, t.offset, name);
  } else {
    // The first dim j from which the box spans whole trailing dims: each index of dims [0, j) is one run.
    size_t j = nd - 1;
    while (j > 0 && fsize[j] == t.shape[j] && foff[j] == 0) --j;
    const int64_t run = fsize[j] * prod(t.shape, j + 1);
    std::vector<int64_t> stride(nd, 1);
    for (size_t i = nd - 1; i-- > 0;) stride[i] = stride[i + 1] * t.shape[i + 1];
    std::vector<int64_t> idx(j, 0);  // over dims [0, j) of the box, row-major
    char* dst = static_cast<char*>(out.data_ptr());
    while (true) {
      int64_t flat = foff[j] * stride[j];
      for (size_t i = 0; i < j; ++i) flat += (foff[i] + idx[i]) * stride[i];
      fd.pread_all(dst, static_cast<size_t>(run) * es, t.offset + static_cast<uint64_t>(flat) * es, name);
      dst += run * static_cast<int64_t>(es);
      int k = static_cast<int>(j) - 1;
      while (k >= 0) {
        if (++idx[k] < fsize[k]) break;
        idx[k] = 0;
        --k;
      }
      if (k < 0) break;
    }
  }
  if (transpose) out = ops::contiguous(ops::transpose(out, 0, 1));
  return out;
}

std::string num_str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// One key of config.json against the model's value.
struct ConfigCheck {
  const std::string& path;
  const json& cfg;

  const json* get(std::initializer_list<const char*> keys, std::string* which) const {
    for (const char* k : keys) {
      auto it = cfg.find(k);
      if (it != cfg.end() && !it->is_null()) {
        *which = k;
        return &*it;
      }
    }
    return nullptr;
  }
  [[noreturn]] void differ(const std::string& key, const std::string& file_value, const std::string& model_what,
                           const std::string& model_value, const std::string& recipe_key) const {
    throw ConfigError(path + ": " + key + " is " + file_value + ", the model's " + model_what + " is " + model_value +
                      (recipe_key.empty() ? std::string(": ") : " (recipe key " + recipe_key + "): ") +
                      "build the model with the file's value");
  }
  // An integer key (first of keys present; required unless fallback given).
  void integer(std::initializer_list<const char*> keys, int64_t model, const std::string& what,
               const std::string& recipe_key, std::optional<int64_t> fallback = std::nullopt) const {
    std::string k;
    const json* v = get(keys, &k);
    int64_t got = 0;
    if (v) {
      if (!v->is_number()) throw ConfigError(path + ": " + k + " should be a number, is " + v->dump());
      got = v->get<int64_t>();
    } else if (fallback) {
      got = *fallback;
      k = std::string(*keys.begin()) + " (absent: " + std::to_string(got) + " by default)";
    } else {
      throw ConfigError(path + ": no " + *keys.begin() + " (the model's " + what + " is " + std::to_string(model) +
                        "); a Hugging Face config.json of this model type has it");
    }
    if (got != model) differ(k, std::to_string(got), what, std::to_string(model), recipe_key);
  }
  void real(const char* key, double model, const std::string& what, const std::string& recipe_key,
            double fallback) const {
    std::string k;
    const json* v = get({key}, &k);
    double got = fallback;
    if (v) {
      if (!v->is_number()) throw ConfigError(path + ": " + key + " should be a number, is " + v->dump());
      got = v->get<double>();
    } else {
      k = std::string(key) + " (absent: " + num_str(fallback) + " by default)";
    }
    if (std::abs(got - model) > 1e-6 * std::max(std::abs(got), std::abs(model)))
      differ(k, num_str(got), what, num_str(model), recipe_key);
  }
  void boolean(const char* key, bool model, const std::string& what, const std::string& recipe_key,
               bool fallback) const {
    std::string k;
    const json* v = get({key}, &k);
    bool got = fallback;
    if (v) {
      if (!v->is_boolean()) throw ConfigError(path + ": " + key + " should be true or false, is " + v->dump());
      got = v->get<bool>();
    } else {
      k = std::string(key) + " (absent: " + (fallback ? "true" : "false") + " by default)";
    }
    if (got != model) differ(k, got ? "true" : "false", what, model ? "true" : "false", recipe_key);
  }
  void one_of(const char* key, std::initializer_list<const char*> allowed, const std::string& what) const {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return;
    const std::string v = it->is_string() ? it->get<std::string>() : it->dump();
    for (const char* a : allowed)
      if (v == a) return;
    throw ConfigError(path + ": " + key + " is " + it->dump() + ", loom's model computes " + what);
  }
  void absent_or(const char* key, const json& ok, const std::string& why) const {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null() || *it == ok) return;
    throw ConfigError(path + ": " + key + " is " + it->dump() + ": " + why);
  }
};

}  // namespace

int64_t HfWeights::total_bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : tensors_) n += shape_numel(t.shape) * static_cast<int64_t>(element_size(t.dtype));
  return n;
}

HfWeights HfWeights::open(const std::string& path) {
  HfWeights w;
  w.path_ = path;
  std::string index, single;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path + "/model.safetensors.index.json"))
      index = path + "/model.safetensors.index.json";
    else if (fs::exists(path + "/model.safetensors"))
      single = path + "/model.safetensors";
    else
      throw IoError("hf import: " + path +
                    " holds neither model.safetensors nor model.safetensors.index.json (a Hugging Face model "
                    "directory has one of them; .bin / PyTorch pickle weights are not read: convert them to "
                    "safetensors)");
  } else if (!fs::exists(path, ec)) {
    throw IoError("hf import: " + path + " does not exist");
  } else if (ends_with(path, ".index.json")) {
    index = path;
  } else {
    single = path;
  }
  const fs::path dir = fs::path(index.empty() ? single : index).parent_path();
  const std::string config = (dir.empty() ? fs::path("config.json") : dir / "config.json").string();
  if (fs::exists(config)) w.config_path_ = config;
  if (!single.empty()) {
    read_header(single, w.tensors_);
    return w;
  }
  const json j = read_json(index, "hf import: index");
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object())
    throw IoError("hf import: index " + index + " has no \"weight_map\" object (name -> shard file)");
  std::set<std::string> shards;
  for (const auto& [name, f] : wm->items()) {
    if (!f.is_string()) throw IoError("hf import: index " + index + ": the shard of " + name + " is not a file name");
    shards.insert(f.get<std::string>());
  }
  std::map<std::string, HfTensor> all;
  for (const auto& s : shards) {
    const std::string file = (dir / s).string();
    if (!fs::exists(file))
      throw IoError("hf import: index " + index + " names shard " + s + ", which is not in " + dir.string());
    read_header(file, all);
  }
  // The index decides which names exist; a shard holding a name the index maps elsewhere would be ambiguous.
  for (const auto& [name, f] : wm->items()) {
    auto it = all.find(name);
    const std::string file = (dir / f.get<std::string>()).string();
    if (it == all.end() || it->second.file != file)
      throw IoError("hf import: index " + index + " maps " + name + " to " + f.get<std::string>() +
                    (it == all.end() ? ", but no shard holds it" : ", but it is in " + it->second.file));
    w.tensors_.emplace(name, it->second);
  }
  return w;
}

void check_hf_config(const std::string& config_path, const nn::CausalLM& model) {
  const json cfg = read_json(config_path, "hf import: config");
  if (!cfg.is_object()) throw ConfigError(config_path + ": not a JSON object");
  ConfigCheck c{config_path, cfg};
  std::string model_type;
  if (auto mt = cfg.find("model_type"); mt != cfg.end() && mt->is_string()) model_type = mt->get<std::string>();
  if (const auto* g = dynamic_cast<const nn::GPT2*>(&model)) {
    if (!model_type.empty() && model_type != "gpt2")
      throw ConfigError(config_path + ": model_type is \"" + model_type +
                        "\", the model is GPT-2 (recipe key model.family: gpt2)");
    const nn::GPT2Config& m = g->config();
    c.integer({"n_embd", "hidden_size"}, m.n_embd, "n_embd", "model.n_embd");
    c.integer({"n_layer", "num_hidden_layers"}, m.n_layer, "n_layer", "model.n_layer");
    c.integer({"n_head", "num_attention_heads"}, m.n_head, "n_head", "model.n_head");
    c.integer({"vocab_size"}, m.vocab_size, "vocab_size", "model.vocab_size");
    c.integer({"n_positions", "n_ctx", "max_position_embeddings"}, m.n_positions, "n_positions (learned positions)",
              "model.seq_len");
    c.integer({"n_inner"}, 4 * m.n_embd, "MLP width (4 n_embd)", "", 4 * m.n_embd);
    c.real("layer_norm_epsilon", m.layer_norm_epsilon, "LayerNorm epsilon", "model.norm_eps", 1e-5);
    c.boolean("tie_word_embeddings", m.tie_word_embeddings, "tie_embeddings", "model.tie_embeddings", true);
    c.one_of("activation_function", {"gelu_new", "gelu_pytorch_tanh"}, "GELU with the tanh approximation (gelu_new)");
    return;
  }
  if (const auto* l = dynamic_cast<const nn::Llama*>(&model)) {
    if (!model_type.empty() && model_type != "llama")
      throw ConfigError(config_path + ": model_type is \"" + model_type +
                        "\", the model is Llama (recipe key model.family: llama)");
    const nn::LlamaConfig& m = l->config();
    c.integer({"hidden_size"}, m.n_embd, "n_embd", "model.n_embd");
    c.integer({"num_hidden_layers"}, m.n_layer, "n_layer", "model.n_layer");
    c.integer({"num_attention_heads"}, m.n_head, "n_head", "model.n_head");
    c.integer({"num_key_value_heads"}, m.n_kv_head, "n_kv_head", "model.n_kv_head",
              cfg.value("num_attention_heads", int64_t{0}));
    c.integer({"vocab_size"}, m.vocab_size, "vocab_size", "model.vocab_size");
    c.integer({"intermediate_size"}, m.intermediate_size, "intermediate_size", "model.intermediate_size");
    if (auto hd = cfg.find("head_dim");
        hd != cfg.end() && hd->is_number() && m.n_head > 0 && hd->get<int64_t>() != m.n_embd / m.n_head)
      c.differ("head_dim", hd->dump(), "head size (n_embd / n_head)", std::to_string(m.n_embd / m.n_head), "");
    std::string k;
    if (const json* mp = c.get({"max_position_embeddings"}, &k);
        mp && mp->is_number() && m.max_seq_len > mp->get<int64_t>())
      throw ConfigError(config_path + ": max_position_embeddings is " + mp->dump() + ", below the model's seq_len " +
                        std::to_string(m.max_seq_len) + " (recipe key model.seq_len): train on at most " + mp->dump() +
                        " tokens per sequence");
    c.real("rope_theta", m.rope_theta, "rope_theta", "model.rope_theta", 10000.0);
    c.real("rms_norm_eps", m.rms_norm_eps, "RMSNorm epsilon", "model.norm_eps", 1e-6);
    c.boolean("tie_word_embeddings", m.tie_word_embeddings, "tie_embeddings", "model.tie_embeddings", false);
    c.one_of("hidden_act", {"silu"}, "SiLU (silu)");
    c.absent_or("rope_scaling", json(nullptr), "loom's Llama applies plain RoPE (no rope_scaling)");
    c.absent_or("attention_bias", json(false), "loom's Llama attention has no biases");
    c.absent_or("mlp_bias", json(false), "loom's Llama MLP has no biases");
    return;
  }
  throw InvalidArgument("check_hf_config(" + config_path +
                        "): the model is neither loom's GPT-2 nor its Llama; nothing to compare the config with");
}

std::shared_ptr<nn::CausalLM> build_hf_model(const std::string& config_path, Generator& gen) {
  const json cfg = read_json(config_path, "hf import: config");
  auto num = [&](std::initializer_list<const char*> keys, std::optional<int64_t> fallback = std::nullopt) {
    for (const char* k : keys)
      if (auto it = cfg.find(k); it != cfg.end() && it->is_number()) return it->get<int64_t>();
    if (fallback) return *fallback;
    throw ConfigError(config_path + ": no " + *keys.begin() + " (a number); cannot build the model");
  };
  auto real = [&](const char* k, double fallback) {
    auto it = cfg.find(k);
    return it != cfg.end() && it->is_number() ? it->get<double>() : fallback;
  };
  auto flag = [&](const char* k, bool fallback) {
    auto it = cfg.find(k);
    return it != cfg.end() && it->is_boolean() ? it->get<bool>() : fallback;
  };
  const std::string type = cfg.value("model_type", std::string());
  if (type == "gpt2") {
    nn::GPT2Config c;
    c.vocab_size = num({"vocab_size"});
    c.n_positions = num({"n_positions", "n_ctx"});
    c.n_embd = num({"n_embd"});
    c.n_layer = num({"n_layer"});
    c.n_head = num({"n_head"});
    c.layer_norm_epsilon = real("layer_norm_epsilon", 1e-5);
    c.tie_word_embeddings = flag("tie_word_embeddings", true);
    return std::make_shared<nn::GPT2>(c, gen);
  }
  if (type == "llama") {
    nn::LlamaConfig c;
    c.vocab_size = num({"vocab_size"});
    c.max_seq_len = num({"max_position_embeddings"});
    c.n_embd = num({"hidden_size"});
    c.n_layer = num({"num_hidden_layers"});
    c.n_head = num({"num_attention_heads"});
    c.n_kv_head = num({"num_key_value_heads"}, c.n_head);
    c.intermediate_size = num({"intermediate_size"});
    c.rms_norm_eps = real("rms_norm_eps", 1e-6);
    c.rope_theta = real("rope_theta", 10000.0);
    c.tie_word_embeddings = flag("tie_word_embeddings", false);
    return std::make_shared<nn::Llama>(c, gen);
  }
  throw ConfigError(config_path + ": model_type is \"" + type + "\"; loom imports \"gpt2\" and \"llama\" models");
}

HfLoadStats load_hf_weights(const std::string& path, const Target& target,
                            const std::shared_ptr<collectives::ProcessGroup>& group) {
  HfLoadStats stats;
  std::string err;
  std::exception_ptr error;
  try {
    LOOM_CHECK((target.module != nullptr) != (target.fsdp != nullptr),
               "load_hf_weights: a Target needs exactly one of module and fsdp");
    const HfWeights w = HfWeights::open(path);
    nn::Module& root = target.module ? *target.module : target.fsdp->module();
    if (!w.config_path().empty()) {
      const auto* lm = dynamic_cast<const nn::CausalLM*>(&root);
      LOOM_CHECK(lm != nullptr, "load_hf_weights(", path, "): the model is not a causal LM; nothing to check ",
                 w.config_path(), " against");
      check_hf_config(w.config_path(), *lm);
      stats.config_checked = true;
    }
    Target model_only = target;
    model_only.optimizer = nullptr;
    // Names: every parameter (tied aliases once, under their first name) and persistent buffer of the model, the
    // same on every rank whatever each holds.
    const nn::StateDict state = root.state_dict();
    std::vector<std::string> names;
    for (const auto& [n, p] : root.named_parameters()) names.push_back(n);
    for (const auto& [n, b] : root.named_buffers())
      if (state.contains(n)) names.push_back(n);
    // A tied model whose head is not a parameter of its own (named_parameters lists the embedding only).
    const bool tied_head = state.contains("lm_head.weight") &&
                           std::find(names.begin(), names.end(), std::string("lm_head.weight")) == names.end();
    // The file's name for the model's tensor n, "" when it has none. Files saved from the bare base model (the hub's
    // original GPT-2: "h.0.attn.c_attn.weight", "wte.weight"; a LlamaModel: "layers.0...") lack the prefix; a tied
    // model saved with only lm_head.weight (huggingface_hub keeps one name of a shared tensor) has the embedding there.
    auto hf_name = [&](const std::string& n) -> std::string {
      if (w.tensors().count(n)) return n;
      for (const std::string prefix : {"transformer.", "model."})
        if (n.rfind(prefix, 0) == 0 && w.tensors().count(n.substr(prefix.size()))) return n.substr(prefix.size());
      if (tied_head && (n == "transformer.wte.weight" || n == "model.embed_tokens.weight") &&
          w.tensors().count("lm_head.weight"))
        return "lm_head.weight";
      return "";
    };
    std::set<std::string> used, missing;
    for (const auto& n : names) {
      const std::string h = hf_name(n);
      if (h.empty())
        missing.insert(n);
      else
        used.insert(h);
    }
    std::vector<std::string> unexpected;
    for (const auto& [n, t] : w.tensors()) {
      if (used.count(n)) continue;
      if (ends_with(n, ".attn.bias") || ends_with(n, ".attn.masked_bias") || ends_with(n, ".rotary_emb.inv_freq"))
        continue;                                                // buffers Hugging Face saves that loom computes
      if (n == "lm_head.weight" && state.contains(n)) continue;  // the tied head, stored as well by some writers
      unexpected.push_back(n);
    }
    if (!missing.empty() || !unexpected.empty()) {
      std::string msg = "load_hf_weights(" + path + "): the weights do not match the model;";
      auto list = [](const auto& v) {
        std::string s;
        size_t i = 0;
        for (const auto& x : v) {
          if (i == 20) {
            s += " … (" + std::to_string(v.size()) + " in all)";
            break;
          }
          s += " " + x;
          ++i;
        }
        return s;
      };
      if (!missing.empty()) msg += " missing:" + list(missing) + ";";
      if (!unexpected.empty()) msg += " unexpected:" + list(unexpected) + ";";
      msg += " (is it a Hugging Face GPT-2 / Llama model of the same family?)";
      throw InvalidArgument(msg);
    }
    const std::vector<detail::LocalTensor> locals = detail::collect(model_only);
    std::map<std::string, std::unique_ptr<Fd>> fds;
    autograd::NoGradGuard ng;
    const int64_t before = g_bytes_read.load();
    for (const auto& lt : locals) {
      const std::string name = lt.name.substr(6);  // "model/"
      const HfTensor& ht = w.tensors().at(hf_name(name));
      const bool transpose = is_hf_conv1d_weight(name);
      Shape loom_shape = ht.shape;
      if (transpose) {
        if (ht.shape.size() != 2)
          throw InvalidArgument("load_hf_weights(" + ht.file + "): " + name + " should be 2-D (Conv1D), is " +
                                shape_str(ht.shape));
        std::swap(loom_shape[0], loom_shape[1]);
      }
      if (loom_shape != lt.global_shape)
        throw InvalidArgument("load_hf_weights(" + ht.file + "): tensor " + hf_name(name) + " has shape " +
                              shape_str(ht.shape) + (transpose ? " (Conv1D (in, out))" : "") + ", the model's " + name +
                              " " + shape_str(lt.global_shape));
      if (!is_floating(ht.dtype) && is_floating(lt.data.dtype()))
        throw InvalidArgument("load_hf_weights(" + ht.file + "): tensor " + hf_name(name) + " is " +
                              dtype_name(ht.dtype) + ", the model's " + name + " is " + dtype_name(lt.data.dtype()));
      auto& fd = fds[ht.file];
      if (!fd) fd = std::make_unique<Fd>(ht.file);
      const bool on_host = lt.data.device().is_cpu();
      Tensor host = on_host ? lt.data : empty(lt.data.sizes(), lt.data.dtype(), kCPU);
      char* base = static_cast<char*>(host.data_ptr());
      const size_t es = lt.data.element_size();
      for (const detail::BoxPiece& bp : detail::to_boxes(lt, 0, lt.flat_end - lt.flat_begin)) {
        // The rows (along the box's first dim) that hold elements [begin, end) of the box.
        Shape off = bp.box_offset, size = bp.box_size;
        int64_t skip = bp.begin;
        if (!size.empty()) {
          const int64_t inner = prod(size, 1);
          const int64_t r0 = inner ? bp.begin / inner : 0, r1 = inner ? (bp.end + inner - 1) / inner : 0;
          off[0] += r0;
          size[0] = r1 - r0;
          skip = bp.begin - r0 * inner;
        }
        Tensor box = ops::to(read_box(*fd, ht, transpose, off, size, hf_name(name)), lt.data.dtype());
        LOOM_CHECK(box.is_contiguous() && skip + (bp.end - bp.begin) <= std::max<int64_t>(box.numel(), 1),
                   "load_hf_weights: internal error reading ", name);
        std::memcpy(base + bp.local_offset * static_cast<int64_t>(es),
                    static_cast<const char*>(box.data_ptr()) + skip * static_cast<int64_t>(es),
                    static_cast<size_t>(bp.end - bp.begin) * es);
      }
      if (!on_host) ops::copy_(lt.data, ops::to(host, lt.data.device()));
      lt.data.bump_version();
      ++stats.tensors;
    }
    stats.bytes_read = g_bytes_read.load() - before;
  } catch (const std::exception& e) {
    if (!group) throw;
    err = e.what();
    error = std::current_exception();
  }
  if (group) {
    // Every rank reads other bytes: go on only if every rank could.
    Tensor failed = ops::full({1}, err.empty() ? -1.0 : static_cast<double>(group->rank()), DType::f64);
    group->allreduce(failed, {collectives::ReduceOp::kMax})->wait();
    const int bad = static_cast<int>(failed.item());
    if (error) std::rethrow_exception(error);
    if (bad >= 0)
      throw InvalidArgument("load_hf_weights(" + path + "): loading failed on rank " + std::to_string(bad) +
                            " (its log says why)");
  }
  return stats;
}

int64_t hf_bytes_read_total() { return g_bytes_read.load(); }

}  // namespace loom::checkpoint
