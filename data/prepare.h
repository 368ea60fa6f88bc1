// From raw text to llm.c token shards: text files (one document each) and JSON-lines files (a `text` field per
// line, as Hugging Face datasets export them; optionally gzip-compressed) are read in a fixed document order,
// tokenized on all cores, and written as llm.c .bin shards that the pretrain recipe reads unchanged. A run that is
// interrupted continues where it stopped (progress.json in the output directory), and the output is the same bytes
// whatever the number of threads and however often the run was interrupted.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace loom::data {

/// llm.c's shard formats (dev/data/data_common.py): a 256 x int32 header (magic, version, token count) and then the
/// tokens. GPT-2 style: magic 20240520, version 1, uint16 tokens; Llama 3 style: magic 20240801, version 7, uint32.
constexpr int32_t kLlmcMagicU16 = 20240520;
constexpr int32_t kLlmcVersionU16 = 1;
constexpr int32_t kLlmcMagicU32 = 20240801;
constexpr int32_t kLlmcVersionU32 = 7;
constexpr int64_t kLlmcHeaderInts = 256;

/// Token width of a shard for a vocabulary: 2 bytes (uint16) for vocab_size <= 65536, else 4 (uint32).
int token_bytes_for_vocab(int64_t vocab_size);

/// Writes tokens as one llm.c shard at path (through path + ".tmp" and a rename, so a crash never leaves a partial
/// file under the final name). Throws InvalidArgument when a token does not fit vocab_size, IoError on I/O errors.
void write_llmc_shard(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size);

/// Reads an llm.c shard of either width. Throws IoError naming the file on a bad header or size.
std::vector<int32_t> read_llmc_shard(const std::string& path);

/// What prepare_shards reads and writes.
struct PrepareOptions {
  std::vector<std::string> inputs;     // text files, *.jsonl / *.jsonl.gz (any file may be gzip-compressed)
  std::string out_dir;                 // shards train_NNNNNN.bin / val_NNNNNN.bin, progress.json
  std::string tokenizer_id;            // the tokenizer's file, recorded so a resume with another one is refused
  int64_t shard_tokens = 100'000'000;  // tokens per shard (llm.c's FineWeb shards: 10^8); the last may be shorter
  // Document-level split: document i (counting every record of the inputs in order, bad ones included) goes to val
  // when a hash of i falls below val_fraction, so about that fraction of documents, spread over the whole input.
  double val_fraction = 0.0;
  bool skip_bad = false;            // count bad JSON lines instead of stopping on the first one
  int threads = 0;                  // tokenizing threads; 0: all cores
  std::string text_field = "text";  // the field of a JSON line that holds the document
  int64_t chunk_bytes = 256 << 10;  // documents are tokenized in chunks of about this much text
  // Testing only: end the process abruptly (std::_Exit(137), as a kill would) right after this many shards were
  // finished, or after this many rounds of chunks were written and recorded. 0: never.
  int64_t test_abort_after_shards = 0;
  int64_t test_abort_after_rounds = 0;
};

/// Where a run stands, for a progress bar.
struct PrepareProgress {
  int64_t bytes_done = 0, bytes_total = 0;  // input file bytes (compressed bytes for .gz) read so far / in all
  int64_t bytes_at_start = 0;               // bytes_done when this process started (a resumed run starts later)
  int64_t tokens = 0, documents = 0;        // over the whole run, resumed parts included
  int64_t tokens_this_session = 0;          // since this process started (for tokens/s)
  double seconds = 0;                       // since this process started
};

/// What a run produced.
struct PrepareSummary {
  int64_t documents = 0;                     // documents tokenized (empty documents included)
  int64_t bad_records = 0;                   // JSON lines skipped under skip_bad
  int64_t text_bytes = 0;                    // bytes of document text
  int64_t train_tokens = 0, val_tokens = 0;  // end-of-text tokens included
  int64_t train_documents = 0, val_documents = 0;
  std::vector<std::string> train_shards, val_shards;  // file names under out_dir, in order
  int64_t vocab_size = 0;
  int token_bytes = 2;
  bool resumed = false;           // continued an interrupted run
  bool already_complete = false;  // the directory held a finished run: nothing was done
};

/// Tokenizes every document of opts.inputs in order (files in the order given; lines of a JSON-lines file in order)
/// and writes them to llm.c shards: each document is its end-of-text token followed by tokenizer.encode(text)
/// (llm.c's fineweb.py: "the special <|endoftext|> token delimits all documents"), concatenated, cut into shards of
/// opts.shard_tokens (a document may straddle two shards). Resumes from out_dir/progress.json when it exists and was
/// written with the same options; refuses (InvalidArgument naming the option) when they differ. Throws IoError naming
/// file:line for a corrupt JSON line (unless skip_bad) or a line without a string `text` field, InvalidArgument when
/// the tokenizer has no end-of-text token. `progress`, when set, is called from this thread now and then.
PrepareSummary prepare_shards(const Tokenizer& tokenizer, const PrepareOptions& opts,
                              const std::function<void(const PrepareProgress&)>& progress = {});

/// The split of document `index` under val_fraction (true: val). Exposed for tests.
bool document_is_val(int64_t index, double val_fraction);

}  // namespace loom::data
