# Counts the cases of one GoogleTest run from its own per-case result lines, for run_gpu_tests.sh and
# scripts/gpu_window.sh. POSIX awk (mawk, gawk, busybox).
#
# Prints three lines:
#   PASSED SKIPPED FAILED NO_RESULT      counts of cases
#   NAME ...                             the failed cases, in order (empty line when none)
#   NAME ...                             the cases that started but left no result line (the process
#                                        crashed or was cut there; empty line when none)
# A case counts once, by its name on `[ RUN      ]`: gtest's FAILED line of a parameterised or typed case
# ends the name with a comma (`Ops/Conformance.MatchesCpu/3, where GetParam() = ... (2 ms)`), which is
# dropped here. Only lines with the `(N ms)` timing are results; the list at the end of a run repeats the
# failed names without it and is not counted again. A result marker after other text on the same line
# (a case that printed without a newline) still counts.
function name_after(marker,    s, i) {
  i = index($0, marker)
  s = substr($0, i + length(marker))
  sub(/^ +/, "", s)
  sub(/[ ,].*$/, "", s)
  return s
}
/\[ RUN      \] / {
  n = name_after("[ RUN      ]")
  if (!(n in started)) { started[n] = 1; order[++nstarted] = n }
  next
}
/\[       OK \] .*\([0-9]+ ms\)$/ { n = name_after("[       OK ]"); if (!(n in done)) { ok++; done[n] = 1 }; next }
/\[  SKIPPED \] .*\([0-9]+ ms\)$/ { n = name_after("[  SKIPPED ]"); if (!(n in done)) { sk++; done[n] = 1 }; next }
/\[  FAILED  \] .*\([0-9]+ ms\)$/ {
  n = name_after("[  FAILED  ]")
  if (!(n in done)) { fl++; done[n] = 1; failed = failed (failed == "" ? "" : " ") n }
  next
}
END {
  for (i = 1; i <= nstarted; i++) {
    n = order[i]
    if (!(n in done)) { nr++; noresult = noresult (noresult == "" ? "" : " ") n }
  }
  printf "%d %d %d %d\n%s\n%s\n", ok, sk, fl, nr, failed, noresult
}
