#include "tensor/device.h"

#include "tensor/storage.h"

namespace loom {

int cuda_device_count() {
  auto& h = detail::cuda_hooks();
  return h.device_count ? h.device_count() : 0;
}
bool cuda_is_available() { return cuda_device_count() > 0; }

}  // namespace loom
