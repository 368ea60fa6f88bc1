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

/// A port P such that P..P+count-1 can all be bound on every local address right now, drawn at random from 20000
/// up to the start of the kernel's ephemeral range (32767 at most). Rank 0 binds it only later, so the port is free
/// for a moment: a port from the ephemeral range could meanwhile become the source port of any outgoing connection,
/// one below it is taken only by a program that binds it on purpose. With count 1 the kernel's own pick (port 0) is
/// the fallback when no try binds; otherwise throws CommError.
int free_port(int count);

/// "SIGKILL" for 9, "SIG?" + number when unknown.
std::string signal_name(int sig);

/// A fresh random hex secret (32 bytes from /dev/urandom).
std::string random_secret();

}  // namespace loom::launcher
