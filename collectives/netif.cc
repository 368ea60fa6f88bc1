#include "collectives/netif.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "tensor/error.h"

namespace loom::collectives {

namespace {

// "fe80::1%eth0" -> "fe80::1": the scope is not part of the address bytes.
std::string strip_scope(const std::string& a) { return a.substr(0, a.find('%')); }

std::string numeric_host(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST] = {0};
  if (getnameinfo(sa, len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return host;
}

socklen_t sockaddr_len(const sockaddr* sa) {
  return sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

using IfAddrs = std::unique_ptr<ifaddrs, void (*)(ifaddrs*)>;

IfAddrs get_ifaddrs() {
  ifaddrs* list = nullptr;
  LOOM_CHECK_T(CommError, ::getifaddrs(&list) == 0, "getifaddrs failed: ", std::strerror(errno));
  return IfAddrs(list, &::freeifaddrs);
}

bool is_ip(const ifaddrs* a) {
  return a->ifa_addr != nullptr && (a->ifa_addr->sa_family == AF_INET || a->ifa_addr->sa_family == AF_INET6);
}

}  // namespace

LocalAddress route_to(const std::string& host_in, int port) {
  const std::string host = host_in.empty() ? "127.0.0.1" : host_in;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  // A UDP connect() needs a port; any will do, since nothing is sent.
  int rc = getaddrinfo(host.c_str(), std::to_string(port > 0 ? port : 9).c_str(), &hints, &res);
  LOOM_CHECK_T(CommError, rc == 0, "cannot resolve MASTER_ADDR '", host, "': ", gai_strerror(rc),
               "; give an address, or a name that every node resolves");
  std::vector<addrinfo*> cands;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) cands.push_back(a);
  std::stable_partition(cands.begin(), cands.end(), [](addrinfo* a) { return a->ai_family == AF_INET; });
  std::string err = "no address";
  LocalAddress out;
  for (addrinfo* a : cands) {
    int fd = ::socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = std::strerror(errno);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) {
      out.address = numeric_host(reinterpret_cast<sockaddr*>(&ss), sl);
    } else {
      err = std::strerror(errno);
    }
    ::close(fd);
    if (!out.address.empty()) break;
  }
  freeaddrinfo(res);
  LOOM_CHECK_T(CommError, !out.address.empty(), "no route from this node to MASTER_ADDR ", host, " (", err,
               "); check the address, or name the interface to listen on with LOOM_GLOO_IFNAME");
  out.iface = interface_of(out.address);
  return out;
}

std::string interface_of(const std::string& address) {
  const std::string bare = strip_scope(address);
  unsigned char want[sizeof(in6_addr)];
  int family = ::inet_pton(AF_INET, bare.c_str(), want) == 1    ? AF_INET
               : ::inet_pton(AF_INET6, bare.c_str(), want) == 1 ? AF_INET6
                                                                : AF_UNSPEC;
  if (family == AF_UNSPEC) return "";
  IfAddrs list = get_ifaddrs();
  for (ifaddrs* a = list.get(); a != nullptr; a = a->ifa_next) {
    if (!is_ip(a) || a->ifa_addr->sa_family != family) continue;
    const void* have = family == AF_INET
                           ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr)
                           : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr);
    if (std::memcmp(have, want, family == AF_INET ? sizeof(in_addr) : sizeof(in6_addr)) == 0) return a->ifa_name;
  }
  return "";
}

std::vector<std::string> interface_addresses(const std::string& iface) {
  IfAddrs list = get_ifaddrs();
  std::vector<std::string> v4, v6, names;
  for (ifaddrs* a = list.get(); a != nullptr; a = a->ifa_next) {
    if (std::find(names.begin(), names.end(), a->ifa_name) == names.end()) names.push_back(a->ifa_name);
    if (iface != a->ifa_name || !is_ip(a)) continue;
    std::string addr = numeric_host(a->ifa_addr, sockaddr_len(a->ifa_addr));
    if (!addr.empty()) (a->ifa_addr->sa_family == AF_INET ? v4 : v6).push_back(addr);
  }
  std::string present;
  for (const auto& n : names) present += (present.empty() ? "" : ", ") + n;
  LOOM_CHECK_T(ConfigError, std::find(names.begin(), names.end(), iface) != names.end(), "no network interface '",
               iface, "' on this node (it has: ", present,
               "); set LOOM_GLOO_IFNAME (or GLOO_SOCKET_IFNAME) to one of them, or unset it");
  v4.insert(v4.end(), v6.begin(), v6.end());
  LOOM_CHECK_T(ConfigError, !v4.empty(), "network interface '", iface,
               "' has no IP address; set LOOM_GLOO_IFNAME (or GLOO_SOCKET_IFNAME) to one that has (this node has: ",
               present, ")");
  return v4;
}

ListenChoice choose_listen_address(const std::string& iface, const std::string& hostname,
                                   const std::string& master_addr, int master_port) {
  ListenChoice c;
  if (!iface.empty()) {
    c.address = interface_addresses(iface).front();
    c.iface = iface;
    c.reason = "the interface named by LOOM_GLOO_IFNAME/GLOO_SOCKET_IFNAME";
  } else if (!hostname.empty()) {
    c.address = hostname;
    c.iface = interface_of(hostname);
    c.reason = "the address given in the group's options";
  } else {
    const std::string master = master_addr.empty() ? "127.0.0.1" : master_addr;
    LocalAddress a = route_to(master, master_port);
    c.address = a.address;
    c.iface = a.iface;
    c.reason = "the route to MASTER_ADDR " + master + "; LOOM_GLOO_IFNAME names another interface";
  }
  return c;
}

}  // namespace loom::collectives
