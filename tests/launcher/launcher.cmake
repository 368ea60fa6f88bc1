# End-to-end tests of trainlaunch (included from tests/CMakeLists.txt): tiny
# shell programs as ranks for failure, restart, output and signals; two
# launchers on 127.0.0.1 for multi-node, and collectives_mp for a real all-reduce.
if(TARGET trainlaunch)
  set(_loom_e2e_cases exit3 sigkill restart_ok restart_short output sigint twonode_env twonode_fail_restart
                      launcher_killed)
  if(TARGET collectives_mp)
    list(APPEND _loom_e2e_cases twonode_allreduce)
  endif()
  foreach(c ${_loom_e2e_cases})
    add_test(NAME launcher_e2e_${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/e2e.sh ${c} $<TARGET_FILE:trainlaunch>
                     $<$<TARGET_EXISTS:collectives_mp>:$<TARGET_FILE:collectives_mp>>)
    set_tests_properties(launcher_e2e_${c} PROPERTIES LABELS launcher TIMEOUT 120)
  endforeach()
endif()
