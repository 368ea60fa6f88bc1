// The body of trainlaunch: rendezvous of the node launchers through a TCPStore
// hosted by node 0, spawning and watching the local ranks, stopping them all on
// the first failure (on any node), restarts, signal forwarding and the report.
#pragma once

#include <string>

#include "launcher/options.h"

namespace loom::launcher {

/// Runs the job described by o on this node and returns the exit status for
/// trainlaunch: 0 when every rank on every node exited 0, 1 after a failure that
/// used up the restarts, 128+signal when stopped by SIGINT/SIGTERM. Throws
/// InvalidArgument / CommError when the job cannot start (bad secret setup,
/// store unreachable).
int run_launcher(const LaunchOptions& o);

/// "SIGKILL" for 9, "SIG?" + number when unknown.
std::string signal_name(int sig);

/// A fresh random hex secret (32 bytes from /dev/urandom).
std::string random_secret();

}  // namespace loom::launcher
