// A small JSON value (null, bool, number, string, array, object with
// insertion order kept) with a strict parser and a compact writer; used for
// safetensors headers and checkpoint metadata.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/error.h"

namespace loom::checkpoint {

class Json {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Json() = default;
  explicit Json(bool b) : kind_(Kind::kBool), bool_(b) {}
  explicit Json(double d) : kind_(Kind::kNumber), number_(d) {}
  explicit Json(std::string s) : kind_(Kind::kString), string_(std::move(s)) {}
  explicit Json(const char* s) : kind_(Kind::kString), string_(s) {}
  static Json array() {
    Json j;
    j.kind_ = Kind::kArray;
    return j;
  }
  static Json object() {
    Json j;
    j.kind_ = Kind::kObject;
    return j;
  }
  /// Parses text; throws InvalidArgument with the byte offset of the error.
  static Json parse(const std::string& text);

  Kind kind() const { return kind_; }
  bool is_object() const { return kind_ == Kind::kObject; }
  bool is_array() const { return kind_ == Kind::kArray; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kNumber; }

  double as_number() const;
  const std::string& as_string() const;
  bool as_bool() const;
  const std::vector<Json>& elements() const;
  const std::vector<std::pair<std::string, Json>>& items() const;
  /// Member `key`; throws InvalidArgument naming context and key when absent.
  const Json& at(const std::string& key, const std::string& context = "json") const;
  const Json* find(const std::string& key) const;

  void push(Json v);
  /// Sets (or replaces) member key.
  void set(const std::string& key, Json v);
  std::string dump() const;

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
};

}  // namespace loom::checkpoint
