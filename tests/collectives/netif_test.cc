// Where a rank listens (collectives/netif.h): the route to MASTER_ADDR, the
// interface named by the user, and errors that say what to do. The same
// choice across real network namespaces is tests/launcher/netns_test.sh.
#include "collectives/netif.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <string>
#include <utility>
#include <vector>

#include "collectives/process_group.h"
#include "tensor/ops.h"
#include "tests/collectives/rank_threads.h"

using namespace loom;
using namespace loom::collectives;

namespace {

// (interface, IPv4 address) of every non-loopback interface that has one.
std::vector<std::pair<std::string, std::string>> non_loopback_ipv4() {
  std::vector<std::pair<std::string, std::string>> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof(buf));
    if (std::string(buf).rfind("127.", 0) != 0) out.emplace_back(a->ifa_name, buf);
  }
  freeifaddrs(list);
  return out;
}

std::string loopback_name() { return interface_of("127.0.0.1"); }

}  // namespace

TEST(Netif, RouteToLoopbackIsLoopback) {
  LocalAddress a = route_to("127.0.0.1", 29500);
  EXPECT_EQ(a.address, "127.0.0.1");
  EXPECT_FALSE(a.iface.empty());
  EXPECT_EQ(a.iface, loopback_name());
}

TEST(Netif, RouteToOwnAddressIsThatAddressAndItsInterface) {
  auto addrs = non_loopback_ipv4();
  if (addrs.empty()) GTEST_SKIP() << "no non-loopback IPv4 address on this machine";
  for (const auto& [iface, addr] : addrs) {
    LocalAddress a = route_to(addr, 29500);
    EXPECT_EQ(a.address, addr);
    EXPECT_EQ(a.iface, iface);
  }
}

TEST(Netif, UnresolvableMasterNamesIt) {
  try {
    route_to("no-such-host.invalid", 29500);
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-host.invalid"), std::string::npos) << e.what();
  }
}

TEST(Netif, InterfaceOfUnknownAddressIsEmpty) {
  EXPECT_EQ(interface_of("198.51.100.77"), "");  // TEST-NET-2: nobody's
  EXPECT_EQ(interface_of("not an address"), "");
}

TEST(Netif, NamedInterfaceWinsOverTheRoute) {
  // The master is somewhere else entirely; the named interface decides alone.
  ListenChoice c = choose_listen_address(loopback_name(), "", "198.51.100.1", 29500);
  EXPECT_EQ(c.address, "127.0.0.1");
  EXPECT_EQ(c.iface, loopback_name());
  EXPECT_NE(c.reason.find("LOOM_GLOO_IFNAME"), std::string::npos) << c.reason;
}

TEST(Netif, UnknownInterfaceListsThePresentOnes) {
  try {
    choose_listen_address("nosuch0", "", "127.0.0.1", 29500);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'nosuch0'"), std::string::npos) << m;
    EXPECT_NE(m.find(loopback_name()), std::string::npos) << m;
    EXPECT_NE(m.find("LOOM_GLOO_IFNAME"), std::string::npos) << m;
  }
}

TEST(Netif, WithoutOverrideFollowsTheRouteToMaster) {
  ListenChoice lo = choose_listen_address("", "", "", 0);
  EXPECT_EQ(lo.address, "127.0.0.1");
  EXPECT_NE(lo.reason.find("MASTER_ADDR 127.0.0.1"), std::string::npos) << lo.reason;
  // A master on a real interface: listen there, not on what the host name resolves to.
  for (const auto& [iface, addr] : non_loopback_ipv4()) {
    ListenChoice c = choose_listen_address("", "", addr, 29500);
    EXPECT_EQ(c.address, addr);
    EXPECT_EQ(c.iface, iface);
  }
}

TEST(Netif, GlooGroupFormsOnTheRoutedAddress) {
  auto addrs = non_loopback_ipv4();
  if (addrs.empty()) GTEST_SKIP() << "no non-loopback IPv4 address on this machine";
  ProcessGroupOptions o = collectives::testing::fast_options();
  o.master_addr = addrs.front().second;
  collectives::testing::run_ranks(
      2,
      [](ProcessGroup& pg) {
        Tensor t = from_vector(std::vector<float>{1.0f + static_cast<float>(pg.rank())}, {1});
        pg.allreduce(t)->wait();
        EXPECT_EQ(t.to_vector<float>()[0], 3.0f);
      },
      o);
}
