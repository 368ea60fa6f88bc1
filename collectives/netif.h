// Which local address a rank listens on so that the other nodes can reach it:
// the source address of this machine's route to MASTER_ADDR (found without
// sending a packet) and the interface that holds it, or an interface the user
// names. gethostname() is no guide: Debian's /etc/hosts maps it to 127.0.1.1.
#pragma once

#include <string>
#include <vector>

namespace loom::collectives {

/// A local address and the interface that holds it.
struct LocalAddress {
  std::string address;  // numeric: "10.0.0.2", "fd00::2"
  std::string iface;    // "eth0"; empty when no interface holds it
};

/// The address this machine would send from to reach host:port, and its
/// interface: a UDP socket connect()ed to host, then getsockname() (nothing is
/// sent). host is a name or an address; IPv4 is preferred when a name resolves
/// to both. A local address (this node's own) answers itself. Throws CommError
/// naming host when it does not resolve or no route leads there.
LocalAddress route_to(const std::string& host, int port);

/// The interface that holds the numeric address (getifaddrs), or "".
std::string interface_of(const std::string& address);

/// The addresses of interface iface, IPv4 first. Throws ConfigError naming
/// the interfaces present when there is no such interface or it has none.
std::vector<std::string> interface_addresses(const std::string& iface);

/// Where gloo listens, and why (for the log).
struct ListenChoice {
  std::string address;  // numeric address to bind; empty: let gloo bind iface
  std::string iface;    // the interface (given, or the one holding address)
  std::string reason;   // e.g. "the route to MASTER_ADDR 10.0.0.1"
};

/// Picks the listen address of a rank's transport. iface (LOOM_GLOO_IFNAME or
/// GLOO_SOCKET_IFNAME) wins and must exist; else hostname, an address or name
/// the caller gives; else the address of the route to master_addr (empty
/// means 127.0.0.1). Throws ConfigError for an unknown interface and
/// CommError when master_addr cannot be reached.
ListenChoice choose_listen_address(const std::string& iface, const std::string& hostname,
                                   const std::string& master_addr, int master_port);

}  // namespace loom::collectives
