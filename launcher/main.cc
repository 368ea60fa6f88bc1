// trainlaunch: the command a user runs to start a job (see launcher/options.h
// for the options and launcher/launcher.h for what it does).
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "launcher/launcher.h"
#include "launcher/options.h"
#include "tensor/error.h"

extern char** environ;

int main(int argc, char** argv) {
  using namespace loom::launcher;
  std::vector<std::string> args(argv + 1, argv + argc);
  LaunchOptions o;
  try {
    o = parse_options(args);
    if (o.help) {
      std::fputs(usage().c_str(), stdout);
      return 0;
    }
    if (o.free_port) {  // rank 0's store takes P, the launchers' store P+1
      std::printf("%d\n", free_port(2));
      return 0;
    }
    std::map<std::string, std::string> env;
    for (char** e = environ; *e; ++e) {
      std::string kv = *e;
      size_t eq = kv.find('=');
      if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    apply_slurm_env(o, env);
    validate(o);
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "%s\n(trainlaunch --help lists the options)\n", e.what());
    return 2;
  }
  try {
    return run_launcher(o);
  } catch (const loom::Error& e) {
    std::fprintf(stderr, "trainlaunch: %s\n", e.what());
    return 1;
  }
}
