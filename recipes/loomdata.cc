// loomdata: data preparation for the pretrain recipe.
//
// Usage: loomdata tokenize --tokenizer FILE --out DIR [--shard-tokens N] [--val-fraction F] [--skip-bad]
//                          [--threads N] [--pattern P] [--text-field NAME] INPUT...
// Tokenizes text files (one document each) and JSON-lines files (a "text" field per line; .jsonl, .jsonl.gz) into
// llm.c shards DIR/train_NNNNNN.bin and DIR/val_NNNNNN.bin (data/prepare.h), on all cores, with a progress bar on
// stderr; run again after an interruption and it continues where it stopped.
// Exit status: 0 done, 1 runtime error (bad input, I/O), 2 usage error.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "tensor/error.h"

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
  else if (n >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = std::lround(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

// "[########............]  41% 12.3 MB/30.0 MB | 1.52M tok/s | ETA 12s": bytes read, tokens/s of this session and
// the time left at this session's rate of input bytes.
std::string progress_line(const loom::data::PrepareProgress& p) {
  const double frac = p.bytes_total > 0 ? static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 1;
  const int width = 24, filled = static_cast<int>(std::clamp(frac, 0.0, 1.0) * width);
  std::string bar =
      "[" + std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.') + "]";
  const double rate = p.seconds > 0 ? static_cast<double>(p.bytes_done - p.bytes_at_start) / p.seconds : 0;
  const double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / rate : -1;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s %3.0f%% %s/%s | %s tok/s | %s docs | ETA %s", bar.c_str(), 100 * frac,
                human_bytes(static_cast<double>(p.bytes_done)).c_str(),
                human_bytes(static_cast<double>(p.bytes_total)).c_str(),
                human_count(p.seconds > 0 ? static_cast<double>(p.tokens_this_session) / p.seconds : 0).c_str(),
                human_count(static_cast<double>(p.documents)).c_str(), human_time(eta).c_str());
  return buf;
}

std::string shard_list(const std::vector<std::string>& names) {
  if (names.empty()) return "none";
  if (names.size() == 1) return names.front();
  return names.front() + " .. " + names.back();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"loomdata: prepare token data for pretrain (llm.c .bin shards)", "loomdata"};
  app.require_subcommand(1);
  app.footer(
      "Example:\n"
      "  loomdata tokenize --tokenizer tokenizer.json --out data/mycorpus --val-fraction 0.01 corpus/*.jsonl.gz\n"
      "Exit status: 0 done, 1 runtime error, 2 usage error.");

  loom::data::PrepareOptions opts;
  std::string tokenizer_path, pattern;
  bool no_progress = false;
  CLI::App* tok = app.add_subcommand(
      "tokenize",
      "Tokenize text files (one document each) and JSON-lines files (a text field per line; .jsonl, .jsonl.gz) into "
      "llm.c shards OUT/train_NNNNNN.bin and OUT/val_NNNNNN.bin: each document is the end-of-text token followed by "
      "its tokens. Resumes an interrupted run in the same OUT.");
  tok->add_option("--tokenizer", tokenizer_path,
                  "tokenizer.json, vocab.json (+ merges.txt), a *.tiktoken / tokenizer.model ranks file, or a "
                  "directory holding one")
      ->required()
      ->type_name("FILE");
  tok->add_option("--out", opts.out_dir, "output directory (created; holds the shards and progress.json)")
      ->required()
      ->type_name("DIR");
  tok->add_option("--shard-tokens,--shard_tokens", opts.shard_tokens, "tokens per shard (the last may be shorter)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{INT32_MAX}))
      ->type_name("N");
  tok->add_option("--val-fraction,--val_fraction", opts.val_fraction,
                  "fraction of documents held out into val_*.bin, chosen by a hash of each document's index "
                  "(document-level, spread over the whole input); 0: no val shards")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.999999))
      ->type_name("F");
  tok->add_flag("--skip-bad,--skip_bad", opts.skip_bad,
                "skip JSON lines that do not parse or lack the text field (counted in the summary) instead of "
                "stopping at the first one");
  tok->add_option("--threads", opts.threads, "tokenizing threads (0: all cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber)
      ->type_name("N");
  tok->add_option("--pattern", pattern,
                  "pre-tokenisation regex for a ranks file: gpt2, cl100k, llama3, o200k or a literal pattern "
                  "(default: the file's own, or from its name)");
  tok->add_option("--text-field,--text_field", opts.text_field, "the field of a JSON line holding the document")
      ->capture_default_str();
  tok->add_flag("--no-progress,--no_progress", no_progress, "no progress bar on stderr");
  tok->add_option("INPUT", opts.inputs, "input files, read in the order given")
      ->required()
      ->check(CLI::ExistingFile)
      ->type_name("FILE");
  // For tests: chunking, and an abrupt exit at a chosen point (as a kill would) to exercise resuming.
  tok->add_option("--chunk-bytes", opts.chunk_bytes)->group("")->check(CLI::PositiveNumber);
  tok->add_option("--test-abort-after-shards", opts.test_abort_after_shards)->group("");
  tok->add_option("--test-abort-after-rounds", opts.test_abort_after_rounds)->group("");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "loomdata: %s\nRun 'loomdata --help' or 'loomdata tokenize --help' for the options.\n",
                 e.what());
    return 2;
  }

  try {
    opts.tokenizer_id = tokenizer_path;
    const loom::data::Tokenizer tokenizer = loom::data::Tokenizer::from_file(tokenizer_path, pattern);
    const bool tty = !no_progress && ::isatty(STDERR_FILENO);
    auto last_line = std::chrono::steady_clock::now();
    auto progress = [&](const loom::data::PrepareProgress& p) {
      if (tty) {
        std::fprintf(stderr, "\r\033[K%s", progress_line(p).c_str());
        std::fflush(stderr);
      } else if (!no_progress && std::chrono::steady_clock::now() - last_line > std::chrono::seconds(30)) {
        std::fprintf(stderr, "%s\n", progress_line(p).c_str());  // a log file gets a line now and then
        last_line = std::chrono::steady_clock::now();
      }
    };
    const loom::data::PrepareSummary s = loom::data::prepare_shards(tokenizer, opts, progress);
    if (tty) std::fprintf(stderr, "\r\033[K");
    if (s.already_complete)
      std::printf("loomdata: %s already holds a finished run; nothing to do\n", opts.out_dir.c_str());
    if (s.resumed) std::printf("loomdata: resumed an interrupted run in %s\n", opts.out_dir.c_str());
    std::printf("loomdata: %lld documents, %lld tokens (%s, vocabulary %lld) in %zu shards in %s\n",
                static_cast<long long>(s.documents), static_cast<long long>(s.train_tokens + s.val_tokens),
                s.token_bytes == 2 ? "uint16" : "uint32", static_cast<long long>(s.vocab_size),
                s.train_shards.size() + s.val_shards.size(), opts.out_dir.c_str());
    std::printf("  train: %lld documents, %lld tokens, %zu shard%s (%s)\n", static_cast<long long>(s.train_documents),
                static_cast<long long>(s.train_tokens), s.train_shards.size(), s.train_shards.size() == 1 ? "" : "s",
                shard_list(s.train_shards).c_str());
    std::printf("  val:   %lld documents, %lld tokens, %zu shard%s (%s)\n", static_cast<long long>(s.val_documents),
                static_cast<long long>(s.val_tokens), s.val_shards.size(), s.val_shards.size() == 1 ? "" : "s",
                shard_list(s.val_shards).c_str());
    if (s.bad_records > 0)
      std::printf("  skipped %lld bad lines (--skip-bad)\n", static_cast<long long>(s.bad_records));
    std::printf("  pretrain: --set data.source=llmc --set data.train_path='%s/train_*.bin'%s\n", opts.out_dir.c_str(),
                s.val_shards.empty() ? "" : (" --set data.val_path='" + opts.out_dir + "/val_*.bin'").c_str());
    return 0;
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "\nloomdata: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nloomdata: error: %s\n", e.what());
    return 1;
  }
}
