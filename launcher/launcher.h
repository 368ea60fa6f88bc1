// The body of trainlaunch: rendezvous of the node launchers through a TCPStore
// hosted by node 0, spawning and watching the local ranks, stopping them all on
// the first failure (on any node), restarts, signal forwarding and the report.
#pragma once

#include <string>

#include "launcher/options.h"

namespace loom::launcher {

/// Runs the job described by o on this node and returns the exit status for
/// trainlaunch: 0 when every rank on every node exited 0, also after a stop on
/// SIGINT/SIGTERM (forwarded to the ranks) when every local rank then exited 0 by
/// itself within the grace period (a clean, checkpointed stop: Slurm counts the
/// job COMPLETED); 128+signal when stopped by a signal and a rank was killed or
/// failed; 1 after a failure that used up the restarts. Throws
/// InvalidArgument / CommError when the job cannot start (bad secret setup,
/// store unreachable).
int run_launcher(const LaunchOptions& o);

/// "SIGKILL" for 9, "SIG?" + number when unknown.
std::string signal_name(int sig);

/// A fresh random hex secret (32 bytes from /dev/urandom).
std::string random_secret();

}  // namespace loom::launcher
