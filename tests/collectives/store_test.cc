// Store implementations: semantics shared by all, TCPStore authentication and
// robustness against garbage, oversized frames and half-open sockets.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "collectives/store.h"
#include "collectives/tcp_store.h"

using namespace loom;
using namespace loom::collectives;
using namespace std::chrono_literals;

namespace {

TCPStoreOptions server_opts(const std::string& secret = "s3cret") {
  TCPStoreOptions o;
  o.is_server = true;
  o.secret = secret;
  o.timeout = 5000ms;
  o.connect_timeout = 3000ms;
  o.handshake_timeout = 300ms;
  o.max_frame_bytes = 1 << 20;
  return o;
}
TCPStoreOptions client_opts(const std::string& secret = "s3cret") {
  TCPStoreOptions o = server_opts(secret);
  o.is_server = false;
  return o;
}

// Exercises the Store contract on any implementation.
void check_semantics(Store& s, Store& other_client) {
  s.set("a", "1");
  EXPECT_EQ(other_client.get_string("a"), "1");
  EXPECT_EQ(s.add("ctr", 5), 5);
  EXPECT_EQ(other_client.add("ctr", -2), 3);
  EXPECT_EQ(to_string(s.compare_set("cas", to_bytes(""), to_bytes("x"))), "x");       // absent + empty expected
  EXPECT_EQ(to_string(s.compare_set("cas", to_bytes("wrong"), to_bytes("y"))), "x");  // mismatch keeps
  EXPECT_EQ(to_string(s.compare_set("cas", to_bytes("x"), to_bytes("z"))), "z");      // match swaps
  EXPECT_TRUE(s.check({"a", "ctr"}));
  EXPECT_FALSE(s.check({"a", "nope"}));
  int64_t n = s.num_keys();
  EXPECT_GE(n, 3);
  EXPECT_TRUE(s.delete_key("a"));
  EXPECT_FALSE(s.delete_key("a"));
  EXPECT_EQ(s.num_keys(), n - 1);
  // wait releases when another client sets the key.
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    other_client.set("late", "v");
  });
  s.wait({"late"}, 5000ms);
  t.join();
  EXPECT_EQ(s.get_string("late"), "v");
  // An expired wait names the timeout and the missing key.
  auto t0 = std::chrono::steady_clock::now();
  try {
    s.wait({"late", "never"}, 200ms);
    FAIL() << "wait should time out";
  } catch (const Timeout& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("never"), std::string::npos) << m;
    EXPECT_NE(m.find("timeout"), std::string::npos) << m;
    EXPECT_NE(m.find("200 ms"), std::string::npos) << m;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3000ms);
  s.set("txt", "abc");
  EXPECT_THROW(s.add("txt", 1), InvalidArgument);
}

std::string key_of(int c, int i) {
  std::string k("c");
  k += std::to_string(c);
  k += '/';
  k += std::to_string(i);
  return k;
}

int raw_connect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

// True when the peer closes fd within the time limit.
bool closed_by_peer(int fd, std::chrono::milliseconds limit) {
  timeval tv{static_cast<time_t>(limit.count() / 1000), static_cast<suseconds_t>((limit.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
    if (r == 0) return true;
    if (r < 0 && errno != EAGAIN && errno != EINTR) return true;  // reset
  }
  return false;
}

}  // namespace

TEST(HashStore, ImplementsStoreSemantics) {
  HashStore s;
  check_semantics(s, s);
}

TEST(FileStore, ImplementsStoreSemanticsAcrossInstances) {
  std::string dir = std::filesystem::temp_directory_path() / ("loom_filestore_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  {
    FileStore a(dir), b(dir);
    check_semantics(a, b);
  }
  std::filesystem::remove_all(dir);
}

TEST(PrefixStore, IsolatesKeysByPrefix) {
  auto base = std::make_shared<HashStore>();
  PrefixStore a("g1", base), b("g2", base);
  a.set("k", "one");
  b.set("k", "two");
  EXPECT_EQ(a.get_string("k"), "one");
  EXPECT_EQ(b.get_string("k"), "two");
  EXPECT_EQ(base->get_string("g1/k"), "one");
  EXPECT_FALSE(b.check({"only_a"}));
  PrefixStore c("g3", base);
  check_semantics(c, c);
}

TEST(TCPStore, ImplementsStoreSemantics) {
  TCPStore server("127.0.0.1", 0, server_opts());
  TCPStore client("127.0.0.1", server.port(), client_opts());
  check_semantics(server, client);
}

TEST(TCPStore, EnvironmentSecretIsUsedWhenNoneGiven) {
  ::setenv("LOOM_STORE_SECRET", "from-env", 1);
  TCPStoreOptions so = server_opts(""), co = client_opts("");
  TCPStore server("127.0.0.1", 0, so);
  TCPStore client("127.0.0.1", server.port(), co);
  client.set("k", "v");
  EXPECT_EQ(server.get_string("k"), "v");
  ::unsetenv("LOOM_STORE_SECRET");
  EXPECT_THROW(TCPStore("127.0.0.1", server.port(), client_opts("other")), CommError);
}

TEST(TCPStore, WrongSecretIsRejectedAndServerKeepsServing) {
  TCPStore server("127.0.0.1", 0, server_opts("right"));
  try {
    TCPStore bad("127.0.0.1", server.port(), client_opts("wrong"));
    FAIL() << "a client with the wrong secret connected";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("secret"), std::string::npos) << e.what();
  }
  TCPStore good("127.0.0.1", server.port(), client_opts("right"));
  good.set("k", "v");
  EXPECT_EQ(server.get_string("k"), "v");
}

TEST(TCPStore, GarbageOversizedAndHalfOpenConnectionsAreDropped) {
  TCPStore server("127.0.0.1", 0, server_opts());
  TCPStore good("127.0.0.1", server.port(), client_opts());
  good.set("before", "1");
  // Random bytes instead of the HMAC answer.
  int g = raw_connect(server.port());
  std::mt19937 rng(7);
  std::vector<uint8_t> junk(4096);
  for (auto& b : junk) b = static_cast<uint8_t>(rng());
  (void)::send(g, junk.data(), junk.size(), MSG_NOSIGNAL);
  EXPECT_TRUE(closed_by_peer(g, 2000ms));
  ::close(g);
  // Half-open: connect, say nothing.
  int h = raw_connect(server.port());
  EXPECT_TRUE(closed_by_peer(h, 3000ms));
  ::close(h);
  // An authenticated client that announces an oversized frame: emulate by a
  // TCPStore request above the limit (client refuses) and a raw socket that
  // authenticates then sends a huge length prefix.
  EXPECT_THROW(good.set("big", Bytes(size_t{2} << 20, 1)), InvalidArgument);
  {
    int o = raw_connect(server.port());
    uint8_t hello[40];
    ASSERT_EQ(::recv(o, hello, 40, MSG_WAITALL), 40);
    Bytes mac = hmac_sha256("s3cret", hello, 40);
    ASSERT_EQ(::send(o, mac.data(), mac.size(), MSG_NOSIGNAL), 32);
    uint8_t ok = 0;
    ASSERT_EQ(::recv(o, &ok, 1, MSG_WAITALL), 1);
    EXPECT_EQ(ok, 1);
    uint8_t len[4] = {0xff, 0xff, 0xff, 0x7f};  // ~2 GiB frame
    (void)::send(o, len, 4, MSG_NOSIGNAL);
    EXPECT_TRUE(closed_by_peer(o, 2000ms));
    ::close(o);
  }
  good.set("after", "2");
  EXPECT_EQ(server.get_string("before"), "1");
  EXPECT_EQ(good.get_string("after"), "2");
}

TEST(TCPStore, FourClientsSetAndReadThousandKeysConcurrently) {
  TCPStore server("127.0.0.1", 0, server_opts());
  constexpr int kClients = 4, kKeys = 1000;
  std::vector<std::thread> ts;
  std::atomic<int> wrong{0};
  for (int c = 0; c < kClients; ++c) {
    ts.emplace_back([&, c] {
      TCPStore cl("127.0.0.1", server.port(), client_opts());
      for (int i = 0; i < kKeys; ++i) cl.set(key_of(c, i), std::to_string(i * 7 + c));
      for (int i = 0; i < kKeys; ++i)
        if (cl.get_string(key_of(c, i)) != std::to_string(i * 7 + c)) ++wrong;
      cl.add("done", 1);
    });
  }
  // A garbage client in the middle does not disturb the others.
  int g = raw_connect(server.port());
  (void)::send(g, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL);
  for (auto& t : ts) t.join();
  ::close(g);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(server.add("done", 0), kClients);
  EXPECT_EQ(server.num_keys(), kClients * kKeys + 1);
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(server.get_string(key_of(c, 999)), std::to_string(999 * 7 + c));
}

TEST(TCPStore, ConnectTimeoutNamesTheAddress) {
  TCPStoreOptions o = client_opts();
  o.connect_timeout = 300ms;
  // Find a free port by binding and closing.
  int port;
  {
    TCPStore tmp("127.0.0.1", 0, server_opts());
    port = tmp.port();
  }
  try {
    TCPStore c("127.0.0.1", port, o);
    FAIL();
  } catch (const CommError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("connect timeout"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(port)), std::string::npos) << m;
  }
}

TEST(TCPStore, ServerListensOnlyOnGivenAddress) {
  TCPStore server("127.0.0.1", 0, server_opts());
  // 127.0.0.2 is loopback too, but the socket is bound to 127.0.0.1 only.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(server.port()));
  a.sin_addr.s_addr = inet_addr("127.0.0.2");
  EXPECT_NE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ::close(fd);
}
