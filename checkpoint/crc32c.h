// CRC32C (Castagnoli), the checksum of every checkpoint chunk: the SSE4.2 crc32 instruction where the CPU has it
// (several GB/s), a table otherwise. Same values as Python's crc32c package and as iSCSI/ext4 use.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loom::checkpoint {

/// CRC32C of n bytes at data, continuing from crc (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace loom::checkpoint
