#include "checkpoint/json.h"

namespace loom::checkpoint {

Json parse_json(const std::string& text, const std::string& context) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    LOOM_THROW(InvalidArgument, context, ": JSON parse error at byte ", e.byte, ": ", e.what());
  }
}

const Json* json_find(const Json& j, const std::string& key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

const Json& json_at(const Json& j, const std::string& key, const std::string& context) {
  const Json* v = json_find(j, key);
  if (v == nullptr)
    LOOM_THROW(InvalidArgument, context, ": missing key '", key, "'", j.is_object() ? "" : " (not a JSON object)");
  return *v;
}

std::string dump_json(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace loom::checkpoint
