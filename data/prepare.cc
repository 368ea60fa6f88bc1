#include "data/prepare.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "tensor/error.h"

namespace loom::data {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

int token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

namespace {

constexpr const char* kProgress = "progress.json";

std::string shard_name(const std::string& split, int64_t index) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s_%06lld.bin", split.c_str(), static_cast<long long>(index));
  return buf;
}

void header_for(int64_t count, int width, int32_t* header) {
  std::memset(header, 0, kLlmcHeaderInts * sizeof(int32_t));
  header[0] = width == 2 ? kLlmcMagicU16 : kLlmcMagicU32;
  header[1] = width == 2 ? kLlmcVersionU16 : kLlmcVersionU32;
  header[2] = static_cast<int32_t>(count);
}

// Converts ids to the shard's width, checking each against the vocabulary.
void pack_tokens(std::span<const int32_t> ids, int64_t vocab_size, int width, std::vector<char>& out) {
  out.resize(ids.size() * static_cast<size_t>(width));
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t t = ids[i];
    if (t < 0 || t >= vocab_size)
      LOOM_THROW(InvalidArgument, "token id ", t, " is outside the vocabulary of ", vocab_size, " tokens");
    if (width == 2) {
      const uint16_t v = static_cast<uint16_t>(t);
      std::memcpy(out.data() + 2 * i, &v, 2);
    } else {
      const uint32_t v = static_cast<uint32_t>(t);
      std::memcpy(out.data() + 4 * i, &v, 4);
    }
  }
}

void write_all(std::FILE* f, const void* data, size_t n, const std::string& path) {
  if (n > 0 && std::fwrite(data, 1, n, f) != n)
    LOOM_THROW(IoError, path, ": write failed: ", std::strerror(errno), " (disk full?)");
}

// Flushes stdio's buffer and the page cache of f to disk.
void sync_file(std::FILE* f, const std::string& path) {
  if (std::fflush(f) != 0 || ::fdatasync(::fileno(f)) != 0)
    LOOM_THROW(IoError, path, ": flush failed: ", std::strerror(errno));
}

bool is_jsonl(const std::string& path) {
  auto ends = [&](const char* s) {
    const size_t n = std::strlen(s);
    return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
  };
  return ends(".jsonl") || ends(".jsonl.gz") || ends(".ndjson") || ends(".ndjson.gz");
}

// The position of the next record: file index, uncompressed byte offset in it, its line number and the index of the
// record over all inputs.
struct Loc {
  int64_t file = 0, offset = 0, line = 1, record = 0;
};

struct Record {
  std::string text;  // a JSON line, or a text file's whole content
  bool json = false;
  int64_t file = 0, line = 0, record = 0;
};

// Reads the inputs' records in order, through zlib (which reads uncompressed files as they are).
class InputReader {
 public:
  InputReader(const std::vector<std::string>& files, Loc start) : files_(files), loc_(start) {}
  ~InputReader() { close(); }
  InputReader(const InputReader&) = delete;
  InputReader& operator=(const InputReader&) = delete;

  /// The next record; false after the last one.
  bool next(Record& r) {
    while (true) {
      if (gz_ == nullptr) {
        if (loc_.file >= static_cast<int64_t>(files_.size())) return false;
        open_current();
      }
      const std::string& path = files_[static_cast<size_t>(loc_.file)];
      if (!is_jsonl(path)) {
        r.text.clear();
        while (fill()) {
        }
        r.text.assign(buf_, pos_, std::string::npos);
        r.json = false;
        r.file = loc_.file;
        r.line = 1;
        r.record = loc_.record++;
        next_file();
        return true;
      }
      size_t nl;
      while ((nl = buf_.find('\n', pos_)) == std::string::npos && fill()) {
      }
      if (nl == std::string::npos && pos_ >= buf_.size()) {
        next_file();
        continue;
      }
      const size_t end = nl == std::string::npos ? buf_.size() : nl;
      const int64_t line = loc_.line++;
      std::string_view text(buf_.data() + pos_, end - pos_);
      loc_.offset += static_cast<int64_t>(end - pos_) + (nl == std::string::npos ? 0 : 1);
      pos_ = nl == std::string::npos ? buf_.size() : nl + 1;
      if (text.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank lines are no records
      r.text.assign(text);
      r.json = true;
      r.file = loc_.file;
      r.line = line;
      r.record = loc_.record++;
      return true;
    }
  }

  /// Where the next record starts.
  Loc loc() const { return loc_; }

  /// Input bytes (compressed for .gz) consumed so far over all files.
  int64_t bytes_done(const std::vector<int64_t>& sizes) const {
    int64_t done = 0;
    for (int64_t i = 0; i < std::min<int64_t>(loc_.file, static_cast<int64_t>(sizes.size())); ++i)
      done += sizes[static_cast<size_t>(i)];
    if (gz_ != nullptr && loc_.file < static_cast<int64_t>(sizes.size()))
      done += std::clamp<int64_t>(gzoffset(gz_), 0, sizes[static_cast<size_t>(loc_.file)]);
    return done;
  }

 private:
  void open_current() {
    const std::string& path = files_[static_cast<size_t>(loc_.file)];
    gz_ = gzopen(path.c_str(), "rb");
    if (gz_ == nullptr) LOOM_THROW(IoError, path, ": cannot open: ", std::strerror(errno));
    gzbuffer(gz_, 1 << 18);
    if (loc_.offset > 0 && gzseek(gz_, loc_.offset, SEEK_SET) != loc_.offset)
      LOOM_THROW(IoError, path, ": cannot seek to byte ", loc_.offset,
                 " to resume (the file changed since the interrupted run?)");
    buf_.clear();
    pos_ = 0;
  }
  // Appends up to 1 MiB to the buffer; false at the end of the file.
  bool fill() {
    if (pos_ > 0 && pos_ == buf_.size()) {
      buf_.clear();
      pos_ = 0;
    } else if (pos_ > (1u << 20)) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    const size_t old = buf_.size();
    buf_.resize(old + (1u << 20));
    const int n = gzread(gz_, buf_.data() + old, 1u << 20);
    if (n < 0) {
      int code = 0;
      const char* msg = gzerror(gz_, &code);
      LOOM_THROW(IoError, files_[static_cast<size_t>(loc_.file)], ": read failed: ", msg);
    }
    buf_.resize(old + static_cast<size_t>(n));
    return n > 0;
  }
  void next_file() {
    close();
    ++loc_.file;
    loc_.offset = 0;
    loc_.line = 1;
  }
  void close() {
    if (gz_ != nullptr) gzclose(gz_);
    gz_ = nullptr;
    buf_.clear();
    pos_ = 0;
  }

  const std::vector<std::string>& files_;
  Loc loc_;
  gzFile gz_ = nullptr;
  std::string buf_;
  size_t pos_ = 0;
};

// One record after tokenizing.
struct Tokenized {
  std::vector<int32_t> tokens;  // eot + encode(text)
  std::string error;            // a bad line: "file:line: what"
  int64_t text_bytes = 0;
  bool val = false;
};

Tokenized tokenize_record(const Record& r, const Tokenizer& tok, int32_t eot, const PrepareOptions& opts) {
  Tokenized out;
  out.val = document_is_val(r.record, opts.val_fraction);
  const std::string where = opts.inputs[static_cast<size_t>(r.file)] + ":" + std::to_string(r.line);
  std::string parsed;
  std::string_view text = r.text;
  if (r.json) {
    ordered_json j;
    try {
      j = ordered_json::parse(r.text);
    } catch (const ordered_json::parse_error& e) {
      out.error = where + ": not a valid JSON line (" + e.what() + ")";
      return out;
    }
    auto it = j.is_object() ? j.find(opts.text_field) : j.end();
    if (!j.is_object() || it == j.end() || !it->is_string()) {
      out.error = where + ": expected a JSON object with a string field \"" + opts.text_field + "\"";
      return out;
    }
    parsed = it->get<std::string>();
    text = parsed;
  }
  out.text_bytes = static_cast<int64_t>(text.size());
  std::vector<int32_t> ids = tok.encode(text);
  out.tokens.reserve(ids.size() + 1);
  out.tokens.push_back(eot);
  out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
  return out;
}

// The shards of one split: finished ones under their final names, the one being filled under NAME.bin.tmp.
struct Stream {
  std::string split;
  int64_t shard = 0;  // index of the shard being filled
  int64_t count = 0;  // tokens in it
  int64_t tokens = 0, documents = 0;
  std::vector<std::string> finished;
  std::FILE* f = nullptr;
};

class ShardWriter {
 public:
  ShardWriter(const PrepareOptions& opts, int64_t vocab_size)
      : opts_(opts), vocab_size_(vocab_size), width_(token_bytes_for_vocab(vocab_size)) {
    streams_[0].split = "train";
    streams_[1].split = "val";
  }
  ~ShardWriter() {
    for (Stream& s : streams_)
      if (s.f != nullptr) std::fclose(s.f);
  }
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  Stream& stream(bool val) { return streams_[val ? 1 : 0]; }
  int width() const { return width_; }

  /// Appends a document's tokens, finishing shards as they fill.
  void append(bool val, std::span<const int32_t> ids) {
    Stream& s = stream(val);
    ++s.documents;
    s.tokens += static_cast<int64_t>(ids.size());
    while (!ids.empty()) {
      if (s.f == nullptr) open_tmp(s, 0);
      const size_t take =
          static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(ids.size()), opts_.shard_tokens - s.count));
      pack_tokens(ids.subspan(0, take), vocab_size_, width_, scratch_);
      write_all(s.f, scratch_.data(), scratch_.size(), tmp_path(s));
      s.count += static_cast<int64_t>(take);
      ids = ids.subspan(take);
      if (s.count == opts_.shard_tokens) finish(s);
    }
  }

  /// Finishes the partly filled shards (at the end of the input).
  void finish_all() {
    for (Stream& s : streams_)
      if (s.f != nullptr && s.count > 0) finish(s);
  }

  /// Makes the tokens written so far visible to a reader of the .tmp files (before progress.json names them).
  void flush() {
    for (Stream& s : streams_)
      if (s.f != nullptr && std::fflush(s.f) != 0)
        LOOM_THROW(IoError, tmp_path(s), ": write failed: ", std::strerror(errno));
  }

  /// Brings the files of a stream back to the state progress.json describes: shards [0, shard) finished, shard
  /// `shard` holding `count` tokens under its .tmp name; anything written after that point is removed.
  void restore(Stream& s) {
    for (int64_t i = 0; i < s.shard; ++i) {
      const std::string name = shard_name(s.split, i);
      if (!fs::exists(opts_.out_dir + "/" + name))
        LOOM_THROW(IoError, opts_.out_dir, "/", name, " is missing but ", opts_.out_dir, "/", kProgress,
                   " says it was finished; start again in an empty --out directory");
      s.finished.push_back(name);
    }
    // Shards finished after the last progress point are written again.
    for (int64_t i = s.shard + 1;; ++i) {
      const std::string final_path = opts_.out_dir + "/" + shard_name(s.split, i);
      bool any = fs::remove(final_path);
      any = fs::remove(final_path + ".tmp") || any;
      if (!any) break;
    }
    const std::string final_path = opts_.out_dir + "/" + shard_name(s.split, s.shard);
    const std::string tmp = final_path + ".tmp";
    if (!fs::exists(tmp) && fs::exists(final_path)) fs::rename(final_path, tmp);  // finished after the last save
    fs::remove(final_path);
    if (s.count == 0) {
      fs::remove(tmp);
      return;
    }
    const int64_t want = kLlmcHeaderInts * 4 + s.count * width_;
    if (!fs::exists(tmp) || static_cast<int64_t>(fs::file_size(tmp)) < want)
      LOOM_THROW(IoError, tmp, " holds fewer than the ", s.count, " tokens that ", opts_.out_dir, "/", kProgress,
                 " records; start again in an empty --out directory");
    fs::resize_file(tmp, static_cast<uintmax_t>(want));
    open_tmp(s, s.count);
  }

  // Testing: exit abruptly (as a kill would) right after this many shards were finished.
  int64_t abort_after_shards = 0;

 private:
  std::string tmp_path(const Stream& s) const { return opts_.out_dir + "/" + shard_name(s.split, s.shard) + ".tmp"; }

  void open_tmp(Stream& s, int64_t existing) {
    const std::string path = tmp_path(s);
    s.f = std::fopen(path.c_str(), existing > 0 ? "r+b" : "wb");
    if (s.f == nullptr) LOOM_THROW(IoError, path, ": cannot open for writing: ", std::strerror(errno));
    std::setvbuf(s.f, nullptr, _IOFBF, 1 << 20);
    if (existing > 0) {
      if (std::fseek(s.f, 0, SEEK_END) != 0) LOOM_THROW(IoError, path, ": seek failed: ", std::strerror(errno));
      return;
    }
    int32_t header[kLlmcHeaderInts];
    header_for(0, width_, header);  // the count is written when the shard is finished
    write_all(s.f, header, sizeof header, path);
    s.count = 0;
  }

  void finish(Stream& s) {
    const std::string tmp = tmp_path(s);
    int32_t header[kLlmcHeaderInts];
    header_for(s.count, width_, header);
    if (std::fflush(s.f) != 0 || std::fseek(s.f, 0, SEEK_SET) != 0)
      LOOM_THROW(IoError, tmp, ": write failed: ", std::strerror(errno));
    write_all(s.f, header, sizeof header, tmp);
    sync_file(s.f, tmp);
    std::fclose(s.f);
    s.f = nullptr;
    const std::string name = shard_name(s.split, s.shard);
    fs::rename(tmp, opts_.out_dir + "/" + name);
    s.finished.push_back(name);
    ++s.shard;
    s.count = 0;
    if (abort_after_shards > 0 && ++shards_this_session_ == abort_after_shards) std::_Exit(137);
  }

  const PrepareOptions& opts_;
  int64_t vocab_size_;
  int width_;
  Stream streams_[2];
  std::vector<char> scratch_;
  int64_t shards_this_session_ = 0;
};

// What must match for a run to continue another's output.
ordered_json identity(const PrepareOptions& opts, const Tokenizer& tok, int32_t eot,
                      const std::vector<int64_t>& sizes) {
  ordered_json inputs = ordered_json::array();
  for (size_t i = 0; i < opts.inputs.size(); ++i) inputs.push_back({{"path", opts.inputs[i]}, {"bytes", sizes[i]}});
  return {{"tokenizer", opts.tokenizer_id},
          {"vocab_size", tok.vocab_size()},
          {"eot", eot},
          {"shard_tokens", opts.shard_tokens},
          {"val_fraction", opts.val_fraction},
          {"text_field", opts.text_field},
          {"inputs", inputs}};
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) LOOM_THROW(IoError, tmp, ": cannot open for writing: ", std::strerror(errno));
  write_all(f, text.data(), text.size(), tmp);
  sync_file(f, tmp);
  std::fclose(f);
  fs::rename(tmp, path);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) LOOM_THROW(IoError, path, ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

bool document_is_val(int64_t index, double val_fraction) {
  if (val_fraction <= 0) return false;
  uint64_t z = static_cast<uint64_t>(index) + 0x9e3779b97f4a7c15ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53 < val_fraction;
}

void write_llmc_shard(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size) {
  const int width = token_bytes_for_vocab(vocab_size);
  std::vector<char> packed;
  pack_tokens(tokens, vocab_size, width, packed);
  int32_t header[kLlmcHeaderInts];
  header_for(static_cast<int64_t>(tokens.size()), width, header);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) LOOM_THROW(IoError, tmp, ": cannot open for writing: ", std::strerror(errno));
  write_all(f, header, sizeof header, tmp);
  write_all(f, packed.data(), packed.size(), tmp);
  sync_file(f, tmp);
  std::fclose(f);
  fs::rename(tmp, path);
}

std::vector<int32_t> read_llmc_shard(const std::string& path) {
  const std::string bytes = read_text(path);
  if (bytes.size() < kLlmcHeaderInts * 4)
    LOOM_THROW(IoError, path, ": truncated: ", bytes.size(), " bytes, shorter than the 1024-byte llm.c header");
  int32_t header[3];
  std::memcpy(header, bytes.data(), sizeof header);
  int width = 0;
  if (header[0] == kLlmcMagicU16 && header[1] == kLlmcVersionU16) width = 2;
  if (header[0] == kLlmcMagicU32 && header[1] == kLlmcVersionU32) width = 4;
  if (width == 0)
    LOOM_THROW(IoError, path, ": bad header (magic ", header[0], ", version ", header[1], "), expected ", kLlmcMagicU16,
               "/", kLlmcVersionU16, " or ", kLlmcMagicU32, "/", kLlmcVersionU32);
  const int64_t count = header[2];
  if (count < 0 || static_cast<int64_t>(bytes.size()) != kLlmcHeaderInts * 4 + count * width)
    LOOM_THROW(IoError, path, ": size ", bytes.size(), " does not match the header's ", count, " tokens of ", width,
               " bytes");
  std::vector<int32_t> out(static_cast<size_t>(count));
  const char* p = bytes.data() + kLlmcHeaderInts * 4;
  for (int64_t i = 0; i < count; ++i) {
    if (width == 2) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      out[static_cast<size_t>(i)] = v;
    } else {
      uint32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      out[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
  }
  return out;
}

PrepareSummary prepare_shards(const Tokenizer& tok, const PrepareOptions& opts,
                              const std::function<void(const PrepareProgress&)>& progress) {
  if (opts.inputs.empty()) LOOM_THROW(InvalidArgument, "loomdata: no input files");
  if (opts.shard_tokens < 1) LOOM_THROW(InvalidArgument, "shard_tokens must be >= 1, got ", opts.shard_tokens);
  if (opts.shard_tokens > INT32_MAX)
    LOOM_THROW(InvalidArgument, "shard_tokens ", opts.shard_tokens, " does not fit the llm.c header's int32 count");
  if (!(opts.val_fraction >= 0 && opts.val_fraction < 1))
    LOOM_THROW(InvalidArgument, "val_fraction must be in [0, 1), got ", opts.val_fraction);
  const std::optional<int32_t> eot_opt = tok.eot_id();
  if (!eot_opt)
    LOOM_THROW(InvalidArgument, opts.tokenizer_id,
               ": the tokenizer has no end-of-text token (<|endoftext|> or <|end_of_text|>) to separate documents");
  const int32_t eot = *eot_opt;
  const int64_t vocab_size = tok.vocab_size();

  std::vector<int64_t> sizes;
  for (const std::string& p : opts.inputs) {
    std::error_code ec;
    const auto n = fs::file_size(p, ec);
    if (ec) LOOM_THROW(IoError, p, ": cannot read input: ", ec.message());
    sizes.push_back(static_cast<int64_t>(n));
  }
  int64_t bytes_total = 0;
  for (int64_t n : sizes) bytes_total += n;

  fs::create_directories(opts.out_dir);
  const std::string progress_path = opts.out_dir + "/" + kProgress;
  const ordered_json id = identity(opts, tok, eot, sizes);

  PrepareSummary sum;
  sum.vocab_size = vocab_size;
  sum.token_bytes = token_bytes_for_vocab(vocab_size);
  ShardWriter writer(opts, vocab_size);
  writer.abort_after_shards = opts.test_abort_after_shards;
  Loc start;
  if (fs::exists(progress_path)) {
    ordered_json p;
    try {
      p = ordered_json::parse(read_text(progress_path));
      const ordered_json& old = p.at("options");
      for (const auto& [k, v] : id.items())
        if (!old.contains(k) || old.at(k) != v)
          LOOM_THROW(InvalidArgument, progress_path, ": this directory holds a run with another ", k, " (",
                     old.contains(k) ? old.at(k).dump() : "none", ", now ", v.dump(),
                     "); use another --out directory, or delete this one to start over");
      const ordered_json& n = p.at("next");
      start = {n.at("file").get<int64_t>(), n.at("offset").get<int64_t>(), n.at("line").get<int64_t>(),
               n.at("record").get<int64_t>()};
      for (bool val : {false, true}) {
        Stream& s = writer.stream(val);
        const ordered_json& sj = p.at("streams").at(s.split);
        s.shard = sj.at("shard").get<int64_t>();
        s.count = sj.at("tokens_in_shard").get<int64_t>();
        s.tokens = sj.at("tokens").get<int64_t>();
        s.documents = sj.at("documents").get<int64_t>();
      }
      sum.bad_records = p.at("bad_records").get<int64_t>();
      sum.text_bytes = p.at("text_bytes").get<int64_t>();
      sum.already_complete = p.at("complete").get<bool>();
    } catch (const ordered_json::exception& e) {
      LOOM_THROW(IoError, progress_path, ": unreadable (", e.what(), "); delete the --out directory to start over");
    }
    sum.resumed = !sum.already_complete;
    for (bool val : {false, true}) writer.restore(writer.stream(val));
  } else {
    for (const auto& e : fs::directory_iterator(opts.out_dir))
      if (e.path().extension() == ".bin")
        LOOM_THROW(InvalidArgument, opts.out_dir, " holds .bin files but no ", kProgress,
                   " of a loomdata run; use an empty --out directory");
  }

  auto save = [&](const Loc& next, bool complete) {
    writer.flush();
    ordered_json streams = ordered_json::object();
    for (bool val : {false, true}) {
      Stream& s = writer.stream(val);
      streams[s.split] = {
          {"shard", s.shard}, {"tokens_in_shard", s.count}, {"tokens", s.tokens}, {"documents", s.documents}};
    }
    ordered_json p = {
        {"format", "loomdata.progress"},
        {"version", 1},
        {"options", id},
        {"next", {{"file", next.file}, {"offset", next.offset}, {"line", next.line}, {"record", next.record}}},
        {"streams", streams},
        {"bad_records", sum.bad_records},
        {"text_bytes", sum.text_bytes},
        {"complete", complete}};
    write_text_atomic(progress_path, p.dump(1) + "\n");
  };

  // A fresh run records its start at once, so shards finished before the first round's save are recognised (and
  // redone) by a resume rather than taken for another program's files.
  if (!sum.resumed && !sum.already_complete) save(start, false);

  auto fill_summary = [&] {
    const Stream &tr = writer.stream(false), &va = writer.stream(true);
    sum.train_tokens = tr.tokens;
    sum.val_tokens = va.tokens;
    sum.train_documents = tr.documents;
    sum.val_documents = va.documents;
    sum.documents = tr.documents + va.documents;
    sum.train_shards = tr.finished;
    sum.val_shards = va.finished;
  };
  if (sum.already_complete) {
    fill_summary();
    return sum;
  }

  const int threads =
      opts.threads > 0 ? opts.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_at_start = writer.stream(false).tokens + writer.stream(true).tokens;
  InputReader reader(opts.inputs, start);
  const int64_t bytes_at_start = reader.bytes_done(sizes);
  const size_t chunks_per_round = static_cast<size_t>(2 * threads);  // a round: progress saved, bar redrawn
  int64_t rounds = 0;
  while (true) {
    // Read a round of chunks in input order ...
    std::vector<std::vector<Record>> chunks;
    for (size_t c = 0; c < chunks_per_round; ++c) {
      std::vector<Record> chunk;
      int64_t bytes = 0;
      Record r;
      while (bytes < opts.chunk_bytes && reader.next(r)) {
        bytes += static_cast<int64_t>(r.text.size()) + 1;
        chunk.push_back(std::move(r));
      }
      if (chunk.empty()) break;
      chunks.push_back(std::move(chunk));
    }
    if (chunks.empty()) break;
    // ... tokenize the chunks on all threads ...
    std::vector<std::vector<Tokenized>> results(chunks.size());
    std::atomic<size_t> next_chunk{0};
    std::exception_ptr failure;
    std::mutex failure_mu;
    auto work = [&] {
      try {
        for (size_t c; (c = next_chunk.fetch_add(1)) < chunks.size();) {
          results[c].reserve(chunks[c].size());
          for (const Record& r : chunks[c]) results[c].push_back(tokenize_record(r, tok, eot, opts));
        }
      } catch (...) {
        std::lock_guard<std::mutex> lk(failure_mu);
        if (!failure) failure = std::current_exception();
      }
    };
    const size_t n_threads = std::min(chunks.size(), static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    for (size_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
    work();
    for (std::thread& t : pool) t.join();
    if (failure) std::rethrow_exception(failure);
    // ... and write them in input order, so the output is the same for any number of threads.
    for (const std::vector<Tokenized>& chunk : results)
      for (const Tokenized& t : chunk) {
        if (!t.error.empty()) {
          if (!opts.skip_bad) LOOM_THROW(IoError, t.error, " (--skip-bad skips such lines and counts them)");
          ++sum.bad_records;
          continue;
        }
        sum.text_bytes += t.text_bytes;
        writer.append(t.val, t.tokens);
      }
    save(reader.loc(), false);
    ++rounds;
    if (opts.test_abort_after_rounds > 0 && rounds == opts.test_abort_after_rounds) std::_Exit(137);
    if (progress) {
      PrepareProgress pr;
      pr.bytes_done = reader.bytes_done(sizes);
      pr.bytes_total = bytes_total;
      pr.bytes_at_start = bytes_at_start;
      pr.tokens = writer.stream(false).tokens + writer.stream(true).tokens;
      pr.documents = writer.stream(false).documents + writer.stream(true).documents;
      pr.tokens_this_session = pr.tokens - tokens_at_start;
      pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress(pr);
    }
  }
  writer.finish_all();
  save(reader.loc(), true);
  fill_summary();
  return sum;
}

}  // namespace loom::data
