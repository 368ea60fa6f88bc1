// The recipe config: a table of every key (section, name, type, range, choices)
// drives parsing, --set overrides, validation and to_yaml, so a key added to a
// struct and to the table is strict, overridable and printed with no other code.
#include "recipes/config.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>

#include <yaml-cpp/yaml.h>

#include "nn/activation_checkpointing.h"
#include "tensor/error.h"

namespace loom::recipes {
namespace {

constexpr const char* kSections[] = {"model", "data", "training", "parallelism", "checkpoint", "logging"};

enum class Kind { Int, Int32, UInt, Double, Bool, String, StringList, StepRange };

template <typename T>
constexpr Kind kind_of() {
  if constexpr (std::is_same_v<T, int64_t>)
    return Kind::Int;
  else if constexpr (std::is_same_v<T, int>)
    return Kind::Int32;
  else if constexpr (std::is_same_v<T, uint64_t>)
    return Kind::UInt;
  else if constexpr (std::is_same_v<T, double>)
    return Kind::Double;
  else if constexpr (std::is_same_v<T, bool>)
    return Kind::Bool;
  else if constexpr (std::is_same_v<T, std::vector<std::string>>)
    return Kind::StringList;
  else if constexpr (std::is_same_v<T, std::array<int64_t, 2>>)
    return Kind::StepRange;
  else {
    static_assert(std::is_same_v<T, std::string>, "config field of an unsupported type");
    return Kind::String;
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Int:
    case Kind::Int32:
      return "an integer";
    case Kind::UInt:
      return "a non-negative integer";
    case Kind::Double:
      return "a number";
    case Kind::Bool:
      return "true or false";
    case Kind::String:
      return "a string";
    case Kind::StringList:
      return "a list of strings";
    case Kind::StepRange:
      return "a list [from, to] of step numbers with 1 <= from <= to";
  }
  return "?";
}

/// One key of the schema. `field` returns the address of the value inside a RecipeConfig; its type is `kind`.
struct Key {
  Key(std::string s, std::string n, Kind k, std::function<void*(RecipeConfig&)> f)
      : section(std::move(s)), name(std::move(n)), kind(k), field(std::move(f)) {}
  std::string section, name;
  Kind kind;
  std::function<void*(RecipeConfig&)> field;
  bool required = false;
  std::optional<double> lo, hi;  // inclusive unless *_open
  bool lo_open = false, hi_open = false;
  std::vector<std::string> choices;  // for strings: the accepted values (empty: any)

  std::string path() const { return section + "." + name; }
  Key& req() {
    required = true;
    return *this;
  }
  Key& at_least(double v) {
    lo = v;
    return *this;
  }
  Key& above(double v) {
    lo = v;
    lo_open = true;
    return *this;
  }
  Key& at_most(double v) {
    hi = v;
    return *this;
  }
  Key& below(double v) {
    hi = v;
    hi_open = true;
    return *this;
  }
  Key& one_of(std::vector<std::string> c) {
    choices = std::move(c);
    return *this;
  }
};

#define LOOM_CONFIG_KEY(sec, member)                                                                         \
  Key(#sec, #member, kind_of<std::remove_reference_t<decltype(std::declval<RecipeConfig&>().sec.member)>>(), \
      [](RecipeConfig& c) -> void* { return &c.sec.member; })

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = [] {
    std::vector<Key> s;
    s.reserve(64);  // add() hands out references into s: no reallocation while building
    auto add = [&](Key k) -> Key& { return s.emplace_back(std::move(k)); };
    add(LOOM_CONFIG_KEY(model, family)).req().one_of({"gpt2", "llama"});
    add(LOOM_CONFIG_KEY(model, n_layer)).req().at_least(1);
    add(LOOM_CONFIG_KEY(model, n_embd)).req().at_least(1);
    add(LOOM_CONFIG_KEY(model, n_head)).req().at_least(1);
    add(LOOM_CONFIG_KEY(model, n_kv_head)).at_least(0);
    add(LOOM_CONFIG_KEY(model, vocab_size)).req().at_least(2);
    add(LOOM_CONFIG_KEY(model, seq_len)).req().at_least(1);
    add(LOOM_CONFIG_KEY(model, intermediate_size)).at_least(0);
    add(LOOM_CONFIG_KEY(model, dropout)).at_least(0).below(1);
    add(LOOM_CONFIG_KEY(model, tie_embeddings));
    add(LOOM_CONFIG_KEY(model, rope_theta)).above(0);
    add(LOOM_CONFIG_KEY(model, norm_eps)).at_least(0);
    add(LOOM_CONFIG_KEY(model, init_from));
    add(LOOM_CONFIG_KEY(model, freeze));

    add(LOOM_CONFIG_KEY(data, source)).one_of({"synthetic", "text", "llmc", "nanogpt"});
    add(LOOM_CONFIG_KEY(data, train_path));
    add(LOOM_CONFIG_KEY(data, val_path));
    add(LOOM_CONFIG_KEY(data, val_fraction)).above(0).at_most(0.5);
    add(LOOM_CONFIG_KEY(data, seed));

    add(LOOM_CONFIG_KEY(training, global_batch_tokens)).req().at_least(1);
    add(LOOM_CONFIG_KEY(training, micro_batch)).req().at_least(1);
    add(LOOM_CONFIG_KEY(training, steps)).req().at_least(1);
    add(LOOM_CONFIG_KEY(training, optimizer)).one_of({"adamw", "sgd"});
    add(LOOM_CONFIG_KEY(training, lr)).above(0);
    add(LOOM_CONFIG_KEY(training, min_lr)).at_least(0);
    add(LOOM_CONFIG_KEY(training, weight_decay)).at_least(0);
    add(LOOM_CONFIG_KEY(training, beta1)).at_least(0).below(1);
    add(LOOM_CONFIG_KEY(training, beta2)).at_least(0).below(1);
    add(LOOM_CONFIG_KEY(training, eps)).above(0);
    add(LOOM_CONFIG_KEY(training, warmup_steps)).at_least(0);
    add(LOOM_CONFIG_KEY(training, schedule)).one_of({"cosine", "constant"});
    add(LOOM_CONFIG_KEY(training, grad_clip)).at_least(0);
    add(LOOM_CONFIG_KEY(training, precision)).one_of({"f32", "bf16"});
    add(LOOM_CONFIG_KEY(training, seed));
    add(LOOM_CONFIG_KEY(training, activation_checkpointing));  // none | full | selective | selective:K (validate())

    add(LOOM_CONFIG_KEY(parallelism, dp)).at_least(0);
    add(LOOM_CONFIG_KEY(parallelism, fsdp)).at_least(1);
    add(LOOM_CONFIG_KEY(parallelism, tp)).at_least(1);
    add(LOOM_CONFIG_KEY(parallelism, backend)).one_of({"gloo", "mpi", "nccl"});
    add(LOOM_CONFIG_KEY(parallelism, bucket_mb)).above(0);
    add(LOOM_CONFIG_KEY(parallelism, reshard_after_forward));
    add(LOOM_CONFIG_KEY(parallelism, cpu_offload));

    add(LOOM_CONFIG_KEY(checkpoint, dir));
    add(LOOM_CONFIG_KEY(checkpoint, interval)).at_least(0);
    add(LOOM_CONFIG_KEY(checkpoint, keep_last)).at_least(1);
    add(LOOM_CONFIG_KEY(checkpoint, async));
    add(LOOM_CONFIG_KEY(checkpoint, resume));
    add(LOOM_CONFIG_KEY(checkpoint, fall_back));

    add(LOOM_CONFIG_KEY(logging, interval)).at_least(1);
    add(LOOM_CONFIG_KEY(logging, metrics_file));
    add(LOOM_CONFIG_KEY(logging, eval_interval)).at_least(0);
    add(LOOM_CONFIG_KEY(logging, eval_sequences)).at_least(1);
    add(LOOM_CONFIG_KEY(logging, progress));
    add(LOOM_CONFIG_KEY(logging, trace_steps));
    add(LOOM_CONFIG_KEY(logging, sample_interval)).at_least(0);
    add(LOOM_CONFIG_KEY(logging, sample_prompt));
    add(LOOM_CONFIG_KEY(logging, sample_tokenizer));
    add(LOOM_CONFIG_KEY(logging, sample_tokens)).at_least(1);
    return s;
  }();
  return keys;
}
#undef LOOM_CONFIG_KEY

// ---- small text helpers -----------------------------------------------------------------------------------------

/// Levenshtein distance with adjacent transpositions (so "n_haed" is one edit from "n_head").
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

/// The candidate closest to `word` when it is close enough to be a plausible typo.
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, word.size() / 3);
  if (best && best_d <= limit) return best;
  return std::nullopt;
}

std::string join_quoted(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", '" : "'") + v[i] + "'";
  return out;
}

/// Shortest text that reads back as the same double.
std::string fmt_double(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string fmt_bound(Kind k, double v) {
  if (k == Kind::Double) return fmt_double(v);
  return std::to_string(static_cast<int64_t>(v));
}

std::string to_lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> keys_of(const std::string& section) {
  std::vector<std::string> out;
  for (const auto& k : schema())
    if (k.section == section) out.push_back(k.name);
  return out;
}

const Key* find_key(const std::string& section, const std::string& name) {
  for (const auto& k : schema())
    if (k.section == section && k.name == name) return &k;
  return nullptr;
}

bool is_section(const std::string& s) {
  return std::find(std::begin(kSections), std::end(kSections), s) != std::end(kSections);
}

[[noreturn]] void fail(const std::string& where, const std::string& key, const std::string& what) {
  throw ConfigError(where + ": " + (key.empty() ? "" : key + ": ") + what);
}

/// "unknown section 'x'" with the closest section, or the list of sections.
[[noreturn]] void unknown_section(const std::string& where, const std::string& section) {
  std::vector<std::string> secs(std::begin(kSections), std::end(kSections));
  std::string msg = "unknown section";
  // A key written at the top level instead of under its section is a common slip: name its section.
  for (const auto& k : schema())
    if (k.name == section)
      fail(where, section, msg + "; did you mean '" + k.path() + "' (under '" + k.section + ":')?");
  if (auto c = closest(section, secs)) fail(where, section, msg + "; did you mean '" + *c + "'?");
  fail(where, section, msg + "; the sections are " + join_quoted(secs));
}

/// Keys that older versions of the recipe read, with what to write instead: a config or `--set` that still uses one
/// gets this instead of "unknown key". Retiring a key is one line.
struct RetiredKey {
  const char* path;
  const char* instead;
};
constexpr RetiredKey kRetired[] = {
    {"logging.eval_batches",
     "no longer read: it counted micro-batches per data-parallel rank, so the eval loss depended on the layout; use "
     "logging.eval_sequences, the number of held-out sequences over all ranks (eval_batches x training.micro_batch x "
     "data-parallel ranks gives the old set, e.g. 4 x 8 x 2 = 64)"},
};

[[noreturn]] void unknown_key(const std::string& where, const std::string& section, const std::string& name) {
  const std::string path = section + "." + name;
  for (const auto& r : kRetired)
    if (path == r.path) fail(where, path, r.instead);
  if (auto c = closest(name, keys_of(section))) fail(where, path, "unknown key; did you mean '" + *c + "'?");
  for (const auto& k : schema())
    if (k.name == name)
      fail(where, path, "unknown key; did you mean '" + k.path() + "' (it belongs in '" + k.section + "')?");
  fail(where, path, "unknown key; the keys of '" + section + "' are " + join_quoted(keys_of(section)));
}

// ---- reading one value ------------------------------------------------------------------------------------------

/// Parses `node` as `key`'s type into `cfg`. Strict: a quoted "12" is a string, not an integer.
void assign(RecipeConfig& cfg, const Key& key, const YAML::Node& node, const std::string& where) {
  void* field = key.field(cfg);
  const std::string expected = std::string("expected ") + kind_name(key.kind);
  if (key.kind == Kind::StringList) {  // a list of scalars; one scalar is a list of one; no value is the empty list
    auto& out = *static_cast<std::vector<std::string>*>(field);
    out.clear();
    if (!node.IsDefined() || node.IsNull()) return;
    if (node.IsMap()) fail(where, key.path(), expected + ", got a mapping");
    if (node.IsScalar()) {
      out.push_back(node.Scalar());
      return;
    }
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar() || node[i].Scalar().empty())
        fail(where, key.path() + "[" + std::to_string(i) + "]", "expected a non-empty string");
      out.push_back(node[i].Scalar());
    }
    return;
  }
  if (!node.IsDefined() || node.IsNull()) {
    if (key.kind == Kind::String) {
      *static_cast<std::string*>(field) = "";
      return;
    }
    if (key.kind == Kind::StepRange) {
      *static_cast<std::array<int64_t, 2>*>(field) = {0, 0};
      return;
    }
    fail(where, key.path(), expected + ", got no value");
  }
  if (key.kind == Kind::StepRange) {
    std::array<int64_t, 2> v{};
    if (!node.IsSequence() || node.size() != 2) fail(where, key.path(), expected);
    for (size_t i = 0; i < 2; ++i) {
      const std::string t = node[i].IsScalar() ? node[i].Scalar() : "";
      auto r = std::from_chars(t.data(), t.data() + t.size(), v[i]);
      if (t.empty() || r.ec != std::errc() || r.ptr != t.data() + t.size())
        fail(where, key.path(), expected + ", got '" + t + "'");
    }
    if (v[0] < 1 || v[1] < v[0])
      fail(where, key.path(), expected + ", got [" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + "]");
    *static_cast<std::array<int64_t, 2>*>(field) = v;
    return;
  }
  if (node.IsSequence()) fail(where, key.path(), expected + ", got a list");
  if (node.IsMap()) fail(where, key.path(), expected + ", got a mapping (is '" + key.name + ":' indented too far?)");
  const std::string text = node.Scalar();
  const bool quoted = node.Tag() == "!";
  if (key.kind == Kind::String) {
    *static_cast<std::string*>(field) = text;
    return;
  }
  if (quoted) fail(where, key.path(), expected + ", got the quoted string '" + text + "' (remove the quotes)");
  const char* b = text.data();
  const char* e = text.data() + text.size();
  switch (key.kind) {
    case Kind::Int:
    case Kind::Int32: {
      int64_t v = 0;
      auto r = std::from_chars(b, e, v);
      if (r.ec == std::errc::result_out_of_range)
        fail(where, key.path(), expected + ", got '" + text + "' (out of range)");
      if (r.ec != std::errc() || r.ptr != e || text.empty()) fail(where, key.path(), expected + ", got '" + text + "'");
      if (key.kind == Kind::Int32) {
        if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
          fail(where, key.path(), expected + ", got '" + text + "' (out of range)");
        *static_cast<int*>(field) = static_cast<int>(v);
      } else {
        *static_cast<int64_t*>(field) = v;
      }
      return;
    }
    case Kind::UInt: {
      uint64_t v = 0;
      if (!text.empty() && text[0] == '-') fail(where, key.path(), expected + ", got '" + text + "'");
      auto r = std::from_chars(b, e, v);
      if (r.ec == std::errc::result_out_of_range)
        fail(where, key.path(), expected + ", got '" + text + "' (out of range)");
      if (r.ec != std::errc() || r.ptr != e || text.empty()) fail(where, key.path(), expected + ", got '" + text + "'");
      *static_cast<uint64_t*>(field) = v;
      return;
    }
    case Kind::Double: {
      // strtod would also take "inf", "nan" and hex floats; a config value is a plain decimal number.
      const bool plain = !text.empty() && text.find_first_not_of("0123456789+-.eE") == std::string::npos;
      errno = 0;
      char* end = nullptr;
      const double v = plain ? std::strtod(text.c_str(), &end) : 0.0;
      if (!plain || end != text.c_str() + text.size() || !std::isfinite(v) || errno == ERANGE)
        fail(where, key.path(), expected + ", got '" + text + "'");
      *static_cast<double*>(field) = v;
      return;
    }
    case Kind::Bool: {
      const std::string t = to_lower(text);
      if (t == "true" || t == "yes" || t == "on")
        *static_cast<bool*>(field) = true;
      else if (t == "false" || t == "no" || t == "off")
        *static_cast<bool*>(field) = false;
      else
        fail(where, key.path(), expected + ", got '" + text + "'");
      return;
    }
    case Kind::String:
    case Kind::StringList:
    case Kind::StepRange:
      break;
  }
}

/// The numeric value of a key (for range checks); strings and bools have none.
std::optional<double> numeric(RecipeConfig& cfg, const Key& k) {
  void* f = k.field(cfg);
  switch (k.kind) {
    case Kind::Int:
      return static_cast<double>(*static_cast<int64_t*>(f));
    case Kind::Int32:
      return static_cast<double>(*static_cast<int*>(f));
    case Kind::UInt:
      return static_cast<double>(*static_cast<uint64_t*>(f));
    case Kind::Double:
      return *static_cast<double*>(f);
    default:
      return std::nullopt;
  }
}

std::string yaml_quote(const std::string& s);

std::string value_text(RecipeConfig& cfg, const Key& k) {
  void* f = k.field(cfg);
  switch (k.kind) {
    case Kind::Int:
      return std::to_string(*static_cast<int64_t*>(f));
    case Kind::Int32:
      return std::to_string(*static_cast<int*>(f));
    case Kind::UInt:
      return std::to_string(*static_cast<uint64_t*>(f));
    case Kind::Double:
      return fmt_double(*static_cast<double*>(f));
    case Kind::Bool:
      return *static_cast<bool*>(f) ? "true" : "false";
    case Kind::String:
      return *static_cast<std::string*>(f);
    case Kind::StringList: {  // a YAML flow sequence
      std::string out = "[";
      for (const auto& v : *static_cast<std::vector<std::string>*>(f))
        out += (out.size() > 1 ? ", " : "") + yaml_quote(v);
      return out + "]";
    }
    case Kind::StepRange: {
      const auto& v = *static_cast<std::array<int64_t, 2>*>(f);
      return v[0] == 0 ? "null" : "[" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + "]";
    }
  }
  return "";
}

/// Where `path` ("section.key") was set; for a key left at its default, its section's line, else line 1.
std::string where_of(const RecipeConfig& cfg, const std::string& path) {
  if (auto it = cfg.origins.find(path); it != cfg.origins.end()) return it->second;
  const std::string section = path.substr(0, path.find('.'));
  if (auto it = cfg.origins.find(section); it != cfg.origins.end()) return it->second;
  return cfg.source_file + ":1";
}

bool is_set(const RecipeConfig& cfg, const std::string& path) { return cfg.origins.count(path) > 0; }

// ---- the parts of a YAML document -------------------------------------------------------------------------------

std::string line_of(const std::string& name, const YAML::Node& n) {
  const int line = n.Mark().line;
  return name + ":" + std::to_string(line >= 0 ? line + 1 : 1);
}

void read_document(RecipeConfig& cfg, const std::string& text, const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(name + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  if (!root.IsDefined() || root.IsNull())
    fail(name + ":1", "",
         "the config is empty; expected the sections " +
             join_quoted(std::vector<std::string>(std::begin(kSections), std::end(kSections))));
  if (!root.IsMap())
    fail(line_of(name, root), "", "expected a mapping of sections (model:, data:, training:, ...) at the top level");
  std::set<std::string> seen_sections;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string where = line_of(name, it->first);
    const std::string section = it->first.Scalar();
    if (!is_section(section)) unknown_section(where, section);
    if (!seen_sections.insert(section).second)
      fail(where, section, "duplicate section (first at " + cfg.origins[section] + ")");
    cfg.origins[section] = where;
    const YAML::Node body = it->second;
    if (body.IsNull()) continue;  // "logging:" with nothing under it: every key at its default
    if (!body.IsMap())
      fail(
          where, section,
          std::string("expected a mapping of keys, got ") + (body.IsSequence() ? "a list" : "'" + body.Scalar() + "'"));
    for (auto kv = body.begin(); kv != body.end(); ++kv) {
      const std::string kwhere = line_of(name, kv->first);
      const std::string key = kv->first.Scalar();
      const Key* k = find_key(section, key);
      if (!k) unknown_key(kwhere, section, key);
      if (is_set(cfg, k->path())) fail(kwhere, k->path(), "duplicate key (first at " + cfg.origins[k->path()] + ")");
      assign(cfg, *k, kv->second, kwhere);
      cfg.origins[k->path()] = kwhere;
    }
  }
}

void apply_override(RecipeConfig& cfg, const std::string& spec) {
  const std::string where = "--set " + spec;
  const size_t eq = spec.find('=');
  if (eq == std::string::npos) fail(where, "", "expected section.key=value");
  const std::string path = spec.substr(0, eq);
  const size_t dot = path.find('.');
  if (dot == std::string::npos) fail(where, path, "expected section.key (for example training.lr)");
  const std::string section = path.substr(0, dot), name = path.substr(dot + 1);
  if (!is_section(section)) unknown_section(where, section);
  const Key* k = find_key(section, name);
  if (!k) unknown_key(where, section, name);
  const std::string text = spec.substr(eq + 1);
  YAML::Node value;
  if (k->kind == Kind::String && (text.empty() || (text[0] != '"' && text[0] != '\''))) {
    // A path like "data/a: b #1.bin" is meant literally: as YAML it would be a mapping and a comment.
    value = YAML::Node(text);
  } else {
    try {
      value = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
      fail(where, path, "cannot read the value as YAML: " + e.msg);
    }
  }
  assign(cfg, *k, value, where);
  cfg.origins[path] = where;
}

// ---- validation -------------------------------------------------------------------------------------------------

int64_t mlp_hidden(const ModelConfig& m) {
  if (m.intermediate_size > 0) return m.intermediate_size;
  return m.family == "llama" ? llama_intermediate(m.n_embd) : 4 * m.n_embd;
}

void check_required(const RecipeConfig& cfg) {
  for (const auto& k : schema()) {
    if (!k.required || is_set(cfg, k.path())) continue;
    const bool has_section = cfg.origins.count(k.section) > 0;
    fail(where_of(cfg, k.path()), k.path(),
         "missing required key " + k.path() +
             (has_section ? " (add '" + k.name + ":' under '" + k.section + ":')"
                          : " (the config has no '" + k.section + ":' section)"));
  }
}

void check_ranges(RecipeConfig& cfg) {
  for (const auto& k : schema()) {
    const std::string where = where_of(cfg, k.path());
    if (!k.choices.empty()) {
      const std::string v = value_text(cfg, k);
      if (std::find(k.choices.begin(), k.choices.end(), v) == k.choices.end()) {
        std::string msg = "must be one of " + join_quoted(k.choices) + ", got '" + v + "'";
        if (auto c = closest(v, k.choices)) msg += "; did you mean '" + *c + "'?";
        fail(where, k.path(), msg);
      }
    }
    const auto v = numeric(cfg, k);
    if (!v) continue;
    const std::string got = ", got " + value_text(cfg, k);
    const bool lo_bad = k.lo && (k.lo_open ? !(*v > *k.lo) : !(*v >= *k.lo));
    const bool hi_bad = k.hi && (k.hi_open ? !(*v < *k.hi) : !(*v <= *k.hi));
    if (!lo_bad && !hi_bad) continue;
    if (k.lo && k.hi)
      fail(where, k.path(),
           "must be in " + std::string(k.lo_open ? "(" : "[") + fmt_bound(k.kind, *k.lo) + ", " +
               fmt_bound(k.kind, *k.hi) + (k.hi_open ? ")" : "]") + got);
    if (k.lo)
      fail(where, k.path(), std::string("must be ") + (k.lo_open ? "> " : ">= ") + fmt_bound(k.kind, *k.lo) + got);
    fail(where, k.path(), std::string("must be ") + (k.hi_open ? "< " : "<= ") + fmt_bound(k.kind, *k.hi) + got);
  }
}

std::string divisors_text(int64_t n, int64_t limit = 64) {
  std::string out;
  for (int64_t d = 1; d <= n && d <= limit; ++d)
    if (n % d == 0) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return out;
}

/// The multiples of `unit` just below and above `v`, as "a or b" (or just b when a would be 0).
std::string nearest_multiples(int64_t v, int64_t unit) {
  const int64_t below = v / unit * unit, above = below + unit;
  return below > 0 ? std::to_string(below) + " or " + std::to_string(above) : std::to_string(above);
}

/// tp must divide every dimension tensor parallelism splits (as parallel::tensor_parallelize requires).
void check_tp(const RecipeConfig& cfg) {
  const int64_t tp = cfg.parallelism.tp;
  if (tp <= 1) return;
  const ModelConfig& m = cfg.model;
  struct Dim {
    const char* key;
    int64_t value;
  };
  const Dim dims[] = {
      {"model.n_head", m.n_head},
      {"model.n_kv_head", m.n_kv_head > 0 ? m.n_kv_head : m.n_head},
      {"model.vocab_size", m.vocab_size},
      {m.family == "llama" ? "model.intermediate_size" : "model.n_embd * 4 (the MLP hidden size)", mlp_hidden(m)}};
  for (const auto& d : dims) {
    if (d.value % tp == 0) continue;
    int64_t g = d.value;  // the tp sizes that fit every dimension divide their gcd
    for (const auto& e : dims) g = std::gcd(g, e.value);
    std::string msg =
        "tp = " + std::to_string(tp) + " does not divide " + d.key + " = " + std::to_string(d.value) + " (" +
        where_of(cfg, std::string(d.key).substr(0, std::string(d.key).find(' '))) +
        "); tp sizes that divide n_head, n_kv_head, vocab_size and the MLP hidden size: " + divisors_text(g);
    if (std::string(d.key) == "model.vocab_size")
      msg += " (or pad vocab_size to a multiple of " + std::to_string(tp) + ", e.g. " +
             std::to_string((m.vocab_size + tp - 1) / tp * tp) + ")";
    fail(where_of(cfg, "parallelism.tp"), "parallelism.tp", msg);
  }
}

void check_consistency(RecipeConfig& cfg) {
  ModelConfig& m = cfg.model;
  if (m.n_embd % m.n_head != 0)
    fail(where_of(cfg, "model.n_embd"), "model.n_embd",
         "must be divisible by model.n_head (" + std::to_string(m.n_head) + "), got " + std::to_string(m.n_embd) +
             "; nearest that fit: " + nearest_multiples(m.n_embd, m.n_head));
  if (m.family == "gpt2") {
    if (m.n_kv_head != 0 && m.n_kv_head != m.n_head)
      fail(where_of(cfg, "model.n_kv_head"), "model.n_kv_head",
           "GPT-2 has no grouped-query attention: n_kv_head must equal model.n_head (" + std::to_string(m.n_head) +
               ") or be left out, got " + std::to_string(m.n_kv_head));
    if (m.intermediate_size != 0 && m.intermediate_size != 4 * m.n_embd)
      fail(where_of(cfg, "model.intermediate_size"), "model.intermediate_size",
           "GPT-2's MLP hidden size is 4 * n_embd = " + std::to_string(4 * m.n_embd) +
               ": leave it out or set it to that, got " + std::to_string(m.intermediate_size));
    if (m.rope_theta != 10000.0)
      fail(where_of(cfg, "model.rope_theta"), "model.rope_theta",
           "GPT-2 has learned position embeddings, not RoPE: rope_theta applies to family 'llama' only");
  } else {
    if (m.n_kv_head != 0 && m.n_head % m.n_kv_head != 0)
      fail(where_of(cfg, "model.n_kv_head"), "model.n_kv_head",
           "must divide model.n_head (" + std::to_string(m.n_head) + "), got " + std::to_string(m.n_kv_head) +
               "; values that fit: " + divisors_text(m.n_head));
    if ((m.n_embd / m.n_head) % 2 != 0)
      fail(where_of(cfg, "model.n_embd"), "model.n_embd",
           "the head size n_embd / n_head = " + std::to_string(m.n_embd / m.n_head) + " must be even for RoPE");
  }
  // Family defaults, filled in so that every consumer (and to_yaml) sees the resolved values.
  if (m.n_kv_head == 0) m.n_kv_head = m.n_head;
  if (m.intermediate_size == 0) m.intermediate_size = mlp_hidden(m);
  if (!is_set(cfg, "model.tie_embeddings")) m.tie_embeddings = m.family == "gpt2";

  const DataConfig& d = cfg.data;
  if (d.source != "synthetic" && d.train_path.empty())
    fail(where_of(cfg, "data.train_path"), "data.train_path",
         (is_set(cfg, "data.train_path") ? "must not be empty" : "missing required key data.train_path") +
             std::string(" (data.source '") + d.source + "' reads its tokens from files)");

  const TrainingConfig& t = cfg.training;
  try {
    (void)nn::ActivationCheckpointing::parse(t.activation_checkpointing);
  } catch (const InvalidArgument&) {
    fail(where_of(cfg, "training.activation_checkpointing"), "training.activation_checkpointing",
         "must be one of none, full, selective, selective:K (K a positive integer: every K-th block full), got '" +
             t.activation_checkpointing + "'");
  }
  if (t.min_lr > t.lr)
    fail(where_of(cfg, "training.min_lr"), "training.min_lr",
         "must be <= training.lr (" + fmt_double(t.lr) + "), got " + fmt_double(t.min_lr));
  if (t.warmup_steps > t.steps)
    fail(where_of(cfg, "training.warmup_steps"), "training.warmup_steps",
         "must be <= training.steps (" + std::to_string(t.steps) + "), got " + std::to_string(t.warmup_steps));
  const int64_t seq_tokens = m.seq_len * t.micro_batch;
  if (t.global_batch_tokens % seq_tokens != 0)
    fail(where_of(cfg, "training.global_batch_tokens"), "training.global_batch_tokens",
         "must be a multiple of model.seq_len * training.micro_batch = " + std::to_string(m.seq_len) + " * " +
             std::to_string(t.micro_batch) + " = " + std::to_string(seq_tokens) + ", got " +
             std::to_string(t.global_batch_tokens) +
             "; nearest that fit: " + nearest_multiples(t.global_batch_tokens, seq_tokens));

  const ParallelismConfig& p = cfg.parallelism;
  if (p.cpu_offload && p.fsdp <= 1)
    fail(where_of(cfg, "parallelism.cpu_offload"), "parallelism.cpu_offload",
         "offloads FSDP shards: it needs parallelism.fsdp > 1 (fsdp is " + std::to_string(p.fsdp) + ")");
  check_tp(cfg);

  const CheckpointConfig& c = cfg.checkpoint;
  if (c.resume != "auto" && c.resume != "never") {
    const std::string last =
        c.resume.substr(c.resume.find_last_of('/') == std::string::npos ? 0 : c.resume.find_last_of('/') + 1);
    const bool step_dir =
        last.size() > 5 && last.rfind("step_", 0) == 0 && last.find_first_not_of("0123456789", 5) == std::string::npos;
    if (!step_dir)
      fail(where_of(cfg, "checkpoint.resume"), "checkpoint.resume",
           "must be 'auto', 'never' or a step_NNNNNNNN checkpoint directory, got '" + c.resume + "'");
  }
}

void finish(RecipeConfig& cfg) {
  check_required(cfg);
  check_ranges(cfg);
  check_consistency(cfg);
}

/// A YAML double-quoted scalar that reads back as exactly `s`.
std::string yaml_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"')
      out += "\\\"";
    else if (ch == '\\')
      out += "\\\\";
    else if (ch == '\n')
      out += "\\n";
    else if (ch == '\t')
      out += "\\t";
    else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    } else
      out += static_cast<char>(ch);
  }
  return out + "\"";
}

}  // namespace

int64_t llama_intermediate(int64_t n_embd) {
  // Hugging Face / Meta: hidden = 2 * (4 n_embd) / 3, rounded up to a multiple of 256.
  const int64_t h = 2 * 4 * n_embd / 3;
  return (h + 255) / 256 * 256;
}

int64_t TrainingConfig::grad_accum_steps(int64_t seq_len, int64_t dp_world) const {
  const int64_t unit = seq_len * micro_batch * dp_world;
  if (unit <= 0)
    throw ConfigError("training.grad_accum_steps: seq_len (" + std::to_string(seq_len) + "), micro_batch (" +
                      std::to_string(micro_batch) + ") and dp_world (" + std::to_string(dp_world) + ") must be >= 1");
  if (global_batch_tokens % unit != 0 || global_batch_tokens == 0) {
    std::string msg = "training.global_batch_tokens: " + std::to_string(global_batch_tokens) +
                      " tokens do not split into whole micro-batches: model.seq_len (" + std::to_string(seq_len) +
                      ") * training.micro_batch (" + std::to_string(micro_batch) + ") * dp_world (" +
                      std::to_string(dp_world) + ") = " + std::to_string(unit) +
                      " must divide it; global_batch_tokens that fit: " + nearest_multiples(global_batch_tokens, unit);
    const int64_t per_seq = seq_len * dp_world;
    if (global_batch_tokens % per_seq == 0)
      msg += "; or a training.micro_batch that divides " + std::to_string(global_batch_tokens / per_seq) + ": " +
             divisors_text(global_batch_tokens / per_seq);
    throw ConfigError(msg);
  }
  return global_batch_tokens / unit;
}

bool RecipeConfig::operator==(const RecipeConfig& o) const {
  return model == o.model && data == o.data && training == o.training && parallelism == o.parallelism &&
         checkpoint == o.checkpoint && logging == o.logging;
}

std::string RecipeConfig::to_yaml() const {
  RecipeConfig copy = *this;  // the schema's accessors take a mutable config
  std::ostringstream os;
  // No file name or date in the text: checkpoints compare it with the running config, and a resume from another
  // working directory is the same config.
  os << "# resolved pretraining config: every key, defaults filled in\n";
  std::string section;
  for (const auto& k : schema()) {
    if (k.section != section) {
      section = k.section;
      os << section << ":\n";
    }
    const std::string v = value_text(copy, k);
    std::string text = k.kind == Kind::String ? yaml_quote(v) : v;
    // "1.0" and "3.0e-04", not "1" and "3e-04": YAML 1.1 readers (PyYAML) take those for an int and a string.
    if (k.kind == Kind::Double && text.find('.') == std::string::npos) {
      const size_t e = text.find('e');
      text.insert(e == std::string::npos ? text.size() : e, ".0");
    }
    os << "  " << k.name << ": " << text << "\n";
  }
  return os.str();
}

RecipeConfig parse_config(const std::string& yaml_text, const std::string& name,
                          const std::vector<std::string>& overrides) {
  RecipeConfig cfg;
  cfg.source_file = name;
  read_document(cfg, yaml_text, name);
  for (const auto& o : overrides) apply_override(cfg, o);
  finish(cfg);
  return cfg;
}

RecipeConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open the config file: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path + ": cannot read the config file: " + std::strerror(errno));
  return parse_config(text.str(), path, overrides);
}

RecipeConfig resolve_layout(RecipeConfig cfg, int world_size) {
  ParallelismConfig& p = cfg.parallelism;
  const std::string where = where_of(cfg, "parallelism");
  if (world_size < 1) throw ConfigError("resolve_layout: world size must be >= 1, got " + std::to_string(world_size));
  const int64_t inner = static_cast<int64_t>(p.fsdp) * p.tp;
  if (p.dp == 0) {
    if (world_size % inner != 0)
      fail(where_of(cfg, is_set(cfg, "parallelism.fsdp") ? "parallelism.fsdp" : "parallelism.tp"), "parallelism",
           "fsdp (" + std::to_string(p.fsdp) + ") * tp (" + std::to_string(p.tp) + ") = " + std::to_string(inner) +
               " does not divide the world size " + std::to_string(world_size) +
               ", so dp cannot be filled in; fsdp * tp must be one of " + divisors_text(world_size, world_size));
    p.dp = static_cast<int>(world_size / inner);
  } else if (p.dp * inner != world_size) {
    std::string msg = "dp (" + std::to_string(p.dp) + ") * fsdp (" + std::to_string(p.fsdp) + ") * tp (" +
                      std::to_string(p.tp) + ") = " + std::to_string(p.dp * inner) + " but the world has " +
                      std::to_string(world_size) + " ranks; ";
    if (world_size % inner == 0)
      msg += "set parallelism.dp to " + std::to_string(world_size / inner) + " (or 0 to fill it in)";
    else
      msg += "fsdp * tp must divide the world size: one of " + divisors_text(world_size, world_size);
    fail(where_of(cfg, "parallelism.dp"), "parallelism", msg);
  }
  check_tp(cfg);
  try {
    (void)cfg.training.grad_accum_steps(cfg.model.seq_len, p.dp_world());
  } catch (const ConfigError& e) {
    throw ConfigError(where_of(cfg, "training.global_batch_tokens") + ": " + e.what() + " (world size " +
                      std::to_string(world_size) + ", dp " + std::to_string(p.dp) + ", fsdp " + std::to_string(p.fsdp) +
                      ")");
  }
  return cfg;
}

namespace {

/// A model's parameters split by what tensor parallelism does to them, per block and outside the blocks.
struct ParamSplit {
  int64_t block_sharded = 0, block_replicated = 0;  // one transformer block
  int64_t root_sharded = 0, root_replicated = 0;    // embeddings, final norm, untied head
};

ParamSplit split_parameters(const ModelConfig& m) {
  const int64_t C = m.n_embd, V = m.vocab_size;
  const int64_t H = m.n_head, Hkv = m.n_kv_head > 0 ? m.n_kv_head : m.n_head;
  const int64_t D = H > 0 ? C / H : 0, I = mlp_hidden(m);
  const bool tied = m.tie_embeddings;
  ParamSplit s;
  if (m.family == "gpt2") {
    // Column-parallel c_attn and c_fc shard weight and bias; row-parallel c_proj shard the weight, keep the bias.
    s.block_sharded = C * (H + 2 * Hkv) * D + (H + 2 * Hkv) * D  // attn.c_attn
                      + H * D * C                                // attn.c_proj.weight
                      + C * I + I                                // mlp.c_fc
                      + I * C;                                   // mlp.c_proj.weight
    s.block_replicated = C + C + 2 * C + 2 * C;                  // c_proj biases, ln_1, ln_2
    s.root_sharded = V * C + (tied ? 0 : V * C);                 // wte (vocab-parallel), lm_head
    s.root_replicated = m.seq_len * C + 2 * C;                   // wpe, ln_f
  } else {
    s.block_sharded = C * H * D + 2 * C * Hkv * D + H * D * C  // q, k, v, o
                      + 3 * C * I;                             // gate, up, down
    s.block_replicated = 2 * C;                                // input_layernorm, post_attention_layernorm
    s.root_sharded = V * C + (tied ? 0 : V * C);               // embed_tokens, lm_head
    s.root_replicated = C;                                     // norm
  }
  return s;
}

}  // namespace

int64_t parameter_count(const ModelConfig& m) {
  const ParamSplit s = split_parameters(m);
  return m.n_layer * (s.block_sharded + s.block_replicated) + s.root_sharded + s.root_replicated;
}

namespace {

/// One transformer block's activation memory, in bytes per token of the micro-batch (see estimate_memory_per_rank).
struct BlockActivations {
  double full = 0;             // what the block's ops save for backward, no checkpointing
  double selective = 0;        // selective checkpointing: its input, every matmul's output, attention's out and lse
  double input = 0;            // its input (B, T, C): all that full checkpointing keeps
  double selective_extra = 0;  // kept by selective checkpointing but not among full's saved tensors (matmul outputs
                               // the unfused graph lets go): live beside the recomputed block
  double transient = 0;  // the most its backward holds beyond the saved tensors (activation gradients, temporaries)
};

/// What each op of a block saves, as autograd/functions.cc, autograd/attention.cc, nn/*.cc and
/// parallel/tensor_parallel.cc have it. ea: the activations' element size; ee: that of the tensors attention saves
/// (the CPU kernel computes bf16 attention in f32); fused: attention saves q, k, v, out and lse (the CPU kernel and
/// CUDA's flash kernel) rather than the composed ops' (B, H, T, T) probabilities; cpu_half: bf16 on the CPU, whose
/// matrix products convert their operands to f32.
BlockActivations block_activations(const ModelConfig& m, int64_t tp, double ea, double ee, bool fused, bool cpu_half) {
  const double C = static_cast<double>(m.n_embd), H = static_cast<double>(m.n_head);
  const double Hkv = static_cast<double>(m.n_kv_head > 0 ? m.n_kv_head : m.n_head);
  const double D = C / H, I = static_cast<double>(mlp_hidden(m)), T = static_cast<double>(m.seq_len);
  const double t = static_cast<double>(tp), drop = m.dropout > 0.0 ? 1.0 : 0.0;
  const bool gpt2 = m.family == "gpt2";
  const double q = H * D / t, kv = 2.0 * Hkv * D / t, grouped = Hkv < H ? 1.0 : 0.0;
  BlockActivations a;
  // Replicated over tp: the input (saved by the first norm), the first norm's output (the q/k/v or c_attn matmuls'
  // input), the residual sum and the second norm's output (the MLP's input); the norms' f32 row statistics.
  const double replicated = 4.0 * C * ea + (gpt2 ? 4.0 : 2.0) * 4.0;
  double attention = 0;
  if (fused) {
    attention = (q + kv) * ee + q * ee + (H / t) * 4.0;  // q, k, v; out; lse
  } else {
    // Composed ops: q and k, v repeated to every query head; the softmax output (B, H, T, T); with dropout its u8
    // mask and the dropped-out probabilities.
    attention = (q + (grouped > 0 ? 2.0 * q : kv)) * ea + (H / t) * T * (ea + drop * (ea + 1.0));
  }
  const double out_heads = q * ea;  // attention's output back in (B, T, C) layout: the output projection's input
  const double mlp = gpt2 ? 2.0 * I / t * ea           // c_fc's pre-activation (linear_gelu) and the GELU output
                          : 4.0 * I / t * ea;          // gate, SiLU(gate), up, SiLU(gate) * up
  const double masks = drop * (gpt2 ? 2.0 : 1.0) * C;  // u8 dropout masks after the projections
  a.full = replicated + attention + out_heads + mlp + masks;
  a.input = C * ea;
  // Matmul outputs: q, k, v (or c_attn), the output projection, the MLP's up-projections (GPT-2's fused c_fc + GELU:
  // its product, and in 16-bit also the GELU's output; Llama: gate and up) and its down projection.
  a.selective = C * ea + (q + kv) * ea + C * ea + (gpt2 && ea == 4.0 ? 1.0 : 2.0) * I / t * ea + C * ea +
                (fused ? q * ee + (H / t) * 4.0 : q * ea) + masks;
  // GPT-2: c_attn's output (split into q, k, v copies) and the two c_proj outputs; Llama: the q, k, v projections'
  // outputs (before the head layout and RoPE), o_proj's and down_proj's.
  a.selective_extra = (q + kv) * ea + 2.0 * C * ea;
  // Backward: the residual stream's gradient, plus the larger of the MLP's (GPT-2: the GELU input's and output's
  // gradients while the GELU output is freed; Llama: SwiGLU's two products' gradients beside the product's) and
  // attention's (the gradient of out and of q, k, v; per-query-head k/v gradients under grouped-query attention;
  // the composed ops' (B, H, T, T) gradient and probabilities). Column-parallel inputs clone their gradient for the
  // all-reduce.
  const double mlp_bwd = (gpt2 ? 1.0 : 2.0) * I / t * ea;
  const double attn_bwd = fused ? (2.0 * q + kv + grouped * 2.0 * q) * ee : 2.0 * (H / t) * T * ea + (q + kv) * ea;
  a.transient = C * ea + std::max(mlp_bwd, attn_bwd) + (tp > 1 ? C * ea : 0.0);
  // The CPU multiplies bf16 in f32: the MLP's weight-gradient product converts its (N, I) gradient and (N, C) input.
  if (cpu_half) a.transient += 4.0 * (I / t + C);
  return a;
}

}  // namespace

// Memory per rank, in bytes: the tensors live at the step's peak, which is found by walking the step's phases (the
// same bookkeeping the code does; tensor/storage.h counts the same bytes, so a CPU run's peak_mem_bytes checks it):
//   persistent  the f32 parameters (their 1/W shard under FullyShard), the optimizer state (AdamW: two f32 moments;
//               SGD: the momentum buffer, training.beta1 > 0), DDP's flat buckets (a copy of every gradient), and
//               under FullyShard the f32 gradient shard. W: fsdp (HSDP: dp x fsdp replicates fsdp-shards), or dp
//               under bf16 without fsdp (the recipe then uses FullyShard over the data-parallel group).
//   loss        end of forward: every block's saved activations (checkpointing: only what it keeps), the final
//               norm's input and output, the logits (B T V / tp) and their gradient; FullyShard: the root unit
//               gathered (embeddings, final norm, head), every block too without reshard_after_forward.
//   block i     its backward (i = L-1 .. 0): the activations kept by blocks < i, block i's full set (recomputed
//               under checkpointing, beside its recomputed output, the outer gradient and, selective, the matmul
//               outputs kept), its backward temporaries; gradients: without FullyShard every one produced so far
//               (all of them from the first micro-step on under accumulation), under FullyShard the root's full
//               gradients (the head's, until the embedding's arrives at the end), block i's, the shard's part of
//               the blocks done, and the previous block's reduce-scatter input (f32, in flight; HSDP: the previous
//               two, the replica all-reduce waiting on the reduce-scatter); gathered: the root and blocks i and i-1.
//   end         every gradient (DDP: plus a copy of the largest, as the averages replace them), or FullyShard's root
//               reduce-scatter input beside the root's gradients.
// Activations are per token (block_activations) times micro_batch x seq_len. Not counted: the CUDA context, NCCL's
// buffers, the caching allocator's fragmentation (its reserved bytes exceed the tensors' by ~5-15 %), single ops'
// scratch (BLAS, the attention kernel's per-thread rows); on a GPU keep ~10 % headroom above the estimate.
MemoryEstimate estimate_memory_per_rank(const RecipeConfig& cfg_in, int world_size, std::optional<bool> on_cuda) {
  const RecipeConfig cfg = resolve_layout(cfg_in, world_size);
  const ModelConfig& m = cfg.model;
  const ParallelismConfig& p = cfg.parallelism;
  const TrainingConfig& tr = cfg.training;
  const int64_t tp = p.tp;
  const bool bf16 = tr.precision == "bf16";
  const bool cuda = on_cuda.value_or(p.backend == "nccl");
  // The layout as pretrain builds it: FullyShard when fsdp > 1 or under bf16 (over the fsdp group, else over the
  // data-parallel group), DDP over dp ranks otherwise.
  const bool sharded = p.fsdp > 1 || bf16;
  const int64_t W = p.fsdp > 1 ? p.fsdp : (sharded ? p.dp : 1);
  const bool ddp = !sharded && p.dp > 1;
  const bool hsdp = p.fsdp > 1 && p.dp > 1;  // FullyShard over fsdp, its shard gradients all-reduced over dp
  const int64_t accum = tr.grad_accum_steps(m.seq_len, p.dp_world());
  const nn::ActivationCheckpointing ck = nn::ActivationCheckpointing::parse(tr.activation_checkpointing);

  const ParamSplit s = split_parameters(m);
  const int64_t block_local = s.block_sharded / tp + s.block_replicated;
  const int64_t root_local = s.root_sharded / tp + s.root_replicated;
  const int64_t P = m.n_layer * block_local + root_local;
  const int64_t shard = (P + W - 1) / W;
  const double head = static_cast<double>(m.vocab_size * m.n_embd / tp);  // the head's (or tied embedding's) weight
  const double pe = bf16 ? 2.0 : 4.0;                                     // gathered parameters and their gradients

  // Activations, bytes per token.
  const double ea = bf16 ? 2.0 : 4.0;
  const int64_t head_dim = m.n_head > 0 ? m.n_embd / m.n_head : 0;
  const bool flash_head = head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128;
  const bool fused = !cuda || (flash_head && m.dropout == 0.0);
  const double ee = cuda ? ea : 4.0;
  const BlockActivations blk = block_activations(m, tp, ea, ee, fused, !cuda && bf16);
  using autograd::CheckpointMode;
  auto mode_of = [&](int64_t i) { return ck.block_mode(static_cast<size_t>(i)); };  // selective:K: 0, K, ... full
  // The block being recomputed: its full set of saved tensors, beside what selective checkpointing kept of it; a
  // checkpointed block's backward also holds the recomputed output and the gradient the outer pass hands to the
  // region's nested backward (two (B, T, C) tensors).
  auto recomputed = [&](int64_t i) {
    const CheckpointMode md = mode_of(i);
    if (md == CheckpointMode::kNone) return blk.full;
    return blk.full + 2.0 * blk.input + (md == CheckpointMode::kSelective ? blk.selective_extra : 0.0);
  };
  auto kept = [&](int64_t i) {
    const CheckpointMode md = mode_of(i);
    return md == CheckpointMode::kFull ? blk.input : md == CheckpointMode::kSelective ? blk.selective : blk.full;
  };
  const double tokens = static_cast<double>(tr.micro_batch * m.seq_len);
  const double C = static_cast<double>(m.n_embd), V = static_cast<double>(m.vocab_size), t = static_cast<double>(tp);
  // The final norm's input and output (saved by it and by the head), the logits and their gradient; vocab-parallel
  // cross-entropy (tp > 1) works on an f32 host copy of the logits, which on a CPU run is the same memory.
  const double root_saved = 2.0 * C * ea + 8.0 + (m.dropout > 0.0 ? C : 0.0);
  double logits = V / t * ea, dlogits = V / t * ea;
  if (tp > 1 && !cuda) logits = dlogits = V / t * 4.0 + (bf16 ? V / t * ea : 0.0);
  if (tp > 1 && cuda) logits = 0.0;  // only the f32 host copy is saved; the device holds the logits or their gradient

  // Persistent state.
  const double opt_per_elem = tr.optimizer == "adamw" ? 8.0 : (tr.beta1 > 0.0 ? 4.0 : 0.0);
  const double n_own = static_cast<double>(sharded ? shard : P);
  const double own_params = 4.0 * n_own, own_opt = opt_per_elem * n_own;
  const bool offload = sharded && p.cpu_offload;
  // FullyShard's f32 gradient shard: a unit's part of it appears when its first reduce-scatter is accumulated (the
  // step starts with none), so within the first micro-step it grows block by block.
  const double own_grads = sharded ? 4.0 * n_own : 0.0;
  auto shard_grads = [&](double units_done) {
    if (offload || !sharded) return 0.0;
    if (accum > 1) return own_grads;
    const double done = std::max(0.0, units_done);
    return std::min(own_grads, 4.0 * done * static_cast<double>(block_local) / static_cast<double>(W));
  };
  const double buckets = ddp ? 4.0 * static_cast<double>(P) : 0.0;
  const double root_full = pe * static_cast<double>(root_local), block_full = pe * static_cast<double>(block_local);

  struct Phase {
    double params = 0, grads = 0, acts = 0, buffers = 0, transient = 0;
    double total() const { return params + grads + acts + buffers + transient; }
  };
  std::vector<Phase> phases;
  const double all_grads = 4.0 * static_cast<double>(P);  // unsharded gradients, f32
  const double accumulated = !sharded && accum > 1 ? all_grads : 0.0;
  double kept_all = 0;
  for (int64_t i = 0; i < m.n_layer; ++i) kept_all += kept(i);
  const double L = static_cast<double>(m.n_layer);

  // Loss: every kept activation, the logits and their gradient.
  {
    Phase ph;
    ph.params = sharded ? root_full + (p.reshard_after_forward ? 0.0 : L * block_full) : 0.0;
    ph.grads = accumulated + shard_grads(0);
    ph.acts = tokens * (kept_all + root_saved + logits);
    ph.transient = tokens * dlogits;
    phases.push_back(ph);
    // The head's backward: its input gradient and weight gradient beside the logits' gradient.
    Phase hd = ph;
    hd.acts = tokens * (kept_all + root_saved);
    hd.transient = tokens * (dlogits + C * ea);
    hd.grads = sharded ? pe * head + shard_grads(0) : std::max(accumulated, 4.0 * head);
    phases.push_back(hd);
  }
  // Each block's backward.
  double kept_below = kept_all;
  for (int64_t i = m.n_layer - 1; i >= 0; --i) {
    kept_below -= kept(i);
    Phase ph;
    const double blocks_done = static_cast<double>(m.n_layer - i);  // blocks i .. L-1 have (or are making) gradients
    if (sharded) {
      const double gathered = p.reshard_after_forward ? std::min(2.0, L) : static_cast<double>(i + 1);
      ph.params = root_full + gathered * block_full;
      // Blocks above i + 1 are reduced and accumulated into the shard; block i + 1's reduce-scatter is in flight.
      ph.grads = pe * head + block_full + shard_grads(blocks_done - 2.0);
      // Block i+1's reduce-scatter input, in flight; under HSDP also block i+2's, whose replica all-reduce starts only
      // once its reduce-scatter is done (the buffer goes when both are).
      const double in_flight = std::min(static_cast<double>(m.n_layer - 1 - i), hsdp ? 2.0 : 1.0);
      ph.buffers = in_flight * 4.0 * static_cast<double>(block_local);
    } else {
      ph.grads = std::max(accumulated, 4.0 * (head + blocks_done * static_cast<double>(block_local)));
    }
    ph.acts = tokens * (kept_below + recomputed(i));
    ph.transient = tokens * blk.transient;
    phases.push_back(ph);
  }
  // End of backward.
  {
    Phase ph;
    if (sharded) {
      ph.params = root_full;
      ph.grads = root_full + shard_grads(L);  // the root's gradients, in the parameters' dtype, and the shard
      ph.buffers = 4.0 * static_cast<double>(root_local + block_local);  // root and block 0 reduce-scatter inputs
    } else {
      ph.grads = all_grads;
      ph.transient = ddp ? 4.0 * head : 0.0;  // an averaged gradient's copy beside the one it replaces
    }
    phases.push_back(ph);
  }

  const Phase* peak = &phases.front();
  for (const Phase& ph : phases)
    if (ph.total() > peak->total()) peak = &ph;
  MemoryEstimate e;
  e.params = static_cast<int64_t>((offload ? 0.0 : own_params) + peak->params);
  e.grads = static_cast<int64_t>(peak->grads);
  e.optimizer = static_cast<int64_t>(offload ? 0.0 : own_opt);
  e.activations = static_cast<int64_t>(peak->acts);
  e.buffers = static_cast<int64_t>(buckets + peak->buffers);
  e.transient = static_cast<int64_t>(peak->transient);
  e.total = e.params + e.grads + e.optimizer + e.activations + e.buffers + e.transient;
  if (offload) e.host_offloaded = static_cast<int64_t>(own_params + own_grads + own_opt);
  return e;
}

TrafficEstimate estimate_traffic_per_rank(const RecipeConfig& cfg_in, int world_size) {
  const RecipeConfig cfg = resolve_layout(cfg_in, world_size);
  const ParallelismConfig& p = cfg.parallelism;
  const ParamSplit s = split_parameters(cfg.model);
  const double block_local = static_cast<double>(s.block_sharded / p.tp + s.block_replicated);
  const double root_local = static_cast<double>(s.root_sharded / p.tp + s.root_replicated);
  const double local = static_cast<double>(cfg.model.n_layer) * block_local + root_local;
  const double accum = static_cast<double>(cfg.training.grad_accum_steps(cfg.model.seq_len, p.dp_world()));
  const bool bf16 = cfg.training.precision == "bf16";
  const double elt = bf16 ? 2.0 : 4.0, grad_elt = 4.0;  // gathered parameters; gradients reduce in f32
  TrafficEstimate t;
  // FullyShard runs over fsdp; under bf16 with fsdp 1 it runs over the dp group in place of DDP.
  const bool fsdp_over_dp = p.fsdp == 1 && bf16;
  const int shard_ranks = fsdp_over_dp ? p.dp : p.fsdp;
  if (shard_ranks > 1) {
    const double share = static_cast<double>(shard_ranks - 1) / shard_ranks;
    const double regather = p.reshard_after_forward ? local - root_local : 0.0;  // the root stays gathered
    t.shard = static_cast<int64_t>(accum * share * ((local + regather) * elt + local * grad_elt));
    t.shard_ranks = shard_ranks;
  }
  if (p.fsdp > 1 && p.dp > 1) {
    const double shard = std::ceil(local / p.fsdp);
    t.replica = static_cast<int64_t>(accum * 2.0 * (p.dp - 1) / p.dp * shard * grad_elt);
    t.replica_ranks = p.dp;
  } else if (p.fsdp == 1 && p.dp > 1 && !bf16) {
    t.dp = static_cast<int64_t>(2.0 * (p.dp - 1) / p.dp * local * grad_elt);
    t.dp_ranks = p.dp;
  }
  return t;
}

}  // namespace loom::recipes
