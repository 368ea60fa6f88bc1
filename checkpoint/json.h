// JSON for checkpoint metadata and safetensors headers: nlohmann::ordered_json (Debian's nlohmann-json; an object
// keeps its members in the order they were set, so metadata.json reads in the order it is written), plus the few
// helpers that turn its errors into loom's: a parse error names the file and byte, a missing key the file and key.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "tensor/error.h"

namespace loom::checkpoint {

using Json = nlohmann::ordered_json;

/// Parses text. Throws InvalidArgument "<context>: JSON parse error at byte N: ..." on malformed input.
Json parse_json(const std::string& text, const std::string& context = "json");

/// Member `key` of object j. Throws InvalidArgument naming context and key when j is not an object or lacks it.
const Json& json_at(const Json& j, const std::string& key, const std::string& context = "json");

/// Member `key` of object j, or nullptr when j is not an object or lacks it.
const Json* json_find(const Json& j, const std::string& key);

/// Compact text without spaces (the layout loom's checkpoints have always had). Bytes in strings that are not UTF-8
/// are written as U+FFFD rather than failing the save.
std::string dump_json(const Json& j);

}  // namespace loom::checkpoint
